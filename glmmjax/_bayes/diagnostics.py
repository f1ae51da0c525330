"""MCMC diagnostics and predictive criteria, in numpy (no NumPyro needed).

* R̂: the rank-normalized split-R̂ of Vehtari, Gelman, Simpson, Carpenter & Bürkner
  (2021, *Bayesian Analysis* 16:667), the larger of the split-R̂ of the rank-normalized
  draws and of the rank-normalized folded draws |x − median|.
* Bulk ESS: effective sample size of the rank-normalized split chains; tail ESS: the
  smaller ESS of the indicators x ≤ q₅% and x ≤ q₉₅%. ESS follows Stan: autocorrelations
  pooled over chains, Geyer's initial positive then initial monotone sequence.
* WAIC (Watanabe 2010) and PSIS-LOO (Vehtari, Gelman & Gabry 2017; Pareto smoothing as
  in Vehtari, Simpson, Gelman, Yao & Gabry 2024, *JMLR* 25:72). The generalized Pareto
  fit is Zhang & Stephens' (2009) empirical Bayes estimate with the weakly informative
  adjustment of the shape toward 0.5 used by the ``loo`` R package. This is our own
  implementation (tested against ArviZ); it needs nothing beyond numpy and scipy.

Every function works on all parameters at once: draws are ``(chains, draws, K)``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
from scipy import special, stats

from .._stacklevel import external_stacklevel


class ParetoKWarning(UserWarning):
    """PSIS-LOO is unreliable for some observations (Pareto k̂ above the threshold)."""


def _as_3d(draws) -> np.ndarray:
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim == 2:
        draws = draws[..., None]
    if draws.ndim != 3:
        raise ValueError(f"draws must be (chains, draws) or (chains, draws, K), got {draws.shape}")
    return draws


def split_chains(draws: np.ndarray) -> np.ndarray:
    """(C, N, K) -> (2C, N//2, K): first and last halves of each chain (middle draw of an
    odd-length chain dropped)."""
    half = draws.shape[1] // 2
    return np.concatenate([draws[:, :half], draws[:, draws.shape[1] - half :]], axis=0)


def rank_normalize(draws: np.ndarray) -> np.ndarray:
    """Φ⁻¹((r − 3/8)/(S + 1/4)) of the pooled ranks r (ties averaged), per parameter."""
    c, n, k = draws.shape
    flat = draws.reshape(c * n, k)
    ranks = stats.rankdata(flat, method="average", axis=0)
    return special.ndtri((ranks - 0.375) / (c * n + 0.25)).reshape(c, n, k)


def _rhat_basic(draws: np.ndarray) -> np.ndarray:
    n = draws.shape[1]
    within = np.mean(np.var(draws, axis=1, ddof=1), axis=0)
    between = n * np.var(np.mean(draws, axis=1), axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((between / within + n - 1) / n)


def _autocovariance(draws: np.ndarray) -> np.ndarray:
    """Biased autocovariance (divided by N) along axis 1, by FFT."""
    n = draws.shape[1]
    centred = draws - draws.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(centred, n=size, axis=1)
    return np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=1)[:, :n] / n


def _ess_basic(draws: np.ndarray) -> np.ndarray:
    """Stan's ESS of (C, N, K) draws, vectorized over K."""
    c, n, k = draws.shape
    if n < 4:
        return np.full(k, np.nan)
    acov = _autocovariance(draws)
    mean_var = np.mean(acov[:, 0], axis=0) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if c > 1:
        var_plus = var_plus + np.var(np.mean(draws, axis=1), axis=0, ddof=1)
    constant = ~(var_plus > 0)
    var_plus = np.where(constant, 1.0, var_plus)
    rho = 1.0 - (mean_var - np.mean(acov, axis=0)) / var_plus  # (N, K)
    rho[0] = 1.0
    # Pairs of lags (2j, 2j + 1) while 2j < N − 2 (Stan's truncation).
    n_pairs = max(1, (n - 2 + 1) // 2)
    pairs = rho[0 : 2 * n_pairs : 2] + rho[1 : 2 * n_pairs : 2]  # (J, K)
    # Initial positive sequence: stop at the first pair (after the first) whose sum
    # is not positive; that pair's even lag is kept when positive (Geyer's improvement).
    failing = (pairs <= 0.0) & (np.arange(n_pairs)[:, None] >= 1)
    last = np.where(failing.any(axis=0), np.argmax(failing, axis=0), n_pairs - 1)  # (K,)
    monotone = np.minimum.accumulate(pairs, axis=0)
    keep = np.arange(n_pairs)[:, None] < last[None, :]
    tail = rho[2 * last, np.arange(k)]
    tau = -1.0 + 2.0 * np.sum(np.where(keep, monotone, 0.0), axis=0) + np.maximum(tail, 0.0)
    tau = np.maximum(tau, 1.0 / math.log10(c * n))
    ess = c * n / tau
    return np.where(constant, float(c * n), ess)


def rhat(draws) -> np.ndarray:
    """Rank-normalized split-R̂ per parameter; draws (C, N) or (C, N, K)."""
    split = split_chains(_as_3d(draws))
    bulk = _rhat_basic(rank_normalize(split))
    folded = np.abs(split - np.median(split.reshape(-1, split.shape[2]), axis=0))
    return np.fmax(bulk, _rhat_basic(rank_normalize(folded)))


def ess_bulk(draws) -> np.ndarray:
    """Bulk effective sample size per parameter; draws (C, N) or (C, N, K)."""
    return _ess_basic(rank_normalize(split_chains(_as_3d(draws))))


def ess_tail(draws) -> np.ndarray:
    """Tail effective sample size (min over the 5% and 95% quantile indicators)."""
    draws = _as_3d(draws)
    flat = draws.reshape(-1, draws.shape[2])
    out = []
    for q in (0.05, 0.95):
        indicator = (draws <= np.quantile(flat, q, axis=0)).astype(np.float64)
        out.append(_ess_basic(split_chains(indicator)))
    return np.fmin(out[0], out[1])


def summarize(draws, names, probs=(0.025, 0.975)) -> pd.DataFrame:
    """mean, sd, quantiles, R̂, bulk and tail ESS of (C, N, K) draws, one row per name."""
    draws = _as_3d(draws)
    flat = draws.reshape(-1, draws.shape[2])
    table = {"mean": flat.mean(axis=0), "sd": flat.std(axis=0, ddof=1)}
    quantiles = np.quantile(flat, probs, axis=0)
    for p, q in zip(probs, quantiles):
        table[f"q{100 * p:g}"] = q
    if draws.shape[0] >= 2:
        table["rhat"] = rhat(draws)
    else:
        table["rhat"] = np.full(draws.shape[2], np.nan)
    table["ess_bulk"] = ess_bulk(draws)
    table["ess_tail"] = ess_tail(draws)
    return pd.DataFrame(table, index=list(names))


# ---- PSIS ----------------------------------------------------------------------------
def _gpd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zhang–Stephens estimate of the generalized Pareto (k, σ) for each column of the
    ascending, non-negative exceedances x (M, n); k is shrunk toward 0.5 with weight 10
    observations (as the loo package does)."""
    m_obs = x.shape[0]
    m_grid = 30 + int(math.sqrt(m_obs))
    j = np.arange(1, m_grid + 1, dtype=np.float64)
    quartile = x[int(m_obs / 4 + 0.5) - 1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        theta = 1.0 / x[-1] + (1.0 - np.sqrt(m_grid / (j - 0.5)))[:, None] / (3.0 * quartile)
        k = np.mean(np.log1p(-theta[:, None, :] * x[None, :, :]), axis=1)  # (m_grid, n)
        profile = m_obs * (np.log(-theta / k) - k - 1.0)
        weights = special.softmax(np.where(np.isfinite(profile), profile, -np.inf), axis=0)
        theta_hat = np.sum(np.where(weights > 0, weights * theta, 0.0), axis=0)
        k_hat = np.mean(np.log1p(-theta_hat * x), axis=0)
        sigma = -k_hat / theta_hat
    k_hat = (m_obs * k_hat + 10 * 0.5) / (m_obs + 10)
    return k_hat, sigma


def _gpd_quantile(p: np.ndarray, k: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        small = np.abs(k) < 1e-12
        safe_k = np.where(small, 1.0, k)
        general = sigma * np.expm1(-safe_k * np.log1p(-p)) / safe_k
        return np.where(small, -sigma * np.log1p(-p), general)


def _smooth_tails(ordered: np.ndarray, tail_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Replace the top ``tail_len`` rows of the ascending columns ``ordered`` (log
    weights, max 0) by the quantiles of a generalized Pareto fit; returns them and k̂."""
    s = ordered.shape[0]
    cutoff = ordered[s - tail_len - 1]
    exceed = np.exp(ordered[s - tail_len :]) - np.exp(cutoff)
    k, sigma = _gpd_fit(exceed)
    probs = (np.arange(1, tail_len + 1) - 0.5) / tail_len
    smoothed = np.log(np.exp(cutoff) + _gpd_quantile(probs[:, None], k, sigma))
    smoothed = np.minimum(smoothed, 0.0)  # truncate at the largest raw weight
    fit_ok = np.isfinite(k) & np.all(np.isfinite(smoothed), axis=0)
    out = ordered.copy()
    out[s - tail_len :] = np.where(fit_ok, smoothed, ordered[s - tail_len :])
    return out, np.where(fit_ok, k, np.inf)


def psis(log_ratios, reff: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed importance sampling.

    The tail of each column is its draws above the ⌈min(S/5, 3·√(S/reff))⌉-th largest
    (fewer where draws tie with that cutoff, as ArviZ does); a tail of fewer than five
    draws is not smoothed (k̂ = inf).

    Args:
        log_ratios: (S, n) log importance ratios (for LOO: minus the pointwise
            log-likelihood), one column per observation.
        reff: relative efficiency of the draws (ESS / S).

    Returns:
        ``(log_weights, k_hat)``: normalized smoothed log-weights (S, n) and the Pareto
        shape estimate per observation.
    """
    log_ratios = np.asarray(log_ratios, dtype=np.float64)
    s, n = log_ratios.shape
    max_tail = int(math.ceil(min(0.2 * s, 3.0 * math.sqrt(s / reff))))
    lw = log_ratios - np.max(log_ratios, axis=0)
    order = np.argsort(lw, axis=0, kind="stable")
    ordered = np.take_along_axis(lw, order, axis=0)
    cutoff = np.maximum(ordered[max(s - max_tail - 1, 0)], np.log(np.finfo(float).tiny))
    tail_lengths = np.sum(ordered > cutoff, axis=0)
    k_hat = np.full(n, np.inf)
    # Columns are smoothed together, grouped by tail length (almost always one group).
    for length in np.unique(tail_lengths):
        if length < 5:
            continue
        cols = np.flatnonzero(tail_lengths == length)
        ordered[:, cols], k_hat[cols] = _smooth_tails(ordered[:, cols], int(length))
    np.put_along_axis(lw, order, ordered, axis=0)
    lw = lw - special.logsumexp(lw, axis=0)
    return lw, k_hat


@dataclasses.dataclass(frozen=True, repr=False)
class InformationCriterion:
    """Expected log pointwise predictive density (elpd) by WAIC or PSIS-LOO.

    Attributes:
        method: ``"waic"`` or ``"loo"``.
        elpd: Σᵢ elpdᵢ; ``se``: its standard error √(n·Var(elpdᵢ)).
        p: the effective number of parameters (p_waic or p_loo).
        pointwise: elpdᵢ per observation.
        pareto_k: k̂ per observation (LOO only); above ``k_threshold`` the importance
            sampling estimate for that observation is unreliable.
    """

    method: str
    elpd: float
    se: float
    p: float
    pointwise: np.ndarray
    pareto_k: np.ndarray | None = None
    k_threshold: float | None = None

    @property
    def ic(self) -> float:
        """On the deviance scale: −2·elpd (what R's ``loo``/``waic`` call looic/waic)."""
        return -2.0 * self.elpd

    def __repr__(self) -> str:
        # Short on purpose: `pointwise` and `pareto_k` hold one value per observation.
        return (f"<InformationCriterion {self.method}: elpd {self.elpd:.2f} (se {self.se:.2f}), "
                f"p {self.p:.2f}, n {np.size(self.pointwise)}>")

    def __str__(self) -> str:
        lines = [
            f"Computed from {self.method.upper()}",
            "        Estimate     SE",
            f"elpd_{self.method:<4} {self.elpd:9.2f} {self.se:6.2f}",
            f"p_{self.method:<7} {self.p:9.2f}",
            f"{self.method}{'ic' if self.method == 'loo' else ''}".ljust(12)
            + f"{self.ic:8.2f} {2 * self.se:6.2f}",
        ]
        if self.pareto_k is not None:
            bad = int(np.sum(self.pareto_k > self.k_threshold))
            lines.append(f"Pareto k > {self.k_threshold:.2f}: {bad} of {self.pareto_k.size}")
        return "\n".join(lines)


def waic(loglik) -> InformationCriterion:
    """WAIC from the pointwise log-likelihood (S, n): elpd = Σᵢ [log mean_s p(yᵢ|θ_s) −
    Var_s log p(yᵢ|θ_s)], the variance with S − 1 in the denominator as in the ``loo``
    R package (ArviZ divides by S)."""
    loglik = np.asarray(loglik, dtype=np.float64)
    s = loglik.shape[0]
    lppd = special.logsumexp(loglik, axis=0) - math.log(s)
    p_i = np.var(loglik, axis=0, ddof=1)
    elpd_i = lppd - p_i
    n = elpd_i.size
    if np.any(p_i > 0.4):
        warnings.warn(
            f"{int(np.sum(p_i > 0.4))} of {n} observations have a WAIC penalty above 0.4; "
            "WAIC may be unreliable, prefer loo()",
            ParetoKWarning,
            stacklevel=external_stacklevel(),
        )
    return InformationCriterion(
        "waic", float(elpd_i.sum()), float(math.sqrt(n * np.var(elpd_i))), float(p_i.sum()), elpd_i
    )


def relative_efficiency(loglik_by_chain) -> float:
    """Mean over observations of ESS(exp(log-lik))/S, for PSIS's tail length."""
    ll = np.asarray(loglik_by_chain, dtype=np.float64)
    c, n_draws = ll.shape[:2]
    shifted = np.exp(ll - ll.max(axis=(0, 1), keepdims=True))
    reff = _ess_basic(shifted.reshape(c, n_draws, -1)) / (c * n_draws)
    return float(np.clip(np.nanmean(reff), 0.01, 1.0))


def loo(loglik, reff: float = 1.0) -> InformationCriterion:
    """PSIS-LOO from the pointwise log-likelihood (S, n)."""
    loglik = np.asarray(loglik, dtype=np.float64)
    s = loglik.shape[0]
    lw, k_hat = psis(-loglik, reff=reff)
    elpd_i = special.logsumexp(lw + loglik, axis=0)
    lppd = special.logsumexp(loglik, axis=0) - math.log(s)
    n = elpd_i.size
    threshold = min(1.0 - 1.0 / math.log10(s), 0.7)
    bad = int(np.sum(k_hat > threshold))
    if bad:
        warnings.warn(
            f"{bad} of {n} observations have a Pareto k above {threshold:.2f}: PSIS-LOO is "
            "unreliable for them (influential observations or a misspecified model)",
            ParetoKWarning,
            stacklevel=external_stacklevel(),
        )
    return InformationCriterion(
        "loo",
        float(elpd_i.sum()),
        float(math.sqrt(n * np.var(elpd_i))),
        float(np.sum(lppd - elpd_i)),
        elpd_i,
        k_hat,
        threshold,
    )
