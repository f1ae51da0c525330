"""The engine seam: which engine fits a model, and what every engine hands back.

Two engines fit the same objectives (DESIGN.md): the *host* engine (numpy and LAPACK
in a Python loop, nothing to compile: :mod:`glmmjax._engines.host.lmm`,
:mod:`glmmjax._engines.host.glmm`) and the *compiled* engine (one XLA program per model
structure: :mod:`glmmjax._engines.compiled.lmm`, :mod:`glmmjax._engines.compiled.glmm`). :func:`choose` is the one
place that decides between them, from the backend, the data's size, the family, the
method and the user's ``engine=``; GLMM engines return a :class:`GLMMFit`, and every
fit records an :class:`OptSummary` (as MixedModels.jl's ``OptSummary``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import jax

ENGINES = ("host", "jax")

# Near-zero diagonal entries of θ (below this) are tried at exactly zero at the end of
# every fit, LMM and GLMM, host and compiled: the boundary of the parameter space is
# where singular fits end, and BFGS only approaches it.
BOUNDARY_TRY = 1e-3

# Up to this many rows a fit runs on the host engine by default. Its numpy passes over
# the rows are not fused or threaded as XLA's are, so on very large data the compiled
# program's run time wins over its compile time (benchmarks/README.md has the figures).
HOST_MAX_ROWS = 200_000


class GLMFit(NamedTuple):
    """What a GLM engine hands back (host: numpy arrays; compiled: JAX arrays; n observations, p coefficients).

    Attributes:
        coef: β̂ (p,).
        vcov: estimated Var(β̂) (p, p), scaled by the dispersion where R scales it.
        cov_unscaled: (X'WX)⁻¹ (p, p).
        dispersion: the family's extra parameter (σ², φ or θ; 1 when it has none).
        dispersion_se: its standard error for ML-estimated dispersions, else NaN.
        eta, mu: linear predictor (offset included) and fitted means (n,).
        deviance: Σ w·d(y, μ).
        loglik: full log-likelihood, as R's logLik reports it.
        iterations: IRLS iterations (Newton iterations for ML dispersions).
        converged: bool.
        null_deviance: deviance of the null model chosen by ``null_model`` (NaN for
            ``"none"``), with the dispersion held at its estimate.
    """

    coef: jax.Array
    vcov: jax.Array
    cov_unscaled: jax.Array
    dispersion: jax.Array
    dispersion_se: jax.Array
    eta: jax.Array
    mu: jax.Array
    deviance: jax.Array
    loglik: jax.Array
    iterations: jax.Array
    converged: jax.Array
    null_deviance: jax.Array



@dataclasses.dataclass(frozen=True)
class OptSummary:
    """How the optimizer ran (the final stage of a two-stage GLMM fit).

    Attributes:
        optimizer: the algorithm and the engine that ran it, e.g. ``"BFGS (host)"``.
        initial: the parameters it started from (θ in lme4's Cholesky order, then β
            and log dispersion where they are outer parameters).
        final: the parameters it ended at, in the same layout.
        objective: the criterion at ``final`` (deviance −2 log L, or REML criterion).
        iterations, n_evaluations: optimizer iterations and objective evaluations.
        status: :class:`glmmjax._engines.compiled.optimize.Status` code (0: converged).
        grad_max: max |gradient| at ``final``.
    """

    optimizer: str
    initial: np.ndarray
    final: np.ndarray
    objective: float
    iterations: int
    n_evaluations: int
    status: int
    grad_max: float

    @property
    def converged(self) -> bool:
        """The optimizer's own verdict (a fit may still be marked not converged for a
        Hessian that is not positive definite, or separation)."""
        return self.status == 0

    def __str__(self) -> str:
        from .._display import plural
        from .compiled.optimize import Status

        return (f"{self.optimizer}: {Status(self.status).describe()} after "
                f"{plural(self.iterations, 'iteration')} "
                f"({plural(self.n_evaluations, 'evaluation')}), "
                f"objective {self.objective:.10g}, max|gradient| {self.grad_max:.2e}")


def opt_summary(engine: str, solution, initial) -> OptSummary:
    """An :class:`OptSummary` from a :class:`glmmjax._engines.compiled.optimize.Solution`."""
    return OptSummary(
        optimizer=f"BFGS ({engine})",
        initial=np.array(initial, dtype=np.float64),
        final=np.array(solution.x, dtype=np.float64),
        objective=float(solution.value),
        iterations=int(solution.iterations),
        n_evaluations=int(solution.n_evaluations),
        status=int(solution.status),
        grad_max=float(np.max(np.abs(np.asarray(solution.grad)))) if np.size(solution.grad)
        else 0.0,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class SparseLMMFit:
    """What the sparse LMM engine (:mod:`glmmjax._engines.host.sparse_lmm`) returns:
    θ (canonical), β and Var(β̂), σ, the conditional modes b per term, their
    covariances on demand, the criterion and the optimizer's account."""

    theta: np.ndarray
    beta: np.ndarray
    beta_cov: np.ndarray
    sigma: float
    effects: tuple
    conditional_covariances: Callable[[], list]
    criterion: float
    converged: bool
    message: str
    grad_max: float
    iterations: int
    n_evaluations: int
    singular: bool


