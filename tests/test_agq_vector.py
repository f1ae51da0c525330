"""Adaptive Gauss–Hermite quadrature with vector-valued random effects (S = 2, 3).

lme4 only does nAGQ > 1 for a scalar random intercept, so there is no R reference for
``(1 + x | g)``. Instead the AGQ objective is checked at fixed parameters against the
marginal likelihood integrated by brute force: per group, a plain Riemann sum of
φ(u)·Π p(y | u) over a fine tensor grid covering [−10, 10]^S in the spherical
random effects u (b = Λu). The integrand is analytic and decays like a Gaussian, so
that sum is accurate to far below 1e-9 (checked by halving the step); it uses neither
the conditional mode nor the Hessian, unlike AGQ.

Compilation dominates the cost, so each random-effects dimension is compiled once:

* grids with fewer nodes are padded to the largest grid with log-weight −inf (those
  nodes add exp(−inf) = 0 to the sum), so one program serves every node count;
* cluster sizes 5, 20 and 80 share one array of 80 rows per group: rows left out get
  prior weight 0, which contributes exactly 0 to the binomial log-likelihood and its
  derivatives. The brute-force sums see only the rows with weight 1, so agreeing with
  them also checks that the zero-weight rows are inert.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp

import glmmjax
from glmmjax._engines.compiled.laplace import agq_objective, gauss_hermite_grid, laplace_objective
from glmmjax._engines.compiled.pirls import GLMMData
from glmmjax._families.base import get_family
from glmmjax._model.design import build_design
from glmmjax._model.structure import build_structure

FAMILY = get_family("binomial")


def lambda_factor(theta: np.ndarray, size: int) -> np.ndarray:
    """Λ from θ: lme4's column-major lower triangle."""
    lam = np.zeros((size, size))
    k = 0
    for col in range(size):
        for row in range(col, size):
            lam[row, col] = theta[k]
            k += 1
    return lam


def padded_grid(n_nodes: int, dim: int, n_max: int):
    """Gauss–Hermite grid with ``n_nodes`` per dimension, padded to ``n_max**dim`` rows."""
    grid, log_w = gauss_hermite_grid(n_nodes, dim)
    pad = n_max**dim - grid.shape[0]
    grid = np.vstack([grid, np.zeros((pad, dim))])
    log_w = np.concatenate([log_w, np.full(pad, -np.inf)])
    return grid, log_w


class Problem:
    """A Bernoulli-logit GLMM ``y ~ covariates + (1 + covariates | g)`` on fixed data.

    ``evaluate(params, n_nodes, weights)`` returns (Laplace, AGQ) −2 log L from one
    compiled program; ``brute_force(params, weights)`` integrates numerically.
    """

    def __init__(self, n_groups: int, n_per: int, covariates: tuple[str, ...], seed: int,
                 theta: np.ndarray, beta: np.ndarray, n_max: int):
        rng = np.random.default_rng(seed)
        n = n_groups * n_per
        self.dim = 1 + len(covariates)
        self.n_max = n_max
        self.g = np.repeat(np.arange(n_groups), n_per)
        self.x = rng.normal(size=(n, len(covariates)))
        self.Z = np.column_stack([np.ones(n), self.x])  # random-effect columns (1, x...)
        self.params = np.concatenate([theta, beta])
        self.n_theta = theta.size
        self.n_beta = beta.size
        u = rng.normal(size=(n_groups, self.dim))
        lam = lambda_factor(theta, self.dim)
        eta = self.Z @ beta + np.sum(self.Z * (u @ lam.T)[self.g], axis=1)
        self.y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)

        frame = pd.DataFrame(self.x, columns=list(covariates))
        frame["y"] = self.y
        frame["g"] = [f"g{j:02d}" for j in self.g]
        rhs = " + ".join(covariates)
        design = build_design(f"y ~ {rhs} + (1 + {rhs} | g)", frame, require_random=True)
        assert design.terms[0].size == self.dim
        np.testing.assert_array_equal(design.X, self.Z)
        np.testing.assert_array_equal(design.terms[0].refs, self.g)
        self.structure = build_structure(design.terms, 0)
        self._compiled = eqx.filter_jit(self._both)

    def _both(self, params, data, v0, grid, log_w):
        lap = laplace_objective(params, data, v0, self.n_theta, self.n_beta)
        agq = agq_objective(params, data, v0, self.n_theta, self.n_beta, grid, log_w)
        return lap, agq

    def evaluate(self, params, n_nodes: int, weights=None) -> tuple[float, float]:
        weights = np.ones_like(self.y) if weights is None else weights
        grid, log_w = padded_grid(n_nodes, self.dim, self.n_max)
        with jax.enable_x64(True):
            data = GLMMData(self.structure, jnp.asarray(self.Z), jnp.zeros((self.y.size, 0)),
                            jnp.asarray(self.y), jnp.asarray(weights, dtype=float),
                            jnp.zeros(self.y.size), FAMILY)
            v0 = jnp.zeros(self.structure.n_levels[0] * self.dim)
            lap, agq = self._compiled(jnp.asarray(params), data, v0, jnp.asarray(grid),
                                      jnp.asarray(log_w))
            return float(lap), float(agq)

    def brute_force(self, params, weights=None, step: float = 0.05, half_width: float = 10.0,
                    chunk: int = 400_000) -> float:
        """−2 log ∫ Π_i p(y_i | u) φ(u) du summed over groups, by a Riemann sum."""
        weights = np.ones_like(self.y) if weights is None else weights
        theta, beta = params[: self.n_theta], params[self.n_theta :]
        lam = lambda_factor(theta, self.dim)
        axis = np.arange(-half_width, half_width + step / 2, step)
        u = np.stack(np.meshgrid(*[axis] * self.dim, indexing="ij"), axis=-1)
        u = u.reshape(-1, self.dim)
        log_prior = -0.5 * np.sum(u**2, axis=1) - 0.5 * self.dim * np.log(2 * np.pi)
        log_cell = self.dim * np.log(step)
        total = 0.0
        for j in np.unique(self.g):
            rows = (self.g == j) & (weights > 0)
            fixed = self.Z[rows] @ beta
            loadings = self.Z[rows] @ lam  # η = Xβ + z'Λu
            pieces = []
            for start in range(0, u.shape[0], chunk):
                eta = fixed[:, None] + loadings @ u[start : start + chunk].T
                ll = np.sum(self.y[rows, None] * eta - np.logaddexp(0.0, eta), axis=0)
                pieces.append(logsumexp(ll + log_prior[start : start + chunk]))
            total += -2.0 * (logsumexp(pieces) + log_cell)
        return total


