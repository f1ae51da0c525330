"""A large pedigree or sparse K as a random-effects term that stays sparse: its covariance
structure and the design-time choice of the sparse path (the fit is
:mod:`glmmjax._engines.host.sparse_lmm`)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from .._lazyjax import jnp
from .cov_structures import CovarianceStructure
from .relmat import KnownScaleTerm

# Pedigrees and sparse K with at least this many levels are fitted by the sparse path
# (smaller ones as a dense K, where every method of the result is available).
SPARSE_MIN_LEVELS = 2000


@dataclasses.dataclass(frozen=True)
class SparseRelatedness(KnownScaleTerm, CovarianceStructure):
    """A random intercept per level (``size`` 1, Λ per level = |θ|) whose levels are
    correlated by a known K held sparsely: ``precision`` Q = K⁻¹ (a pedigree's A⁻¹,
    with ``log_det`` = log|K|) or ``lower`` F with F·F' = K. Only the sparse LMM path
    (this module) knows the correlation; every other path refuses the term
    (:func:`refuse_sparse_terms`)."""

    digest: str = ""
    precision: object = dataclasses.field(default=None, compare=False, repr=False)
    lower: object = dataclasses.field(default=None, compare=False, repr=False)
    log_det: float = dataclasses.field(default=0.0, compare=False)

    name = "relmat"

    def factor(self, params, xp=jnp):
        return xp.abs(params[0]) * xp.ones((1, 1))

    def pullback(self, params, grad) -> np.ndarray:
        return np.array([np.sum(np.asarray(grad)) * np.sign(params[0])])


def is_sparse_relatedness(term) -> bool:
    return isinstance(getattr(term, "covariance", None), SparseRelatedness)


def refuse_sparse_terms(terms, what: str = "this method") -> None:
    """A clear error where a path that forms dense blocks meets a sparse relatedness
    term (it would treat the animals as independent)."""
    sparse = [str(t.spec) for t in terms if is_sparse_relatedness(t)]
    if sparse:
        raise ValueError(
            f"{', '.join(sparse)} has a known relatedness fitted sparsely (a pedigree or "
            f"sparse K with at least {SPARSE_MIN_LEVELS} levels); {what} needs the dense "
            "path, which forms q × q matrices: pass K densely (Pedigree.relationship_matrix())"
            " if that fits in memory. lmer's fit, summary, VarCorr, ranef, predict and "
            "logLik, bootstrap, profile and ddf='satterthwaite' work with the sparse path")


def _sparse_cholesky(K, name: str):
    """F with F·F' = K (sparse, lower after a fill-reducing permutation of rows) and
    log|K|, by SuperLU with diagonal pivots in a symmetric order."""
    import scipy.sparse
    import scipy.sparse.linalg

    what = f"relmat[{name!r}]"
    K = scipy.sparse.csc_matrix(K, dtype=np.float64)
    asym = abs(K - K.T)
    scale = float(abs(K).max()) or 1.0
    if asym.nnz and float(asym.max()) > 1e-10 * scale:
        raise _error(f"{what} is not symmetric (largest |K - K'| = {float(asym.max()):.3g})")
    if not np.all(np.isfinite(K.data)):
        raise _error(f"{what} has non-finite entries")
    try:
        lu = scipy.sparse.linalg.splu(K, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                                      options={"SymmetricMode": True})
    except RuntimeError as err:  # exactly singular
        raise _error(f"{what} is singular ({err}); the sparse path needs a positive definite "
                     "K: pass a positive semi-definite K densely") from None
    d = lu.U.diagonal()
    if not np.array_equal(lu.perm_r, lu.perm_c) or np.any(d <= 1e-12 * scale):
        raise _error(f"{what} is not positive definite (a pivot of its LDL' factorization is "
                     f"{float(np.min(d)):.3g}); the sparse path needs a positive definite K: "
                     "pass a positive semi-definite K densely")
    # Pr·K·Pr' = L·D·L' with Pr moving row i to perm_r[i]: K = Pr'·L·D·L'·Pr, and
    # F = Pr'·L·√D holds row perm_r[i] of L·√D in its row i.
    lower = (lu.L @ scipy.sparse.diags(np.sqrt(d))).tocsr()
    return lower[lu.perm_r].tocsc(), float(np.sum(np.log(d)))


def _error(message: str):
    from .relmat import RelmatError

    return RelmatError(message)


def sparse_relatedness_term(spec, K, refs: np.ndarray, levels: list[str]):
    """The term (1 | group) with a pedigree or sparse K: one intercept per level of K
    (its levels may include ancestors without records); (refs, z, levels, names,
    structure) as :func:`glmmjax._model.relmat.relatedness_term` returns them."""
    from .pedigree import Pedigree

    name = spec.group
    if isinstance(K, Pedigree):
        labels = list(K.labels)
        precision = K.inverse()
        log_det = K.log_det()
        lower = None
        digest = hashlib.sha1(precision.data.tobytes() + precision.indices.tobytes()
                              ).hexdigest()
    else:
        if K.shape[0] != K.shape[1]:
            raise _error(f"relmat[{name!r}] must be a square matrix, got shape {K.shape}")
        if K.shape[0] != len(levels):
            raise _error(
                f"relmat[{name!r}] is {K.shape[0]}×{K.shape[0]} but {name!r} has {len(levels)} "
                "levels; a sparse K has no level names, so it must have one row per level, in "
                "the order of the levels (as a numpy K; ranef lists them), or give a Pedigree")
        labels = list(levels)
        lower, log_det = _sparse_cholesky(K, name)
        precision = None
        digest = hashlib.sha1(lower.data.tobytes() + lower.indices.tobytes()).hexdigest()
    position = {label: i for i, label in enumerate(labels)}
    missing = [level for level in levels if level not in position]
    if missing:
        raise _error(
            f"relmat[{name!r}] (a pedigree of {len(labels)} animals) has no entry for "
            f"{len(missing)} level(s) of {name!r} in the data: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}")
    columns = np.array([position[level] for level in levels], dtype=np.int64)[refs]
    structure = SparseRelatedness(1, digest=f"{digest}:{len(labels)}", precision=precision,
                                  lower=lower, log_det=log_det)
    return columns, np.ones((refs.shape[0], 1)), labels, ["Intercept"], structure


def use_sparse_path(K) -> bool:
    """Whether ``lmer`` fits this relmat value sparsely: a pedigree or scipy.sparse K with
    at least :data:`SPARSE_MIN_LEVELS` levels."""
    from .pedigree import Pedigree

    if isinstance(K, Pedigree):
        return len(K) >= SPARSE_MIN_LEVELS
    if hasattr(K, "toarray") and hasattr(K, "nnz"):
        return K.shape[0] >= SPARSE_MIN_LEVELS
    return False