@dataclasses.dataclass(frozen=True, eq=False)
class GLMMFit:
    """What a GLMM engine returns (numpy arrays).

    ``params`` = (θ raw, β, log dispersion where estimated), ``hessian`` the Hessian of
    −2 log L in them and ``params_cov`` = 2·H⁻¹; ``v`` the inner mode (u, and β for
    nAGQ=0); ``effects`` the conditional modes b per term, (m_t, S_t) each;
    ``dispersion`` the family's dispersion on its natural scale (estimated or fixed,
    None where the family has none); ``conditional_covariances()`` the conditional
    covariances of b per term, (m_t, S_t, S_t), computed on request.
    """

    engine: str
    params: np.ndarray
    n_theta: int
    beta: np.ndarray
    beta_cov: np.ndarray
    params_cov: np.ndarray | None
    hessian: np.ndarray
    value: float
    v: np.ndarray
    effects: tuple
    dispersion: float | None
    estimated_dispersion: bool
    opt: OptSummary
    conditional_covariances: Callable[[], list]


def check_engine(engine) -> None:
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine must be None, 'host' or 'jax', not {engine!r}")


def _default_backend() -> str:
    """jax's default backend, without starting one where the answer is already known:
    starting XLA's CPU client costs a first host fit 20–30 ms that the host engine never
    uses. Known: a backend already started, ``JAX_PLATFORMS`` led by ``cpu``, or no
    accelerator plugin installed (nothing in the ``jax_plugins`` namespace, no CUDA,
    ROCm or TPU package), where jax can only start the CPU. Where jax is not imported
    yet and the answer is ``"cpu"``, it is not imported either (about a second: a host
    fit needs none of it)."""
    if "jax" not in sys.modules:
        # jax reads its platforms from the environment when imported.
        answer = _known_from_platforms(os.environ.get("JAX_PLATFORMS", ""))
        if answer is not None:
            return answer
    import jax
    from jax._src import xla_bridge

    started = getattr(xla_bridge, "backends_are_initialized", None)
    if started is None or started():  # (older jax: no way to ask, so ask jax)
        return jax.default_backend()
    return _known_from_platforms(jax.config.jax_platforms or "") or jax.default_backend()


def _known_from_platforms(platforms: str) -> str | None:
    """"cpu" where the platforms setting (``JAX_PLATFORMS``, ``jax_platforms``) puts the
    CPU first, or is empty and no accelerator plugin is installed; else None (ask jax)."""
    if platforms:
        return "cpu" if platforms.split(",")[0].strip().lower() == "cpu" else None
    return None if _accelerator_installed() else "cpu"


@functools.lru_cache(maxsize=1)
def _accelerator_installed() -> bool:
    """Whether a package that gives jax a non-CPU backend is importable (checked by
    module specs only: listing the installed distributions' entry points costs more
    than starting the CPU client)."""
    import importlib.util
    import pkgutil

    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and any(True for _ in pkgutil.iter_modules(
            spec.submodule_search_locations or [])):
        return True
    return any(importlib.util.find_spec(name) is not None for name in (
        "libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
        "jax_rocm7_plugin", "jax_metal"))


def choose_lmm(engine: str | None) -> str:
    """``"host"`` or ``"jax"`` for an LMM fit or its inference (Satterthwaite's
    derivatives, conditional covariances): the host engine on the CPU, the compiled one
    on accelerators, unless the user chose.

    Raises:
        ValueError: an unknown ``engine``.
    """
    check_engine(engine)
    if engine is not None:
        return engine
    return "host" if _default_backend() == "cpu" else "jax"


