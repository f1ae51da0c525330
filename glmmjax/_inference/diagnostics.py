"""Residuals of mixed models and simulation-based (DHARMa-style) scaled residuals.

Classical residuals (``response``, ``pearson``, ``deviance``, ``working``) are
conditional on the modes of the random effects. Their distribution is hard to judge
for GLMMs, which is why DHARMa (Hartig) simulates instead: for each observation the
scaled residual is the position of the observed y within responses simulated from the
fitted model, i.e. the empirical CDF of the simulations at y (a probability integral
transform). For discrete responses it is randomized between F(y−) and F(y), so that
under a correct model the scaled residuals are uniform on (0, 1) whatever the family.
Tests on them: uniformity (Kolmogorov–Smirnov), dispersion (the spread of y around the
fitted values against the same spread for the simulations) and zero inflation (the
number of zeros against the simulated numbers).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .._lazyjax import jax, jnp

RESIDUAL_TYPES = ("response", "pearson", "deviance", "working")
_DISCRETE = ("binomial", "poisson", "negative_binomial", "Negative Binomial")


def residuals(result, type: str = "response") -> np.ndarray:  # noqa: A002 (R's argument)
    """Conditional residuals of a mixed model.

    * ``response``: y − μ̂;
    * ``pearson``: (y − μ̂)/√(φ·V(μ̂)/w) (for LMMs (y − μ̂)·√w/σ̂);
    * ``deviance``: sign(y − μ̂)·√(w·d(y, μ̂)) with the family's unit deviance d
      (for LMMs (y − μ̂)·√w);
    * ``working``: (y − μ̂)·dη/dμ at μ̂ (for LMMs, the response residuals).
    """
    if type not in RESIDUAL_TYPES:
        raise ValueError(f"type must be one of {RESIDUAL_TYPES}, got {type!r}")
    y = result.observed_response()
    mu = result.fitted().to_numpy()
    resid = y - mu
    if type == "response":
        return resid
    if type == "pearson":
        return resid / result._pearson_sd()
    lmm = result.family_name == "gaussian" and result.scale is not None
    if lmm:
        return resid * np.sqrt(result.design.weights) if type == "deviance" else resid
    family = result.family
    eta = result.fitted(type="link").to_numpy()
    from .._engines.host import glm as host_glm  # (scipy.special: imported when used)

    numpy_values = host_glm.numpy_residuals(family, type, y, mu, eta, result.prior_weights,
                                    result.dispersion)
    if numpy_values is not None:
        return numpy_values
    with jax.enable_x64(True):
        if type == "deviance":
            disp = None if result.dispersion is None else jnp.asarray(result.dispersion)
            out = family.deviance_residuals(
                jnp.asarray(y), jnp.asarray(mu), jnp.asarray(result.prior_weights), disp
            )
        else:
            out = jnp.asarray(resid) / family.link.mu_eta(jnp.asarray(eta))
        return np.asarray(out)


@dataclasses.dataclass(frozen=True)
class TestResult:
    """A test on scaled residuals: statistic, p-value and what was tested."""

    statistic: float
    p_value: float
    method: str
    alternative: str

    def __str__(self) -> str:
        return f"{self.method}: statistic = {self.statistic:.4g}, p-value = {self.p_value:.4g} ({self.alternative})"


def _simulation_p(observed: float, simulated: np.ndarray, alternative: str) -> float:
    greater = np.mean(simulated >= observed)
    less = np.mean(simulated <= observed)
    if alternative == "greater":
        return float(greater)
    if alternative == "less":
        return float(less)
    if alternative == "two-sided":
        return float(min(1.0, 2.0 * min(greater, less)))
    raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")


def pit_residuals(y, simulated, integer: bool, rng) -> np.ndarray:
    """Scaled residuals: the empirical CDF of each row of ``simulated`` (n, n_sim) at y,
    randomized uniformly between F(y−) and F(y) (ties, discrete responses)."""
    y = np.asarray(y, dtype=float)[:, None]
    simulated = np.asarray(simulated, dtype=float)
    tol = 1e-9 * np.maximum(1.0, np.abs(y)) if integer else 0.0
    below = np.mean(simulated < y - tol, axis=1)
    at_or_below = np.mean(simulated <= y + tol, axis=1)
    u = rng.uniform(size=y.shape[0])
    return below + u * (at_or_below - below)


@dataclasses.dataclass(frozen=True, eq=False)
class ScaledResiduals:
    """Simulation-based scaled residuals of a fit (DHARMa's ``simulateResiduals``).

    Attributes:
        residuals: (n,) scaled residuals in [0, 1], uniform under a correct model.
        simulated: (n, n_sim) simulated responses.
        observed: (n,) observed responses; ``fitted``: (n,) fitted means (population
            level when the simulations drew new random effects).
        integer: whether the response was treated as discrete (randomized PIT).
        index: the data's row labels.
    """

    residuals: np.ndarray
    simulated: np.ndarray
    observed: np.ndarray
    fitted: np.ndarray
    integer: bool
    index: pd.Index
    include_re: bool

    @property
    def n_sim(self) -> int:
        return self.simulated.shape[1]

    def as_series(self) -> pd.Series:
        return pd.Series(self.residuals, index=self.index, name="scaled_residuals")

    def test_uniformity(self) -> TestResult:
        """Kolmogorov–Smirnov test of the scaled residuals against U(0, 1)."""
        from scipy import stats

        ks = stats.kstest(self.residuals, "uniform")
        return TestResult(float(ks.statistic), float(ks.pvalue),
                          "Kolmogorov-Smirnov test of uniformity", "two-sided")

    def test_dispersion(self, alternative: str = "two-sided") -> TestResult:
        """Spread of y around the fitted values against the same for the simulations.

        The statistic is sd(y − μ̂) / mean_j sd(y*_j − μ̂); the p-value is the share of
        simulations at least as extreme (DHARMa's default dispersion test).
        """
        observed = np.std(self.observed - self.fitted, ddof=1)
        simulated = np.std(self.simulated - self.fitted[:, None], axis=0, ddof=1)
        return TestResult(
            float(observed / np.mean(simulated)),
            _simulation_p(observed, simulated, alternative),
            "simulation test of dispersion (ratio of observed to simulated spread)",
            alternative,
        )

    def test_zero_inflation(self, alternative: str = "two-sided") -> TestResult:
        """Number of zeros in y against the numbers of zeros in the simulations."""
        observed = float(np.sum(self.observed == 0))
        simulated = np.sum(self.simulated == 0, axis=0).astype(float)
        mean = np.mean(simulated)
        ratio = observed / mean if mean > 0 else (np.inf if observed > 0 else 1.0)
        return TestResult(
            float(ratio),
            _simulation_p(observed, simulated, alternative),
            "simulation test of zero inflation (ratio of observed to simulated zeros)",
            alternative,
        )

    def plot_qq(self, ax=None):
        """Uniform QQ plot of the scaled residuals, with the KS test's p-value."""
        from .._results.plots import plot_scaled_qq

        return plot_scaled_qq(self, ax=ax)

    def __repr__(self) -> str:
        return f"<ScaledResiduals n={self.residuals.size} n_sim={self.n_sim}>"


def scaled_residuals(
    result, n_sim: int = 250, seed: int | None = None, *, include_re: bool = False,
    integer: bool | None = None,
) -> ScaledResiduals:
    """Simulate ``n_sim`` responses from the fit and compute scaled residuals.

    Args:
        n_sim: number of simulations (DHARMa's default 250).
        seed: integer seed for the simulations and the randomization.
        include_re: simulate conditional on the fitted random effects (True), or with
            new random effects each time (False, DHARMa's default for lme4 models).
        integer: treat the response as discrete (default: by family: binomial,
            Poisson and negative binomial are discrete).
    """
    from .simulate import simulate

    rng = np.random.default_rng(seed)
    sim_seed = int(rng.integers(0, 2**31 - 1))
    if hasattr(result, "_simulate_array"):  # models with ziformula/dispformula
        sims = result._simulate_array(n_sim, include_re, sim_seed)
    else:
        sims = simulate(result, n_sim, include_re=include_re, seed=sim_seed, as_array=True)
    if integer is None:
        integer = result.family_name in _DISCRETE
    y = result.observed_response()
    resid = pit_residuals(y, sims, integer, rng)
    return ScaledResiduals(
        residuals=resid,
        simulated=sims,
        observed=np.asarray(y, dtype=float),
        # The simulations' own conditioning: population-level means for unconditional
        # simulations (as DHARMa for lme4 models), conditional ones otherwise.
        fitted=(result.fitted() if include_re else result.predict(include_re=False)).to_numpy(),
        integer=bool(integer),
        index=result.design.rows,
        include_re=include_re,
    )
