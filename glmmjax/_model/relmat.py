"""Known relatedness: a random intercept whose levels are correlated by a given matrix K.

``relmat={"animal": K}`` turns the term ``(1 | animal)`` into b ~ N(0, σ²θ²·K) (the animal
model of quantitative genetics; GWAS mixed models with a kinship matrix), as lme4qtl and
pedigreemm do: with K = L·L', b = θ·L·u, u ~ N(0, σ²I), so ZΛ becomes Z·(θL) and the
LMM and GLMM objectives, their gradients, both engines, batches and inference apply
unchanged. In glmmjax's terms the q levels become the q random effects of *one* group,
with the indicator columns of the levels as the term's model matrix and the covariance
structure :class:`Relatedness` (Λ = |θ|·L, one parameter; glmmTMB's ``propto``).

L is computed once, when the design is built: the Cholesky factor of K where K is
positive definite, else (positive semi-definite and singular, e.g. clones or a genomic
K of rank below q) the eigen factor L = U·diag(√max(d, 0)), with K = U·diag(d)·U'. Only
L·L' = K matters to the likelihood, so either factor gives the same fit.

All checks (square, symmetric, positive semi-definite, level names) run here, in numpy,
before any tracing, and name the argument.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd

from .._lazyjax import jnp
from .cov_structures import CovarianceStructure


class RelmatError(ValueError):
    """A ``relmat=`` argument that cannot be used."""


class KnownScaleTerm:
    """What the known-relatedness structures (dense here, sparse in
    :mod:`glmmjax._model.sparse_relmat`) share: one parameter, |θ_1| scaling a known
    correlation of the levels, reported as the SD of the term's intercept."""

    @property
    def n_params(self) -> int:
        return 1

    def scale_mask(self) -> np.ndarray:
        return np.ones(1, dtype=bool)

    def start(self, sds) -> np.ndarray:
        sds = np.asarray(sds, dtype=np.float64)
        return np.array([float(np.sqrt(np.mean(np.square(sds))))])

    def param_names(self, group: str, coefs) -> list[str]:
        return [f"{group}.Intercept"]

    def profile_names(self, label: str, coefs) -> list[str]:
        return [f"sd_Intercept|{label}"]

    def natural(self, params, scale: float):
        sd = [float(scale * abs(np.asarray(params, dtype=np.float64)[0]))]
        return sd, list(sd), ["sd"]

    def from_natural(self, omega, scale):
        return omega / scale


@dataclasses.dataclass(frozen=True)
class Relatedness(KnownScaleTerm, CovarianceStructure):
    """Λ_t = |θ_1|·L with L·L' = K fixed: σ²θ_1²·K is the covariance of the term's q
    effects (``size`` = q). Compared and hashed by a digest of L, so the structure is
    static in compiled programs without hashing the matrix each time."""

    digest: str = ""
    matrix: np.ndarray = dataclasses.field(default=None, compare=False, repr=False)

    name = "relmat"

    def factor(self, params, xp=jnp):
        lower = self.matrix if xp is np else jnp.asarray(self.matrix)
        return xp.abs(params[0]) * lower

    def pullback(self, params, grad) -> np.ndarray:
        return np.array([np.sum(np.asarray(grad) * self.matrix) * np.sign(params[0])])

    def jacobian(self, params) -> np.ndarray:
        # The default forms S² unit pullbacks: q⁴ work for q levels.
        sign = np.sign(params[0]) or 1.0
        return (sign * self.matrix)[None]


def is_relatedness(term) -> bool:
    return isinstance(getattr(term, "covariance", None), Relatedness)


def check_relmat(relmat, parsed) -> dict:
    """``relmat`` as ``{group: K}``, each group the grouping factor of an intercept-only
    term of the formula."""
    if relmat is None:
        return {}
    if not isinstance(relmat, dict):
        raise RelmatError(f"relmat must be a dict {{grouping factor: K}}, got "
                          f"{type(relmat).__name__}")
    groups = {spec.group: spec for spec in parsed.random}
    for name in relmat:
        if name not in groups:
            raise RelmatError(
                f"relmat names {name!r}, which is not the grouping factor of a random-effects "
                f"term of the formula; the formula's grouping factors: {sorted(groups)}")
        spec = groups[name]
        doubled = [s for s in parsed.random if s.group == name]
        if (len(doubled) > 1 or spec.structure != "us"
                or [c.strip() for c in spec.expr.split("+")] != ["1"]):
            raise RelmatError(
                f"relmat[{name!r}] applies to a random intercept only, (1 | {name}); the "
                f"formula has {', '.join(str(s) for s in doubled)}. Random slopes with a "
                "known relatedness matrix are not supported")
    return dict(relmat)