def choose_glmm(design, family, n_agq: int, engine: str | None) -> str:
    """``"host"`` or ``"jax"`` for a GLMM fit.

    The host engine fits Laplace (``n_agq == 1``) for every built-in family and link;
    by default it is used on the CPU up to :data:`HOST_MAX_ROWS` rows. Quadrature,
    nAGQ=0, user-defined families or links, large data and accelerators use the
    compiled engine.

    Raises:
        ValueError: an unknown ``engine``, or ``engine="host"`` for a fit it cannot do.
    """
    from .host.glmm import applies

    check_engine(engine)
    host_possible = n_agq == 1 and applies(family)
    if getattr(family, "n_shape", 0) and (engine == "jax" or not host_possible):
        raise ValueError(
            f"{family} estimates its shape parameter jointly, which only the host engine "
            "does so far (Laplace, n_agq=1, engine=None or 'host'); fix it instead, e.g. "
            "glmmjax.families.StudentT(df=5)")
    if engine == "host" and not host_possible:
        raise ValueError(
            "engine='host' fits Laplace (n_agq=1) GLMMs of the built-in families and "
            f"links; this is {family.name} with {family.link.name} link and "
            f"n_agq={n_agq}. Use engine=None or 'jax'.")
    if engine is not None:
        return engine
    if getattr(family, "n_shape", 0):
        return "host"  # the only engine that estimates a shape parameter, any size
    host = host_possible and design.nobs <= HOST_MAX_ROWS and _default_backend() == "cpu"
    return "host" if host else "jax"


def choose_glm(family, engine: str | None) -> str:
    """``"host"`` or ``"jax"`` for a GLM fit: the host engine (:mod:`glmmjax._engines.host.glm`:
    IRLS, and Newton for the negative binomial's θ, the beta's φ and glmmTMB's families)
    on the CPU for the families it covers (every built-in family and link), whatever
    the size
    (its passes over the rows are BLAS calls), the compiled program otherwise.

    Raises:
        ValueError: an unknown ``engine``, or ``engine="host"`` for a family it does not fit.
    """
    from .host.glm import applies

    check_engine(engine)
    if getattr(family, "n_shape", 0):
        if engine == "jax" or not applies(family):
            raise ValueError(
                f"{family} estimates its shape parameter jointly, which only the host "
                "engine does so far (engine=None or 'host'); fix it instead, e.g. "
                "glmmjax.families.StudentT(df=5)")
        return "host"  # the only engine that estimates a shape parameter
    if engine == "host" and not applies(family):
        raise ValueError(
            "engine='host' fits GLMs of the built-in families (R's and glmmTMB's) with "
            f"their built-in links; this is {family}. Use engine=None or 'jax'.")
    if engine is not None:
        return engine
    return "host" if applies(family) and _default_backend() == "cpu" else "jax"


def fit_lmm(structure, weights, X, y, reml: bool, theta0=None, engine: str | None = None,
            max_iter: int = 500):
    """Run the chosen LMM engine on float64 arrays; returns (solution, θ,
    :class:`~glmmjax._engines.lmm_shared.PLSSolution`, [b_t]) (b_t = Λ_t·u_t per term at
    that θ, relative to σ). The host engine (:mod:`glmmjax._engines.host.lmm`) imports
    no JAX; the compiled one is :func:`glmmjax._engines.compiled.lmm.fit_lmm_arrays`.
    """
    if choose_lmm(engine) == "host":
        from .blas import single_threaded_blas
        from .host import lmm as host_lmm
        from .lmm_shared import start_theta

        if theta0 is None:
            theta0 = start_theta(structure)
        with single_threaded_blas():
            return host_lmm.fit(host_lmm.host_model(structure, weights, X, y, reml), theta0,
                                max_iter=max_iter)
    from .compiled.lmm import fit_lmm_arrays

    return fit_lmm_arrays(structure, weights, X, y, reml, theta0, max_iter=max_iter)


def fit_glmm(design, family, n_agq: int, y, weights, engine: str, max_iter: int) -> GLMMFit:
    """Run the chosen GLMM engine."""
    if engine == "host":
        from .host.glmm import fit

        return fit(design, family, y, weights, max_iter=max_iter)
    from .compiled.glmm import fit

    return fit(design, family, n_agq, y, weights, max_iter=max_iter)