def first_rows(problem: Problem, n_keep: int) -> np.ndarray:
    """Prior weights keeping the first ``n_keep`` observations of each group."""
    rank = np.arange(problem.g.size) - np.searchsorted(problem.g, problem.g)
    return (rank < n_keep).astype(float)


NODES = [1, 3, 5, 9, 15, 20]
CLUSTER_SIZES = [5, 20, 80, 320]
BRUTE_FORCE_SIZES = [5, 20, 80]


def make_two_dim() -> Problem:
    """(1 + x | g): 8 groups of 320 rows; sd(b0) = 1.2, sd(b1) = 0.8, corr 0.6."""
    return Problem(8, 320, ("x",), seed=20240611, theta=np.array([1.2, 0.48, 0.64]),
                   beta=np.array([-0.4, 0.7]), n_max=max(NODES))


def evaluate_all(problem: Problem) -> dict:
    """Laplace, AGQ for every node count, and the brute-force value, per cluster size."""
    out = {}
    for size in CLUSTER_SIZES:
        w = first_rows(problem, size)
        values = {n: problem.evaluate(problem.params, n, w) for n in NODES}
        exact = (problem.brute_force(problem.params, w, step=0.1)
                 if size in BRUTE_FORCE_SIZES else None)
        out[size] = dict(laplace=values[1][0], agq={n: v[1] for n, v in values.items()},
                         exact=exact)
    return out


@pytest.fixture(scope="module")
def two_dim():
    return make_two_dim()


@pytest.fixture(scope="module")
def two_dim_results(two_dim):
    """One compiled program serves all node counts and cluster sizes."""
    return evaluate_all(two_dim)


def test_brute_force_is_converged(two_dim):
    w = first_rows(two_dim, 5)
    fine = two_dim.brute_force(two_dim.params, w, step=0.05)
    coarse = two_dim.brute_force(two_dim.params, w, step=0.1)
    wider = two_dim.brute_force(two_dim.params, w, step=0.1, half_width=12.0)
    assert abs(fine - coarse) < 1e-9
    assert abs(wider - coarse) < 1e-9


@pytest.mark.parametrize("size", BRUTE_FORCE_SIZES)
def test_agq_matches_brute_force_2d(two_dim_results, size):
    r = two_dim_results[size]
    assert abs(r["agq"][20] - r["exact"]) < 1e-6
    assert abs(r["agq"][15] - r["exact"]) < 1e-5


def test_agq_converges_with_nodes_2d(two_dim_results):
    """|f(n) − exact| shrinks as the number of nodes grows (5 obs per group, the
    least Gaussian posterior)."""
    r = two_dim_results[5]
    errors = [abs(r["agq"][n] - r["exact"]) for n in NODES]
    for a, b in zip(errors, errors[1:]):
        assert b < a or b < 1e-8, errors
    assert errors[0] > 1e-3  # the Laplace error is visible at this cluster size
    assert errors[-1] < 1e-3 * errors[0]