def _as_dense(K, name: str) -> tuple[np.ndarray, list[str] | None]:
    from .pedigree import Pedigree

    what = f"relmat[{name!r}]"
    labels = None
    if isinstance(K, Pedigree):
        K = K.relationship_matrix()
    if isinstance(K, pd.DataFrame):
        if [str(v) for v in K.index] != [str(v) for v in K.columns]:
            raise RelmatError(f"{what}: the DataFrame's index and columns must name the same "
                              "levels in the same order")
        labels = [str(v) for v in K.index]
        K = K.to_numpy()
    elif hasattr(K, "toarray") and hasattr(K, "nnz"):  # scipy.sparse
        K = K.toarray()
    try:
        matrix = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise RelmatError(f"{what} must be a numeric matrix (numpy array, DataFrame or "
                          f"scipy.sparse matrix): {err}") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise RelmatError(f"{what} must be a square matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise RelmatError(f"{what} has non-finite entries")
    if labels is not None and len(set(labels)) != len(labels):
        raise RelmatError(f"{what}: its level names are not unique")
    return matrix, labels


def relatedness_factor(matrix: np.ndarray, name: str) -> np.ndarray:
    """L with L·L' = K: Cholesky where K is positive definite, else the eigen factor of a
    positive semi-definite K."""
    what = f"relmat[{name!r}]"
    scale = float(np.max(np.abs(matrix))) or 1.0
    if not np.allclose(matrix, matrix.T, rtol=0.0, atol=1e-10 * scale):
        i, j = np.unravel_index(np.argmax(np.abs(matrix - matrix.T)), matrix.shape)
        raise RelmatError(f"{what} is not symmetric (entries [{i}, {j}] = {matrix[i, j]:.6g} "
                          f"and [{j}, {i}] = {matrix[j, i]:.6g})")
    try:
        return np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        pass
    values, vectors = np.linalg.eigh(matrix)
    tolerance = 1e-8 * max(float(values[-1]), scale) * matrix.shape[0]
    if values[0] < -tolerance:
        raise RelmatError(f"{what} is not positive semi-definite (smallest eigenvalue "
                          f"{values[0]:.3g})")
    return vectors * np.sqrt(np.clip(values, 0.0, None))


def relatedness_term(spec, K, refs: np.ndarray, levels: list[str]):
    """The term (1 | group) with known K as one group of q effects: (refs, z, levels,
    coef_names, structure). ``levels`` are the factor's levels in the data; K may have
    more (ancestors without records), never fewer."""
    name = spec.group
    matrix, labels = _as_dense(K, name)
    if labels is None:
        if matrix.shape[0] != len(levels):
            raise RelmatError(
                f"relmat[{name!r}] is {matrix.shape[0]}×{matrix.shape[0]} but {name!r} has "
                f"{len(levels)} levels; give K as a DataFrame whose index names the levels "
                "(it may hold more levels than the data, e.g. ancestors)")
        labels = list(levels)
    position = {label: i for i, label in enumerate(labels)}
    missing = [level for level in levels if level not in position]
    if missing:
        raise RelmatError(
            f"relmat[{name!r}] has no row for {len(missing)} level(s) of {name!r}: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}")
    lower = relatedness_factor(matrix, name)
    lower.setflags(write=False)
    columns = np.array([position[level] for level in levels])[refs]
    z = np.zeros((refs.shape[0], len(labels)))
    z[np.arange(refs.shape[0]), columns] = 1.0
    digest = hashlib.sha1(lower.tobytes()).hexdigest() + f":{lower.shape[0]}"
    structure = Relatedness(len(labels), digest=digest, matrix=lower)
    return np.zeros_like(refs), z, [f"({name})"], labels, structure



def rotated_relatedness(design):
    """For a batch of LMMs whose only random term has a known K (the GWAS/eQTL case):
    ``(terms, U)`` with U'ZKZ'U = diag(d), else None.

    y ~ N(Xβ, σ²(θ²·ZKZ' + I)) is, after the orthogonal rotation y* = U'y, X* = U'X,
    y* ~ N(X*β, σ²(θ²·diag(d) + I)): a random intercept with one level per rotated
    observation and z = √d. The rotation leaves the ML and REML criteria, β̂, its
    covariance and θ unchanged (|det U| = 1), and it turns every evaluation's q×q
    factorization into n scalar ones; U is computed once for all responses (FaST-LMM's
    and GEMMA's device). Needs unit weights (prior weights would enter V as W⁻¹).
    """
    if len(design.terms) != 1 or not is_relatedness(design.terms[0]):
        return None
    if not np.all(design.weights == 1.0):
        return None
    term = design.terms[0]
    from .cov_structures import Unstructured
    from .design import TermDesign

    rows = term.covariance.matrix[np.argmax(term.z, axis=1)]  # Z·L, z one-hot
    values, vectors = np.linalg.eigh(rows @ rows.T)
    n = rows.shape[0]
    scalar = TermDesign(term.spec, np.arange(n, dtype=np.int32),
                        np.sqrt(np.clip(values, 0.0, None))[:, None],
                        tuple(str(i) for i in range(n)), ("Intercept",), None,
                        Unstructured(1))
    return (scalar,), vectors
