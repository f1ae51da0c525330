"""Many models at once: one model structure fitted to many responses by ``vmap``.

The per-model fit is the same pure function a single fit uses (the LMM θ optimization,
or the GLMM pipeline of :mod:`glmmjax._engines.compiled.glmm`), vmapped over the response. Responses
are processed in chunks of a fixed size, so the program compiles once per structure;
each chunk is split over the local devices with ``jax.shard_map``. Per-model outcomes
(converged, iterations, a failure reason) travel with the estimates: a model that fails
is flagged, never dropped, and never spoils its chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, PartitionSpec

from .._engines.blas import single_threaded_blas
from .._engines.compiled.glmm import glmm_pipeline, make_setup, mode_decrement
from .._engines.compiled.jit import _Static, batch_program
from .._engines.compiled.lmm import fit_theta, lmm_model_from_arrays, solve_pls
from .._engines.compiled.optimize import Status
from .._families.base import Family, Gaussian, get_family
from .._linalg import solve_triangular
from .._model.checks import check_lmm_design
from .._model.cov_structures import term_structures
from .._model.covariance import canonical_thetas, initial_theta
from .._model.design import DataError, build_design
from .._model.formula import parse_formula
from .._model.relmat import rotated_relatedness
from .._model.structure import build_structure
from .._precision import check_precision, float_dtype, precision_scope
from .._progress import noted, quiet, wait_interruptibly
from .blocked import applies as blocked_path_applies
from .blocked import fit_blocked, make_blocked_setup
from .crossed import applies as crossed_path_applies
from .crossed import fit_crossed, make_crossed_setup
from .inference import between_within_df, check_batch_ddf
from .inference import describe as describe_ddf
from .inference import p_values as batch_p_values
from .memory import MemoryEstimate
from .memory import plan as plan_memory
from .scalar import applies as scalar_path_applies
from .scalar import fit_scalar, make_scalar_setup

_RESPONSE = "__glmmjax_response__"
# The blocked Newton paths (glmmjax._batching.blocked and .crossed) where they
# apply; benchmarks and tests set False to run the general pipeline they replace.
BLOCKED_PATH = True
# The lockstep numpy engine (glmmjax._batching.lockstep) for the shapes it covers on the CPU
# in float64; tests and benchmarks set False to run the compiled paths.
LOCKSTEP = True
# Scalar-term GLMMs (one (1 | g) term, no dispersion) on the CPU in float64: "auto"
# (calls of a batch program are fitted by the lockstep engine, nothing compiled, until
# the time they took would have paid for compiling the program: then it is compiled and
# run, as are later calls; see _fit_scalar_auto), "compiled" or "lockstep" (tests,
# benchmarks).
SCALAR_ROUTE = "auto"
# Above this many models a first call compiles at once: the lockstep engine's extra
# time per model over the compiled program's (~5 ms against ~5 ms warm at 1,000
# logistic models, n = 2,000, on a busy 2-core CPU) then exceeds the compilation
# (~10 s there): break-even near 2,000 models (benchmarks/README.md).
LOCKSTEP_FIRST_MAX = 2000
# The rent-or-buy rule of "auto" (benchmarks/README.md, "Second calls of scalar-term
# batches"): the program is compiled once LOCKSTEP_SAVING × (the seconds the lockstep
# engine has spent on it) reaches COMPILE_SECONDS, an estimate of its compilation
# (10-13 s measured for the logistic program on a busy 2-core CPU, ~6 s idle), where
# LOCKSTEP_SAVING is the share of the lockstep engine's time the compiled program saves
# warm (0.5-0.55 measured at 400 and 1,000 models). A user who fits a few batches never
# waits for a compilation; one who fits many pays at most about twice the best choice
# made in hindsight (the classic rent-or-buy bound).
COMPILE_SECONDS = 10.0
LOCKSTEP_SAVING = 0.5
# program key -> seconds the lockstep engine spent on it (or None once compiled here)
_PROGRAMS: dict = {}
# Models no batch-specialized solver covers (structured covariance terms; GLMMs beyond
# the lockstep engine and the compiled Newton paths) on the CPU in float64: one host fit
# per model (glmmjax._batching.host_loop) on a first call of up to HOST_LOOP_FIRST_MAX
# models, instead of compiling the general pipeline (tens of seconds to minutes); tests
# and benchmarks set False to run the compiled pipeline.
HOST_LOOP = True
# LMMs: the host loop for batches of at most this many models, unless this process has
# compiled (and run) the batch's program already: then it runs warm. 240-row ar1 LMMs on
# a busy 2-core CPU: compilation ~30 s, then 11-16 ms per model against the host
# loop's 40-130 ms: break-even between 300 and 500 models. GLMMs take the host loop
# whatever the size: its ~0.6 s per Poisson cs GLMM is below the compiled program's
# warm ~0.8 s (benchmarks/bench_fit_many_structured.py; benchmarks/README.md).
HOST_LOOP_FIRST_MAX = 400
_COMPILED: set = set()  # structured-LMM programs (keys) compiled and run in this process
_PROGRAMS_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class BatchResult:
    """Results of :func:`fit_many`, one entry per response (model).

    Attributes:
        coefficients: tidy DataFrame, one row per model × coefficient: ``model``,
            ``term``, ``estimate``, ``std_error``, ``statistic`` (estimate / SE),
            ``df`` (inf for z tests) and ``p_value`` (two-sided).
        models: one row per model: ``loglik``, ``criterion`` (−2 log L, REML criterion
            for REML fits), ``sigma`` or ``dispersion``, the random-effect SDs (and
            correlations), ``converged``, ``iterations``, ``status`` (a reason when a
            model failed).
        theta: (K, n_theta) array; ``fixef``/``fixef_se``: (K, p) DataFrames.
        inference: how the p-values were computed (``fit_many``'s ``ddf``).
        chunk_size, n_devices, n_processes: how the batch ran (``n_devices`` counts
            every process's devices).
        memory: the :class:`~glmmjax._batching.memory.MemoryEstimate` that chose the
            chunk size (estimated bytes per model and per device, memory available);
            printed in the repr.
    """

    coefficients: pd.DataFrame
    models: pd.DataFrame
    fixef: pd.DataFrame
    fixef_se: pd.DataFrame
    theta: np.ndarray
    method: str
    inference: str
    chunk_size: int
    n_devices: int
    n_processes: int = 1
    memory: MemoryEstimate | None = None

    def __len__(self) -> int:
        return len(self.models)

    def __repr__(self) -> str:
        # Short on purpose: the frames hold one row per model (or per coefficient).
        from .._display import plural, short_repr

        n = len(self.models)
        converged = int(np.sum(self.converged))
        failed = n - converged
        return short_repr("BatchResult", [
            ("models", f"{n:,} fitted by {self.method}"),
            ("terms", ", ".join(map(str, self.fixef.columns))),
            ("tests", self.inference),
            ("converged", f"{converged:,} of {n:,}"
             + (f" ({plural(failed, 'model')} flagged: see .models['status'])" if failed else "")),
            ("chunks", f"{plural(self.chunk_size, 'model')} per chunk on "
                       f"{plural(self.n_devices, 'device')}"
                       + (f" in {self.n_processes} processes" if self.n_processes > 1 else "")),
        ] + ([("memory", str(self.memory))] if self.memory is not None else []))

    def _repr_html_(self) -> str:
        from .._display import html_summary

        head = self.models.head(10).to_html()
        return html_summary("BatchResult", repr(self)) + head

    @property
    def converged(self) -> np.ndarray:
        return self.models["converged"].to_numpy()

    def p_values(self, term: str) -> pd.Series:
        """The p-value of ``term`` in every model (indexed by model; see ``inference``)."""
        rows = self.coefficients[self.coefficients["term"] == term]
        if rows.empty:
            raise KeyError(f"no coefficient {term!r}; terms are {list(self.fixef.columns)}")
        return rows.set_index("model")["p_value"]


def p_adjust_bh(p_values) -> np.ndarray | pd.Series:
    """Benjamini–Hochberg adjusted p-values (R's ``p.adjust(p, "BH")``); NaNs stay NaN.

    A pandas Series comes back as a Series with the same index and name (the models of
    :meth:`BatchResult.p_values`), anything else as a numpy array.

    Example:
        >>> import glmmjax, pandas as pd
        >>> glmmjax.p_adjust_bh(pd.Series([0.01, 0.04, 0.03], index=["a", "b", "c"])).round(3).to_dict()
        {'a': 0.03, 'b': 0.04, 'c': 0.04}
    """
    if isinstance(p_values, pd.Series):
        return pd.Series(p_adjust_bh(p_values.to_numpy(dtype=float)), index=p_values.index,
                         name=p_values.name)
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    values = p[ok]
    m = values.size
    if m == 0:
        return out
    order = np.argsort(values)[::-1]
    ranks = np.arange(m, 0, -1)
    adjusted = np.minimum.accumulate(values[order] * m / ranks)
    result = np.empty(m)
    result[order] = np.minimum(adjusted, 1.0)
    out[ok] = result
    return out


# -- per-model fits (pure) -----------------------------------------------------------------
class _LMMSetup(eqx.Module):
    X: jnp.ndarray
    weights: jnp.ndarray
    structure: object
    reml: bool = eqx.field(static=True)
    gtol: float = eqx.field(static=True)
    loose_gtol: float = eqx.field(static=True)
    satterthwaite: bool = eqx.field(static=True, default=False)


def _lmm_one(y, setup: _LMMSetup) -> dict:
    return _lmm_fit(y, setup.weights, setup)


def _lmm_one_weighted(y, weights, setup: _LMMSetup) -> dict:
    """An LMM with its own prior weights: models with missing responses (weight 0 on
    their missing rows; the weight-0 rows count neither in n nor in Σ log w)."""
    return _lmm_fit(y, weights, setup)


def _lmm_fit(y, weights, setup: _LMMSetup) -> dict:
    s = setup.structure
    model = lmm_model_from_arrays(s, weights, setup.X, y, setup.reml)
    theta0 = jnp.asarray(initial_theta(s.structures), y.dtype)
    solution, theta = fit_theta(model, theta0, setup.gtol, setup.loose_gtol)
    pls = solve_pls(theta, model)
    n, p = model.nobs, model.n_fixef
    sigma2 = pls.r2 / ((n - p) if setup.reml else n)
    L_inv = solve_triangular(pls.fixef_factor, jnp.eye(p, dtype=y.dtype), lower=True)
    out = dict(
        theta=theta, beta=pls.beta, beta_cov=sigma2 * L_inv.T @ L_inv, value=pls.criterion,
        sigma=jnp.sqrt(sigma2), status=solution.status, iterations=solution.iterations,
        grad_max=jnp.max(jnp.abs(solution.grad)),
    )
    if setup.satterthwaite:
        out["df"] = _satterthwaite_df(model, jnp.append(theta, jnp.sqrt(sigma2)))
    return out


def _satterthwaite_df(model, varpar):
    """ν_j = 2·V_jj²/(g_j'·A·g_j), A = 2·H⁻¹, per coefficient j (glmmjax._inference.ddf)."""
    from .._inference.ddf import beta_vcov, varpar_deviance

    hessian = jax.jacfwd(jax.jacfwd(varpar_deviance))(varpar, model)
    jacobian = jax.jacfwd(beta_vcov)(varpar, model)
    vcov = beta_vcov(varpar, model)
    g = jnp.diagonal(jacobian, axis1=0, axis2=1)  # (k, p): ∂V_jj/∂ψ
    h_inv_g = jnp.linalg.pinv(0.5 * (hessian + hessian.T)) @ g
    return jnp.diagonal(vcov) ** 2 / jnp.sum(g * h_inv_g, axis=0)


def _inner_tolerance(dtype) -> float:
    """The largest inner Newton decrement taken for a found mode: 1e-6 in the deviance's
    units for float64 (the Laplace value is then off by about that much, far below the
    criterion's tolerance), a multiple of the machine epsilon where that is coarser."""
    return max(1e-6, 1e5 * float(np.finfo(np.dtype(dtype)).eps))


def _glmm_one(y, weights, setup) -> dict:
    # Forward-over-forward Hessian. Forward-over-reverse (chosen before for run time)
    # gave a NaN Hessian for every model of a vmapped batch of 4 or more (8 NB2 or
    # Poisson random-slope GLMMs, 200 rows: all flagged, no standard errors), while 2
    # models or a single fit were fine; tests/test_batch_status.py checks the batch.
    out = glmm_pipeline(y, weights, setup, forward_hessian=True)
    decrement = mode_decrement(out["params"], out["v"], y, weights, setup)
    return dict(
        params=out["params"], beta=out["beta"], beta_cov=out["beta_cov"], value=out["value"],
        status=out["status"], iterations=out["iterations"],
        grad_max=jnp.max(jnp.abs(out["grad"])),
        hessian_pd=jnp.all(jnp.linalg.eigvalsh(0.5 * (out["hessian"] + out["hessian"].T)) > 0),
        inner_converged=jnp.isfinite(decrement) & (decrement <= _inner_tolerance(y.dtype)),
    )


def _glmm_scalar_one(y, weights, setup) -> dict:
    """One scalar random-effect term: the batch-specialized Newton fit."""
    out = fit_scalar(y, weights, setup)
    return {k: out[k] for k in ("params", "beta", "beta_cov", "value", "status", "iterations",
                                "grad_max", "hessian_pd", "inner_converged")}


def _glmm_blocked_one(y, weights, setup) -> dict:
    """One vector random-effects term (e.g. (x | g)), any dispersion: the blocked
    Newton fit of glmmjax._batching.blocked."""
    return fit_blocked(y, weights, setup)


def _glmm_crossed_one(y, weights, setup) -> dict:
    """Several scalar terms, crossed or nested (e.g. (1 | a) + (1 | b)): the Newton fit
    of glmmjax._batching.crossed."""
    return fit_crossed(y, weights, setup)


@functools.cache
def _stacked(fn):
    """``fn`` vmapped over the leading axis of every argument (stacked datasets), one
    compiled program per structure across calls of ``fit_datasets``."""
    return batch_program(jax.vmap(fn))


@functools.cache
def _sharded(fn, n_devices: int, n_batched: int = 1):
    """vmap ``fn`` over the leading axis of its first ``n_batched`` arguments (the
    responses; with 2, also per-model prior weights: models with missing responses);
    split over devices.

    Cached, so that every call of ``fit_many`` with the same structure reuses one
    compiled program."""
    n_rest = fn.__code__.co_argcount - n_batched
    batched = noted(jax.vmap(fn, in_axes=(0,) * n_batched + (None,) * n_rest),
                    "the batched fit")
    if n_devices <= 1:
        return batch_program(batched)
    mesh = Mesh(np.array(jax.local_devices()[:n_devices]), ("batch",))

    def run(*args):
        per_model, rest = args[:n_batched], args[n_batched:]
        local = jax.shard_map(
            lambda *r: batched(*r, *rest), mesh=mesh,
            in_specs=(PartitionSpec("batch"),) * n_batched,
            out_specs=PartitionSpec("batch"), check_vma=False,
        )
        return local(*per_model)

    return batch_program(run)


# -- input handling ------------------------------------------------------------------------
def _response_matrix(responses, data: pd.DataFrame) -> tuple[np.ndarray, list]:
    from .._model.design import reject_tracer

    reject_tracer(responses, "responses")
    if isinstance(responses, pd.DataFrame):
        return responses.to_numpy(dtype=float), list(responses.columns)
    if isinstance(responses, (list, tuple)) and responses and all(isinstance(r, str) for r in responses):
        missing = [r for r in responses if r not in data.columns]
        if missing:
            raise DataError(f"response column(s) {missing} are not in data")
        return data[list(responses)].to_numpy(dtype=float), list(responses)
    try:
        matrix = np.asarray(responses, dtype=float)
    except (TypeError, ValueError) as err:
        raise DataError(
            "responses must be a numeric (n_rows, n_models) array, a DataFrame, or a list of "
            f"column names of data; got {type(responses).__name__}: {err}") from None
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or matrix.shape[0] != len(data):
        raise DataError(
            f"responses must have one row per row of data ({len(data)}) and one column per "
            f"model, got shape {matrix.shape}"
        )
    return matrix, list(range(matrix.shape[1]))


def _design_for(formula: str, data: pd.DataFrame, weights, offset, relmat=None):
    if not isinstance(formula, str):
        raise DataError(f"formula must be a string like '~ x + (1|g)', got {formula!r}")
    rhs = formula.split("~", 1)[1] if "~" in formula else formula
    parse_formula(f"{_RESPONSE} ~ {rhs}")  # syntax errors before anything else
    frame = data.assign(**{_RESPONSE: 0.0})
    return build_design(f"{_RESPONSE} ~ {rhs}", frame, weights=weights, offset=offset,
                        require_random=True, drop_aliased=True, relmat=relmat)


def _check_models(Y: np.ndarray, family: Family | None, rows, weights,
                  n_fixef: int = 0) -> list[str]:
    """A failure reason per model ('' when the response is usable).

    NaN is a missing response: the model is fitted on its other rows (see
    :func:`_missing_as_weight_zero`), and only checked on those. Infinite values are
    flagged."""
    rows = np.asarray(rows)
    if family is not None and Y.size and np.all(np.isfinite(Y)):
        # Every value at once (the families' support checks are elementwise): where
        # all pass, only constant responses remain to flag.
        K = Y.shape[1]
        try:
            family.prepare_response(Y.ravel(order="F"), np.tile(np.asarray(weights), K),
                                    None, np.tile(rows, K))
        except DataError:
            pass
        else:
            return ["constant response" if c else "" for c in np.ptp(Y, axis=0) == 0]
    reasons = []
    for k in range(Y.shape[1]):
        y = Y[:, k]
        present = ~np.isnan(y)
        bad = ~np.isfinite(y) & present
        if bad.any():
            reasons.append(f"non-finite response in rows {rows[np.flatnonzero(bad)[:5]].tolist()}")
            continue
        if not present.all():
            if present.sum() <= n_fixef:
                reasons.append(f"only {int(present.sum())} non-missing responses for "
                               f"{n_fixef} fixed effects")
                continue
            y = y[present]
        if family is not None:
            try:
                family.prepare_response(y, np.asarray(weights)[present], None, rows[present])
            except DataError as err:
                reasons.append(str(err))
                continue
        if np.ptp(y) == 0:
            reasons.append("constant response")
            continue
        reasons.append("")
    return reasons


def _missing_as_weight_zero(Y: np.ndarray, weights) -> tuple[np.ndarray, np.ndarray | None]:
    """Missing (NaN) responses as rows of prior weight 0: (Y with each model's NaNs
    replaced by one of its observed values, so that every row stays in the family's
    support; per-model weights (n, K)), or (Y, None) when nothing is missing. A row of
    weight 0 adds nothing to the likelihood, so each model is the fit of its observed
    rows alone (a level left without rows gets a random effect of exactly 0, which adds
    nothing either)."""
    missing = np.isnan(Y)
    if not missing.any():
        return Y, None
    observed = np.where(missing, np.nan, Y)
    fill = np.nanmin(np.where(np.all(missing, axis=0, keepdims=True), 0.0, observed), axis=0)
    Y = np.where(missing, np.where(np.isfinite(fill), fill, 0.0)[None, :], Y)
    W = np.asarray(weights, dtype=float)[:, None] * ~missing
    return Y, W


def _batch_family(family):
    """The family of a batch: None for a Gaussian LMM (σ profiled out), else the family
    object; an estimated shape parameter is refused (batches do not estimate it)."""
    if family is None:
        return None
    family = get_family(family)
    if getattr(family, "n_shape", 0):
        raise ValueError(
            f"batched fits do not estimate the shape parameter of {family} yet (glmer "
            "does); fix it, e.g. family=glmmjax.families.StudentT(df=5)")
    if isinstance(family, Gaussian) and family.link.name == "identity":
        return None
    return family


def fit_many(
    formula: str,
    data: pd.DataFrame,
    responses,
    family: str | Family | None = None,
    *,
    reml: bool = True,
    n_agq: int = 1,
    weights=None,
    offset=None,
    chunk_size: int | None = None,
    precision: str = "float64",
    progress: bool | None = None,
    n_devices: int | None = None,
    ddf: str | None = "auto",
    ziformula: str | None = None,
    dispformula: str | None = None,
    relmat: dict | None = None,
    distributed: bool = False,
) -> BatchResult:
    """Fit one mixed-model structure to many responses that share the design.

    Args:
        formula: the model's right-hand side in lme4 syntax, with or without a response
            (``"~ condition + (1 | subject)"``); a left-hand side is ignored.
        data: the covariates, one row per observation.
        responses: (n_rows, K) array, DataFrame, or list of column names of ``data``:
            one response per model (binomial: 0/1 or proportions with ``weights`` as
            trials; counts for Poisson and negative binomial).
        family: None for linear mixed models (REML unless ``reml=False``), else a GLMM
            family fitted by Laplace (or AGQ with ``n_agq > 1``).
        chunk_size: models per compiled call (a multiple of the device count). None
            (default): chosen from an estimate of each model's working memory (from n,
            the terms' sizes and levels, the precision) and the memory available (the
            GPU's, or the host's on the CPU): a chunk takes at most a fifth of it per
            device and 4,096 models. The estimate is recorded in ``BatchResult.memory``
            and shown in its repr; see ``glmmjax._batching.memory`` and docs/batches.md.
            GLMMs beyond one scalar term on the CPU in float64 (random slopes,
            dispersion families, crossed or nested terms, ``ziformula``/``dispformula``)
            are fitted by the lockstep numpy engine (``glmmjax._batching.lockstep``,
            nothing compiled): there ``chunk_size`` is the models fitted together
            (default 250) and ``BatchResult.memory`` is None. So are one-scalar-term
            GLMMs there (at most 2,000 models) until the lockstep calls of their
            compiled program have taken long enough to pay for compiling it; later
            calls compile and run it (docs/batches.md). A family whose shape is
            estimated (``tweedie``'s power, ``t_family``'s df, ``ordbeta``'s
            cutpoints) is fitted model by model by glmer's host engine
            (``glmmjax._batching.shapes``; float64, Laplace). On the CPU in
            float64, models with a structured covariance term (``cs``, ``ar1``, ``toep``,
            ``diag``, ...) and Laplace GLMMs no batch solver above takes are also fitted
            model by model, each by its single ``lmer``/``glmer`` host fit
            (``glmmjax._batching.host_loop``, nothing compiled; ``chunk_size`` 1,
            ``BatchResult.memory`` None): GLMMs always, LMMs up to 400 models unless
            the process has compiled their program already (beyond, the compiled
            program is faster: see docs/batches.md).
        precision: ``"float64"`` (default) or ``"float32"`` (GPU throughput; its
            accuracy against float64 is measured in ``benchmarks/README.md``).
        progress: show a tqdm progress bar (default: when there is more than one chunk).
        n_devices: local devices to split each chunk over (default: all).
        ddf: the tests of the fixed effects. ``"auto"`` (default): t tests with
            Satterthwaite's df per model for LMMs (as lmerTest), with the
            between-within df for GLMMs (as nlme); ``"satterthwaite"`` (LMMs),
            ``"kenward-roger"`` (REML LMMs: Kenward–Roger's df and adjusted standard
            errors per model, as pbkrtest, computed in numpy model by model after the
            batch), ``"between-within"``, or None for Wald z tests (as glmer's summary,
            liberal with few groups). See ``glmmjax._batching.inference``; the choice is recorded
            in ``BatchResult.inference``.
        ziformula, dispformula: glmmTMB's zero-inflation and dispersion models, as in
            :func:`glmmjax.glmer` (Laplace, float64; all models at once by the lockstep
            engine where the zero-inflation part has no random effects, else one after
            another by the host engine); coefficients of those parts are named
            ``zi~name`` and ``d~name``.
        relmat: known relatedness ``{"animal": K}`` for a term ``(1 | animal)``, as
            :func:`glmmjax.lmer`; K's factor is computed once for all responses.
        distributed: split the models over the processes of ``jax.distributed`` (call
            ``jax.distributed.initialize()`` first, on every process, and call
            ``fit_many`` on every process with the same arguments): each process fits
            the models of :func:`glmmjax.process_share` on its local devices, then the
            results are gathered (:func:`glmmjax.gather_batches`), so every process
            returns the whole batch, equal to a single-process run.

    Returns:
        A :class:`BatchResult`. Models whose response is unusable (non-finite values,
        values outside the family's support, constant) are flagged with the reason and
        have NaN estimates; the others are fitted exactly as alone.
    """
    check_precision(precision)
    if ziformula is not None or dispformula is not None:
        if relmat is not None:
            raise ValueError("relmat= cannot be combined with ziformula= or dispformula= "
                             "yet; fit the known-relatedness model without them")
        from .parts import fit_many_parts

        if precision != "float64" or n_agq != 1:
            raise ValueError("fit_many with ziformula/dispformula runs in float64 by the "
                             "Laplace approximation (precision='float64', n_agq=1)")
        return fit_many_parts(formula, data, responses,
                              None if family is None else get_family(family), ziformula,
                              dispformula, weights=weights, offset=offset,
                              chunk_size=chunk_size, progress=progress)
    shaped = None if family is None else get_family(family)
    if getattr(shaped, "n_shape", 0):
        # Shapes (Tweedie power, t df, ordbeta cutpoints): glmer's host fit per model.
        from .shapes import fit_many_shapes

        if relmat is not None or distributed or precision != "float64":
            raise ValueError(
                f"fit_many estimates the shape parameter of {shaped} by one "
                "host fit per model: in float64, without relmat= or distributed=; fix the "
                "shape (e.g. family=glmmjax.families.StudentT(df=5)) for those")
        return fit_many_shapes(formula, data, responses, shaped,
                               weights=weights, offset=offset, n_agq=n_agq,
                               progress=progress, ddf=check_batch_ddf(ddf, lmm=False))
    family = _batch_family(family)
    ddf = check_batch_ddf(ddf, lmm=family is None)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(
            chunk_size, (int, np.integer)) or chunk_size < 1):
        from .._display import show

        raise ValueError(f"chunk_size must be a positive integer or None, got {show(chunk_size)}")
    if not isinstance(distributed, (bool, np.bool_)):
        raise ValueError(f"distributed must be True or False, got {distributed!r}")
    design = _design_for(formula, data, weights, offset, relmat)
    if family is None:
        check_lmm_design(design)
    if ddf == "kenward-roger":
        from .._inference.ddf import check_kenward_roger_design

        if not reml:
            raise ValueError("ddf='kenward-roger' needs REML fits (as pbkrtest): give "
                             "reml=True, or use ddf='satterthwaite'")
        check_kenward_roger_design(design)
    Y_all, names = _response_matrix(responses, data)
    if distributed:
        from .distributed import process_share

        # Each process its share; the models keep their names (positions) of the whole.
        share = process_share(len(names))
        Y_all, names = Y_all[:, share], names[share]
    positions = data.index.get_indexer(design.rows)
    Y = Y_all[positions]
    reasons = _check_models(Y, family, design.rows, design.weights, design.X.shape[1])
    if family is None:
        reasons = _lmm_missing_reasons(design, Y, reasons)
    usable = [k for k, r in enumerate(reasons) if not r]
    dtype = float_dtype(precision)
    devices = len(jax.local_devices()) if n_devices is None else int(n_devices)
    devices = max(1, min(devices, len(jax.local_devices())))
    n, p = design.X.shape
    if _lockstep_applies(design, family, n_agq, precision):
        result = _fit_lockstep(design, family, Y, names, reasons, usable, ddf, progress,
                               chunk_size, n_agq)
        if distributed:
            from .distributed import gather_batches

            return gather_batches(result)
        return result
    with precision_scope(precision):
        if family is None:
            # A known K as the only random term: rotate once, fit scalar blocks.
            # (Not with missing responses: the rotation is for the full set of rows.)
            rotation = (None if np.isnan(Y[:, usable]).any() else
                        rotated_relatedness(design))
            terms, X = design.terms, design.X
            if rotation is not None:
                terms, X = rotation[0], rotation[1].T @ design.X
            structure = build_structure(terms, p + 1)
            setup = _LMMSetup(
                X=np.asarray(X, dtype), weights=np.asarray(design.weights, dtype),
                structure=structure, reml=reml,
                gtol=1e-8 if precision == "float64" else 1e-2,
                loose_gtol=1e-3 if precision == "float64" else 1.0,
                satterthwaite=ddf == "satterthwaite",
            )
            Y_fit = Y - design.offset[:, None]
            if rotation is not None:
                Y_fit = rotation[1].T @ np.where(np.isfinite(Y_fit), Y_fit, 0.0)
            # Missing responses (NaN) as rows of weight 0, per model (models without
            # any keep the one-weight program).
            Y_fit, W_fit = _missing_as_weight_zero(Y_fit, design.weights)
            if W_fit is None:
                fn = _sharded(_lmm_one, devices)
                extra = (setup,)
            else:
                fn = _sharded(_lmm_one_weighted, devices, 2)
                extra = (W_fit, setup)
            shape = ("lmm", n, structure.sizes, structure.n_levels, structure.rest_size)
            method = "REML" if reml else "ML"
        elif scalar_path_applies(design, family, n_agq):
            # One scalar term (e.g. (1 | g)): Newton with exact Hessians, a few uniform
            # iterations per model (see _batching.scalar); same estimates as glmer.
            setup = make_scalar_setup(design, family, dtype)
            fn = _glmm_scalar_one
            shape = ("scalar", n, (1,), (design.terms[0].n_levels,), p + 1)
            method = "Laplace"
        elif BLOCKED_PATH and blocked_path_applies(design, family, n_agq):
            # One vector term (e.g. (x | g)) or a family with a dispersion: levelwise
            # S×S blocks, Newton with exact Hessians (see _batching.blocked).
            setup = make_blocked_setup(design, family, dtype)
            fn = _glmm_blocked_one
            shape = ("general", n, (setup.size,), (design.terms[0].n_levels,), p)
            method = "Laplace"
        elif BLOCKED_PATH and crossed_path_applies(design, family, n_agq):
            # Several scalar terms (crossed or nested): the first term's diagonal block
            # and a small dense Schur complement (see _batching.crossed).
            setup = make_crossed_setup(design, family, dtype)
            fn = _glmm_crossed_one
            shape = ("general", n, (1,), (design.terms[0].n_levels,),
                     setup.Z2.shape[1] + p)
            method = "Laplace"
        else:
            setup = make_setup(design, family, n_agq, dtype)
            fn = _glmm_one
            shape = ("general", n, setup.inner.sizes, setup.inner.n_levels,
                     setup.inner.rest_size)
            method = {0: "nAGQ=0", 1: "Laplace"}.get(n_agq, f"AGQ({n_agq})")
        if family is not None:
            # Missing responses (NaN) as rows of weight 0, per model; the weights are
            # then batched with the responses (another compiled program).
            Y_fit, W_fit = _missing_as_weight_zero(Y, design.weights)
            if W_fit is None:
                fn = _sharded(fn, devices)
                extra = (jnp.asarray(design.weights, dtype), setup)
            else:
                fn = _sharded(fn, devices, 2)
                extra = (W_fit, setup)
        n_theta = sum(c.n_params for c in term_structures(design.terms))
        memory = plan_memory(len(usable), *shape, n_theta, np.dtype(dtype).itemsize, devices,
                             chunk_size, jax.local_devices()[0])
        host_loop = bool(usable) and _host_loop_applies(design, family, n_agq, precision, relmat)
        program = (_program_key(fn, _example_args(Y_fit, extra, memory.chunk_size, dtype))
                   if host_loop and family is None else None)
        if host_loop and _host_loop_first(family, len(usable), program):
            # No batch-specialized solver for this structure and its program not compiled
            # yet: one host fit per model costs less than compiling the general pipeline.
            from .host_loop import fit_host_loop

            result = fit_host_loop(design, family, Y, names, reasons, reml=reml,
                                   n_agq=n_agq, ddf=ddf, progress=progress)
            if distributed:
                from .distributed import gather_batches

                return gather_batches(result)
            return result
        if _scalar_auto_applies(design, family, n_agq, precision) and usable:
            outputs, used_program = _fit_scalar_auto(
                design, family, Y, usable, fn, Y_fit, extra, memory.chunk_size, dtype,
                progress, chunk_size)
            if not used_program:
                from .lockstep import CHUNK

                result = _assemble(design, family, names, reasons, usable, outputs, method,
                                   max(1, min(CHUNK if chunk_size is None else chunk_size,
                                              len(usable))), 1, setup, ddf)
                if distributed:
                    from .distributed import gather_batches

                    return gather_batches(result)
                return result
        else:
            outputs = _run_chunks(fn, Y_fit, usable, memory.chunk_size, extra, dtype,
                                  progress)
            if program is not None:
                with _PROGRAMS_LOCK:
                    _COMPILED.add(program)
    if ddf == "kenward-roger" and outputs is not None:
        from .inference import kenward_roger

        outputs = dict(outputs)
        outputs["df"], outputs["se_adjusted"] = kenward_roger(
            design, Y[:, usable], np.asarray(outputs["theta"], float),
            np.asarray(outputs["sigma"], float), np.asarray(outputs["beta"], float))
    result = _assemble(design, family, names, reasons, usable, outputs, method,
                       memory.chunk_size, devices, setup if family is not None else None, ddf)
    result = dataclasses.replace(result, memory=memory)
    if distributed:
        from .distributed import gather_batches

        return gather_batches(result)
    return result


def _scalar_auto_applies(design, family, n_agq, precision) -> bool:
    from .lockstep import applies

    return (SCALAR_ROUTE == "auto" and LOCKSTEP and family is not None
            and precision == "float64" and jax.default_backend() == "cpu"
            and scalar_path_applies(design, family, n_agq) and applies(design, family, n_agq))


def _example_args(Y_fit, extra, chunk_size, dtype) -> tuple:
    """Arguments of the shapes and types of one chunk's call of the batch program."""
    block = np.zeros((chunk_size, Y_fit.shape[0]), dtype)
    if extra and isinstance(extra[0], np.ndarray) and extra[0].shape == Y_fit.shape:
        return (block, np.zeros_like(block), *extra[1:])
    return (block, *extra)


def _program_key(fn, args) -> tuple:
    """What identifies one compiled batch program: the function, the static part of its
    arguments and the shapes and types of the arrays."""
    dynamic, static = eqx.partition(args, eqx.is_array)
    shapes = tuple((tuple(np.shape(a)), np.dtype(a.dtype).name)
                   for a in jax.tree_util.tree_leaves(dynamic))
    return (fn, _Static(static), shapes)


def _fit_scalar_auto(design, family, Y, usable, fn, Y_fit, extra, program_chunk, dtype,
                     progress, chunk_size):
    """Scalar-term GLMMs without compiling for a few batches (SCALAR_ROUTE "auto").

    Calls of one batch program (this structure, chunk size and shapes), of at most
    LOCKSTEP_FIRST_MAX models, are fitted by the lockstep engine (nothing compiled, a
    few ms per model) until LOCKSTEP_SAVING × the seconds they took reaches
    COMPILE_SECONDS; the call after that compiles the program and runs it, as do all
    later calls of it (the scalar path's warm speed). Both minimize glmer's Laplace
    objective; each model equals its single fit. Returns (outputs, whether the
    compiled program ran)."""
    from .lockstep import fit_glmm_many

    key = _program_key(fn, _example_args(Y_fit, extra, program_chunk, dtype))
    with _PROGRAMS_LOCK:
        spent = _PROGRAMS.get(key, 0.0)
        compile_now = (spent is None or len(usable) > LOCKSTEP_FIRST_MAX
                       or LOCKSTEP_SAVING * spent >= COMPILE_SECONDS)
        if compile_now:
            _PROGRAMS[key] = None
    if compile_now:
        return _run_chunks(fn, Y_fit, usable, program_chunk, extra, dtype, progress), True
    start = time.perf_counter()
    Y_ls, W_ls = _missing_as_weight_zero(Y, design.weights)
    if W_ls is None:
        W_ls = np.broadcast_to(np.asarray(design.weights, float)[:, None], Y.shape)
    with np.errstate(all="ignore"):
        out = fit_glmm_many(design, family, Y_ls[:, usable], W_ls[:, usable], progress,
                            chunk_size)
    with _PROGRAMS_LOCK:
        if _PROGRAMS.get(key, 0.0) is not None:
            _PROGRAMS[key] = _PROGRAMS.get(key, 0.0) + time.perf_counter() - start
    return out, False


def _lmm_missing_reasons(design, Y, reasons) -> list[str]:
    """LMM models with missing responses: what lmer would refuse on the model's observed
    rows (too many random effects for them, a rank-deficient X)."""
    reasons = list(reasons)
    missing = np.isnan(Y)
    if not missing.any():
        return reasons
    X = np.asarray(design.X, dtype=float)
    for k in np.flatnonzero(missing.any(axis=0)):
        if reasons[k]:
            continue
        present = ~missing[:, k]
        n_k = int(present.sum())
        for term in design.terms:
            levels = len(np.unique(np.asarray(term.refs)[present]))
            tied = getattr(term.covariance, "name", "us") not in ("us", "diag")
            if levels * term.size >= n_k and not tied:
                reasons[k] = (f"term {term.spec} has {levels * term.size} random effects "
                              f"for the model's {n_k} observed responses")
                break
        if not reasons[k] and np.linalg.matrix_rank(X[present]) < X.shape[1]:
            reasons[k] = ("the fixed-effects matrix is rank deficient on the model's "
                          f"{n_k} observed rows")
    return reasons


def _host_loop_first(family, n_models: int, program) -> bool:
    """Whether a batch that the host loop can fit goes to it rather than to its compiled
    program: GLMMs always; LMMs up to HOST_LOOP_FIRST_MAX models, unless this process has
    compiled (and run) their program already (see HOST_LOOP_FIRST_MAX)."""
    if family is not None:
        return True
    with _PROGRAMS_LOCK:
        compiled = program in _COMPILED
    return n_models <= HOST_LOOP_FIRST_MAX and not compiled


def _host_loop_applies(design, family, n_agq, precision, relmat) -> bool:
    """One host fit per model (glmmjax._batching.host_loop): on the CPU in float64, the
    models that would otherwise take the compiled general pipeline and that the host
    engines fit — LMMs with a structured covariance term (cs, ar1, toep, diag, ...),
    Laplace GLMMs of built-in families that neither the lockstep engine nor the scalar,
    blocked or crossed paths take (structured terms, large terms). Not with
    ``relmat=`` (the compiled LMM path rotates a known K once for all models)."""
    if not (HOST_LOOP and precision == "float64" and jax.default_backend() == "cpu"
            and relmat is None):
        return False
    if family is None:
        return any(s.name != "us" for s in term_structures(design.terms))
    from .._engines.host.glmm import applies as host_glmm_applies

    if n_agq != 1 or not host_glmm_applies(family):
        return False
    if _lockstep_applies(design, family, n_agq, precision):
        return False
    return not (scalar_path_applies(design, family, n_agq)
                or (BLOCKED_PATH and (blocked_path_applies(design, family, n_agq)
                                      or crossed_path_applies(design, family, n_agq))))


def _lockstep_applies(design, family, n_agq, precision) -> bool:
    """The lockstep numpy engine (glmmjax._batching.lockstep): GLMMs on the CPU in float64
    beyond one scalar term (random slopes, dispersions, crossed or nested terms), where
    the compiled paths' compilation costs more than the whole fit."""
    from .lockstep import applies

    if not (LOCKSTEP and family is not None and precision == "float64"
            and jax.default_backend() == "cpu" and applies(design, family, n_agq)):
        return False
    if scalar_path_applies(design, family, n_agq):
        return SCALAR_ROUTE == "lockstep"
    return True


def _fit_lockstep(design, family, Y, names, reasons, usable, ddf, progress, chunk_size,
                  n_agq=1):
    from types import SimpleNamespace

    from .lockstep import CHUNK, fit_glmm_many

    Y_fit, W_fit = _missing_as_weight_zero(Y, design.weights)
    if W_fit is None:
        W_fit = np.broadcast_to(np.asarray(design.weights, float)[:, None], Y.shape)
    out = None
    if usable:
        with np.errstate(all="ignore"):
            out = fit_glmm_many(design, family, Y_fit[:, usable], W_fit[:, usable], progress,
                                chunk_size, n_agq)
    has_dispersion = bool(family.has_dispersion and family.dispersion_method != "fixed")
    chunk = CHUNK if chunk_size is None else int(chunk_size)
    return _assemble(design, family, names, reasons, usable, out,
                     "Laplace" if n_agq == 1 else f"AGQ({n_agq})",
                     max(1, min(chunk, len(usable))), 1,
                     SimpleNamespace(has_dispersion=has_dispersion), ddf)


def _cpu_blas_limit():
    """OpenBLAS held to one thread while an XLA:CPU program runs (see _run_chunks)."""
    return single_threaded_blas() if jax.default_backend() == "cpu" else contextlib.nullcontext()


def _run_chunks(fn, Y, usable, chunk_size, extra, dtype, progress):
    """Fit the usable models chunk by chunk.

    On the CPU the chunks run with OpenBLAS held to one thread (as every other glmmjax
    program call, see glmmjax._engines.blas): XLA:CPU calls LAPACK from its own worker threads,
    and a threaded OpenBLAS under them both oversubscribes the cores and had its
    thread count changed underneath it by concurrent glmmjax calls. Each chunk is
    waited for in short sleeps, so Ctrl-C stops a batch between chunks (and during
    one) instead of being ignored until the end; a bar shows the chunks done.
    """
    if not usable:
        return None
    order = np.asarray(usable)
    n_chunks = int(np.ceil(len(order) / chunk_size))
    iterator = range(n_chunks)
    if progress or (progress is None and n_chunks > 1 and not quiet()):
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="fitting models", unit="chunk")
    pieces = []
    with _cpu_blas_limit():
        for c in iterator:
            idx = order[c * chunk_size : (c + 1) * chunk_size]
            # Pad the last chunk with copies of its first model so the shape (and the
            # compiled program) stays the same; the copies are discarded.
            padded = np.concatenate([idx, np.full(chunk_size - len(idx), idx[0])])
            block = jnp.asarray(np.ascontiguousarray(Y[:, padded].T), dtype)
            args = extra
            if extra and isinstance(extra[0], np.ndarray) and extra[0].shape == Y.shape:
                # Per-model prior weights (missing responses): chunked as the responses.
                args = (jnp.asarray(np.ascontiguousarray(extra[0][:, padded].T), dtype),
                        *extra[1:])
            out = jax.tree_util.tree_map(np.asarray, wait_interruptibly(
                fn(block, *args), what=f"fit_many's chunk {c + 1} of {n_chunks}"))
            keep = len(idx)
            pieces.append(jax.tree_util.tree_map(lambda a, k=keep: a[:k], out))
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *pieces)


def _assemble(design, family, names, reasons, usable, out, method, chunk_size, devices, setup,
              ddf, design_df=None):
    K = len(names)
    p = design.X.shape[1]
    fixef_names = list(design.fixef_names)
    terms = design.terms
    sizes = term_structures(terms)
    n_theta = sum(c.n_params for c in sizes)
    beta = np.full((K, p), np.nan)
    se = np.full((K, p), np.nan)
    theta = np.full((K, n_theta), np.nan)
    value = np.full(K, np.nan)
    scale = np.full(K, np.nan)
    iterations = np.zeros(K, dtype=int)
    status = np.array(reasons, dtype=object)
    converged = np.zeros(K, dtype=bool)
    df = np.full((K, p), np.inf if ddf is None else np.nan)
    if ddf == "between-within":
        df[:] = between_within_df(design) if design_df is None else design_df
    if out is not None:
        idx = np.asarray(usable)
        beta[idx] = out["beta"]
        if ddf in ("satterthwaite", "kenward-roger"):
            df[idx] = out["df"]
        se[idx] = np.sqrt(np.maximum(np.diagonal(out["beta_cov"], axis1=1, axis2=2), 0))
        if "se_adjusted" in out:  # Kenward–Roger's adjusted Var(β̂)
            se[idx] = out["se_adjusted"]
        value[idx] = out["value"]
        iterations[idx] = out["iterations"]
        codes = out["status"]
        if family is None:
            theta_raw = out["theta"]
            scale[idx] = out["sigma"]
            ok = codes == Status.CONVERGED
        else:
            theta_raw = out["params"][:, :n_theta]
            if setup.has_dispersion:
                scale[idx] = np.exp(out["params"][:, -1])
            ok = (codes == Status.CONVERGED) & out["hessian_pd"] & out["inner_converged"]
        theta[idx] = canonical_thetas(theta_raw, sizes)
        converged[idx] = ok & np.isfinite(value[idx])
        inner_ok = out.get("inner_converged", np.ones(len(idx), bool))
        hessian_pd = out.get("hessian_pd", np.ones(len(idx), bool))
        # A NaN Hessian also fails the positive-definiteness test; say which it was.
        cov_finite = np.isfinite(out["beta_cov"]).all(axis=(1, 2))
        for j, k in enumerate(idx):
            if not converged[k]:
                code = Status(int(codes[j]))
                if code != Status.CONVERGED:
                    status[k] = code.describe()
                elif not inner_ok[j]:
                    status[k] = ("the conditional modes (inner Newton) did not converge: "
                                 "the Laplace value is not at the mode")
                elif not cov_finite[j]:
                    status[k] = ("non-finite Hessian at the optimum: no standard errors "
                                 "(the estimates themselves are the optimizer's)")
                elif not hessian_pd[j]:
                    status[k] = ("Hessian not positive definite at the optimum: standard "
                                 "errors unreliable (a variance at zero, or a flat direction)")
                else:
                    status[k] = "non-finite objective at the optimum"
            else:
                status[k] = "converged"
    if design.dropped_fixef:
        # Aliased columns were not fitted (glmmjax._model.rank): NaN in every model, as lme4's
        # fixef(add.dropped = TRUE).
        from .._model.rank import all_fixef_names

        fixef_names = list(all_fixef_names(design))
        p = len(fixef_names)
        kept = list(design.x_columns)
        beta_kept, se_kept, df_kept = beta, se, df
        beta, se, df = (np.full((K, p), np.nan) for _ in range(3))
        beta[:, kept], se[:, kept], df[:, kept] = beta_kept, se_kept, df_kept
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = beta / se
    pval = batch_p_values(stat, df)
    coefficients = pd.DataFrame({
        "model": np.repeat(names, p),
        "term": np.tile(fixef_names, K),
        "estimate": beta.ravel(),
        "std_error": se.ravel(),
        "statistic": stat.ravel(),
        "df": df.ravel(),
        "p_value": pval.ravel(),
    })
    models = pd.DataFrame({"model": names})
    models["criterion"] = value
    models["loglik"] = -0.5 * value
    if family is None:
        models["sigma"] = scale
    elif setup.has_dispersion:
        models["dispersion"] = scale
    sigma_for_sd = scale if family is None else np.ones(K)
    for label, values in _sd_columns(theta, terms, sigma_for_sd).items():
        models[label] = values
    models["converged"] = converged
    models["iterations"] = iterations
    models["status"] = status
    return BatchResult(
        coefficients=coefficients,
        models=models,
        fixef=pd.DataFrame(beta, index=names, columns=fixef_names),
        fixef_se=pd.DataFrame(se, index=names, columns=fixef_names),
        theta=theta,
        method=method,
        inference=describe_ddf(ddf),
        chunk_size=chunk_size,
        n_devices=devices,
    )


def _sd_columns(theta: np.ndarray, terms, sigma: np.ndarray) -> dict:
    """Random-effect SDs and correlations per model, named ``sd_<coef>|<group>``."""
    columns = {}
    start = 0
    for term, structure in zip(terms, term_structures(terms)):
        size = term.size
        count = structure.n_params
        if structure.name != "us":  # its SDs and correlation parameter (glmmTMB's)
            names = structure.profile_names(term.group, term.coef_names)
            values = np.array([structure.natural(t, s)[1] for t, s in
                               zip(theta[:, start : start + count], sigma)]).reshape(-1, count)
            columns.update({name: values[:, i] for i, name in enumerate(names)})
            start += count
            continue
        cols, rows = np.triu_indices(size)
        factor = np.zeros((theta.shape[0], size, size))
        factor[:, rows, cols] = theta[:, start : start + count]
        start += count
        cov = np.einsum("kab,kcb->kac", factor, factor) * (sigma**2)[:, None, None]
        sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        for i, name in enumerate(term.coef_names):
            columns[f"sd_{name}|{term.group}"] = sd[:, i]
        for j in range(size):
            for i in range(j + 1, size):
                with np.errstate(invalid="ignore", divide="ignore"):
                    corr = cov[:, i, j] / (sd[:, i] * sd[:, j])
                columns[f"cor_{term.coef_names[i]}.{term.coef_names[j]}|{term.group}"] = corr
    return columns


def _padded_designs(formula: str, datasets: list, family, weights):
    if weights is not None and (not isinstance(weights, (list, tuple))
                                or len(weights) != len(datasets)):
        raise DataError(f"weights must be a list with one entry (an array, a column name or "
                        f"None) per dataset ({len(datasets)}), got {type(weights).__name__}"
                        + (f" of length {len(weights)}" if hasattr(weights, "__len__") else ""))
    designs = []
    for index, frame in enumerate(datasets):
        try:
            designs.append(build_design(
                formula, frame, weights=None if weights is None else weights[index],
                require_random=True, numeric_response=family is None, drop_aliased=True,
            ))
        except ValueError as err:
            raise type(err)(f"dataset {index}: {err}") from err
    first = designs[0]
    for index, design in enumerate(designs[1:], start=1):
        if design.fixef_names != first.fixef_names:
            raise DataError(
                f"dataset {index} has fixed-effect columns {list(design.fixef_names)}, "
                f"dataset 0 has {list(first.fixef_names)}: give categorical columns the "
                "same categories in every dataset"
            )
    # One term order for all (each design sorts its own terms by level count).
    keys = [str(t.spec) for t in first.terms]
    most = {k: max(next(t.n_levels for t in d.terms if str(t.spec) == k) for d in designs)
            for k in keys}
    keys.sort(key=lambda k: -most[k])
    term_lists = []
    for design in designs:
        by_key = {str(t.spec): t for t in design.terms}
        terms = []
        for k in keys:
            t = by_key[k]
            extra = tuple(f"<padding {i}>" for i in range(most[k] - t.n_levels))
            terms.append(dataclasses.replace(t, levels=t.levels + extra))
        term_lists.append(tuple(terms))
    return designs, term_lists


def fit_datasets(
    formula: str,
    datasets: list,
    family: str | Family | None = None,
    *,
    reml: bool = True,
    n_agq: int = 1,
    weights: list | None = None,
    precision: str = "float64",
    ddf: str | None = "auto",
) -> BatchResult:
    """Fit the same formula to several datasets at once (one model per dataset).

    The datasets may differ in size and in their grouping factors' levels: every one is
    padded to the largest (padded rows carry weight 0 and contribute nothing; padded
    levels have no observations, so their random effects are exactly zero and add
    nothing to the likelihood), and all are fitted in one vmapped computation. Each
    model equals the same model fitted alone.

    Args:
        formula: full lme4 formula with the response, e.g. ``"y ~ x + (1 | g)"``.
        datasets: a list of DataFrames with the formula's columns.
        weights: optional list of per-dataset prior-weight arrays.
        ddf: the tests of the fixed effects, as :func:`fit_many`'s (the between-within
            df of GLMMs follow each dataset's own design).
    """
    check_precision(precision)
    if not datasets:
        raise DataError("datasets is empty")
    family = _batch_family(family)
    ddf = check_batch_ddf(ddf, lmm=family is None)
    if ddf == "kenward-roger":
        raise ValueError("fit_datasets offers ddf='satterthwaite' for LMMs, not "
                         "'kenward-roger' (fit_many does)")
    designs, term_lists = _padded_designs(formula, list(datasets), family, weights)
    dtype = float_dtype(precision)
    n_max = max(d.nobs for d in designs)
    p = designs[0].X.shape[1]

    def pad_rows(a):
        a = np.asarray(a, dtype=float)
        width = [(0, n_max - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
        return np.pad(a, width)

    reasons, ys, ws = [], [], []
    for design in designs:
        if family is None:
            check_lmm_design(design)
            y, w = np.asarray(design.response, dtype=float) - design.offset, design.weights
        else:
            y, w, _ = family.prepare_response(design.response, design.weights,
                                              design.response_levels, design.rows)
        reasons.append("" if np.all(np.isfinite(y)) else "non-finite response")
        ys.append(pad_rows(y))
        ws.append(pad_rows(w))
    Y, W = np.stack(ys), np.stack(ws)
    X = np.stack([pad_rows(d.X) for d in designs])
    offsets = np.stack([pad_rows(d.offset) for d in designs])
    with precision_scope(precision):
        if family is None:
            structure = _stack_structures(term_lists, p + 1)
            setup = _LMMSetup(X=X.astype(dtype), weights=W.astype(dtype), structure=structure,
                              reml=reml, gtol=1e-8 if precision == "float64" else 1e-2,
                              loose_gtol=1e-3 if precision == "float64" else 1.0,
                              satterthwaite=ddf == "satterthwaite")
            with _cpu_blas_limit():
                out = wait_interruptibly(
                    _stacked(_lmm_one)(jnp.asarray(Y, dtype), setup))
            method = "REML" if reml else "ML"
        else:
            setups = [make_setup(dataclasses.replace(d, terms=t), family, n_agq, dtype)
                      for d, t in zip(designs, term_lists)]
            inner = _stack_structures(term_lists, p)
            outer = _stack_structures(term_lists, 0)
            setup = _stacked_glmm_setup(setups, X, offsets, inner, outer, dtype)
            with _cpu_blas_limit():
                out = wait_interruptibly(_stacked(_glmm_one)(
                    jnp.asarray(Y, dtype), jnp.asarray(W, dtype), setup
                ))
            method = {0: "nAGQ=0", 1: "Laplace"}.get(n_agq, f"AGQ({n_agq})")
    out = jax.tree_util.tree_map(np.asarray, out)
    names = list(range(len(designs)))
    usable = list(range(len(designs)))
    design_df = (np.stack([between_within_df(d) for d in designs])
                 if ddf == "between-within" else None)
    return _assemble(designs[0], family, names, reasons, usable, out, method, len(designs), 1,
                     setup if family is not None else None, ddf, design_df)


def _stack_structures(term_lists, n_dense):
    from .._model.structure import stack_structures

    return stack_structures(term_lists, n_dense)


def _stacked_glmm_setup(setups, X, offsets, inner, outer, dtype):
    first = setups[0]
    return eqx.tree_at(
        lambda s: (s.X, s.X_pinv, s.offset, s.inner, s.outer, s.grid, s.log_w),
        first,
        (
            X.astype(dtype),
            np.stack([np.linalg.pinv(x) for x in X]).astype(dtype),
            offsets.astype(dtype),
            inner,
            outer,
            np.stack([np.asarray(s.grid) for s in setups]),
            np.stack([np.asarray(s.log_w) for s in setups]),
        ),
    )