def test_one_node_is_laplace_2d(two_dim_results):
    for size in CLUSTER_SIZES:
        r = two_dim_results[size]
        np.testing.assert_allclose(r["agq"][1], r["laplace"], rtol=1e-12)


def test_agq_approaches_laplace_with_cluster_size(two_dim_results):
    """The Laplace error shrinks as clusters grow (for large ones like 1/n: each
    group's posterior of u becomes Gaussian). For small clusters the N(0, I) prior
    keeps the posterior near Gaussian too, so the gap falls slowly at first."""
    gaps = [abs(two_dim_results[s]["agq"][20] - two_dim_results[s]["laplace"])
            for s in CLUSTER_SIZES]
    assert all(b < a for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.5 * gaps[-2] and gaps[-1] < 0.2 * gaps[0], gaps


def test_agq_matches_brute_force_3d():
    """(1 + x1 + x2 | g), S = 3: 4 groups of 5 observations, up to 15³ nodes."""
    problem = Problem(4, 5, ("x1", "x2"), seed=7, n_max=15,
                      theta=np.array([1.0, 0.3, -0.2, 0.6, 0.1, 0.5]),
                      beta=np.array([0.2, -0.5, 0.4]))
    exact = problem.brute_force(problem.params, step=0.25)
    values = {n: problem.evaluate(problem.params, n) for n in (1, 5, 9, 15)}
    errors = [abs(agq - exact) for _, agq in values.values()]
    assert errors[-1] < 1e-6, errors
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    np.testing.assert_allclose(values[1][1], values[1][0], rtol=1e-12)


@pytest.mark.slow
def test_glmer_agq5_random_slope():
    """End to end: glmer(n_agq=5) with (1 + x | g) converges, and each fit's criterion
    is at least as good as the other method's estimates under its own objective."""
    rng = np.random.default_rng(99)
    n_groups, n_per = 30, 6
    g = np.repeat(np.arange(n_groups), n_per)
    x = rng.normal(size=g.size)
    b = rng.normal(size=(n_groups, 2)) * [1.0, 0.5]
    eta = -0.3 + 0.8 * x + b[g, 0] + b[g, 1] * x
    frame = pd.DataFrame({"y": (rng.random(g.size) < 1 / (1 + np.exp(-eta))).astype(int),
                          "x": x, "g": [f"g{j:02d}" for j in g]})
    formula = "y ~ x + (1 + x | g)"
    agq = glmmjax.glmer(formula, frame, family="binomial", n_agq=5)
    lap = glmmjax.glmer(formula, frame, family="binomial")
    assert agq.method == "AGQ(5)" and agq.converged, agq.convergence
    assert lap.converged, lap.convergence
    np.testing.assert_allclose(agq.fixef, lap.fixef, atol=0.2 * lap.fixef_se.min())
    np.testing.assert_allclose(agq.fixef_se, lap.fixef_se, rtol=0.1)

    design = agq.design
    structure = build_structure(design.terms, 0)
    grid, log_w = gauss_hermite_grid(5, 2)
    with jax.enable_x64(True):
        data = GLMMData(structure, jnp.asarray(design.X), jnp.zeros((design.nobs, 0)),
                        jnp.asarray(agq.y), jnp.asarray(agq.prior_weights),
                        jnp.asarray(design.offset), agq.family)
        v0 = jnp.zeros(structure.n_levels[0] * 2)
        both = eqx.filter_jit(lambda p: (
            laplace_objective(p, data, v0, 3, 2), agq_objective(p, data, v0, 3, 2, grid, log_w)
        ))
        at_agq = [float(v) for v in both(jnp.asarray(np.r_[agq.theta_values, agq.beta]))]
        at_lap = [float(v) for v in both(jnp.asarray(np.r_[lap.theta_values, lap.beta]))]
    np.testing.assert_allclose(at_agq[1], agq.criterion, rtol=1e-10)
    np.testing.assert_allclose(at_lap[0], lap.criterion, rtol=1e-10)
    assert agq.criterion <= at_lap[1] + 1e-6
    assert lap.criterion <= at_agq[0] + 1e-6


def report(results: dict) -> str:  # pragma: no cover - used from __main__
    lines = []
    for size, r in results.items():
        exact = r["exact"]
        gap = abs(r["agq"][20] - r["laplace"])
        lines.append(f"cluster size {size}: Laplace {r['laplace']:.10f}, "
                     f"|AGQ(20) - Laplace| {gap:.3e}"
                     + ("" if exact is None else f", brute force {exact:.10f}"))
        for n, value in r["agq"].items():
            err = "" if exact is None else f"  |AGQ - brute force| {abs(value - exact):.3e}"
            lines.append(f"  n={n:2d}  AGQ {value:.10f}{err}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(report(evaluate_all(make_two_dim())))
