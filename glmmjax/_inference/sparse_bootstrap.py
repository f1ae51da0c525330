"""Parametric bootstrap of an LMM fitted on the sparse pedigree path.

The dense bootstrap (:mod:`glmmjax._inference.bootstrap`) refits its replicates with
``fit_many``, which forms q × q blocks for a known K. A fit with a large pedigree or
sparse K (:mod:`glmmjax._engines.host.sparse_lmm`) is refitted on its own path instead:
each replicate draws new random effects from the fitted model, b_t ~ N(0, σ²θ_t²·K)
for the relatedness term (K = A for a pedigree, drawn through the sparse LDL' of
A⁻¹: no q × q matrix) and b_t ~ N(0, σ²Λ_tΛ_t') per level for the others, adds noise
N(0, σ²/wᵢ), and is refitted with the model's sparse pattern and fill-reducing order
kept (only Z'Wy changes), as lme4's ``bootMer(use.u = FALSE)``. Replicates run one
after another: each is a few sparse factorizations per evaluation.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import scipy.sparse
import scipy.sparse.linalg

from .._engines.host import sparse_lmm
from .._lmer import sparse_lmm_result
from .._model.cov_structures import term_structures
from .._model.covariance import split_theta
from .._model.sparse_relmat import SparseRelatedness
from .bootstrap import BootstrapResult, fit_statistics


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SparseRefits:
    """The refits of a sparse-path bootstrap (``BootstrapResult.batch``): ``converged``
    per replicate and ``models`` (criterion, evaluations, optimizer message)."""

    converged: np.ndarray
    models: pd.DataFrame

    def __repr__(self) -> str:
        return (f"SparseRefits({len(self.converged)} refits, "
                f"{int(np.sum(self.converged))} converged)")


def relatedness_draws(cov: SparseRelatedness, n_levels: int, noise) -> np.ndarray:
    """K^½-type draws: (n_levels, k) columns with covariance K, from standard normal
    ``noise`` (n_levels, k). A sparse K: F·e with F·F' = K. A pedigree (Q = A⁻¹):
    Q = P'·L·D·L'·P (SuperLU, diagonal pivots, symmetric order), x = P'·L'⁻¹·D^-½·e,
    whose covariance is Q⁻¹ = A."""
    noise = np.asarray(noise, dtype=np.float64)
    if cov.lower is not None:
        return np.asarray(cov.lower @ noise)
    Q = scipy.sparse.csc_matrix(cov.precision, dtype=np.float64)
    lu = scipy.sparse.linalg.splu(Q, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                                  options={"SymmetricMode": True})
    d = lu.U.diagonal()
    upper = lu.L.T.tocsr()
    y = scipy.sparse.linalg.spsolve_triangular(upper, noise / np.sqrt(d)[:, None],
                                               lower=False, unit_diagonal=True)
    # Pr·Q·Pr' = L·D·L' with Pr moving row i to perm_r[i]: x = Pr'·y.
    return np.asarray(y)[lu.perm_r]


def simulate_sparse(result, n: int, seed) -> np.ndarray:
    """(n_obs, n) responses simulated from a sparse-path LMM with new random effects."""
    rng = np.random.default_rng(seed)
    design = result.design
    sigma = float(result.sigma)
    eta = np.asarray(design.X @ result.beta + design.offset, dtype=np.float64)
    Y = np.repeat(eta[:, None], n, axis=1)
    structures = term_structures(design.terms)
    for term, cov, part in zip(design.terms, structures,
                               split_theta(np.asarray(result.theta_values, float), structures)):
        z = np.asarray(term.z, dtype=np.float64)
        if isinstance(cov, SparseRelatedness):
            noise = rng.standard_normal((term.n_levels, n))
            b = sigma * abs(float(part[0])) * relatedness_draws(cov, term.n_levels, noise)
            Y += z[:, 0:1] * b[term.refs]
            continue
        lam = np.asarray(cov.factor(np.asarray(part, float), np), dtype=np.float64)
        draws = rng.standard_normal((n, term.n_levels, term.size)) @ lam.T * sigma
        Y += np.einsum("is,kis->ik", z, draws[:, term.refs, :])
    weights = np.asarray(design.weights, dtype=np.float64)
    return Y + rng.standard_normal(Y.shape) * sigma / np.sqrt(weights)[:, None]


def sparse_bootstrap(result, n: int, seed=0, *, progress=None,
                     max_iter: int = 1000) -> BootstrapResult:
    """:meth:`glmmjax.LMMResult.bootstrap` for a fit of the sparse path (module docstring)."""
    from .._progress import bar

    design = result.design
    reml = bool(result.reml)
    Y = simulate_sparse(result, n, seed)
    base = sparse_lmm._model(design, reml)
    original_values = fit_statistics(result)
    columns = list(original_values)
    start = np.asarray(result.theta_values, dtype=np.float64)
    rows, converged, records = [], [], []
    for k in bar(range(n), enabled=progress, desc="bootstrap refits"):
        model = sparse_lmm.with_response(base, Y[:, k] - design.offset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            refit = sparse_lmm_result(
                design, reml, sparse_lmm.fit_sparse_lmm(design, reml, max_iter, start,
                                                        model=model), warn=False)
        values = fit_statistics(refit)
        rows.append([values.get(c, np.nan) for c in columns])
        converged.append(bool(refit.convergence.converged))
        records.append({"criterion": refit.criterion,
                        "n_evaluations": refit.convergence.n_evaluations,
                        "message": refit.convergence.message})
    replicates = pd.DataFrame(rows, columns=columns)
    original = pd.Series({c: original_values[c] for c in columns})
    refits = SparseRefits(np.asarray(converged), pd.DataFrame(records))
    return BootstrapResult(replicates=replicates, original=original, batch=refits)
