"""The host parts engine's numpy kernel (glmmjax._engines.host.parts_rows) against the JAX kernel it
replaces (autodiff of _families.response_parts.row_loglik to third order), for every built-in
family a zero-inflation, hurdle or dispersion model accepts."""

import jax
import numpy as np
import pytest

from glmmjax import families as F
from glmmjax._engines.host.parts import HostParts, _build_kernel
from glmmjax._engines.host.parts_rows import RowKernel, supported

N = 24
# (family, zero_inflated): every count family zero-inflated, every truncated family as a
# hurdle, every family with a dispersion with a dispersion model (zero_inflated=False),
# and some non-canonical links.
# Quick to compile the JAX reference for (the rest: slow; the mixture's algebra with a
# dispersion is also checked quickly, on a synthetic density, below).
FAST = {"poisson-log-zi", "truncated_poisson-log-zi", "Gamma-log-disp", "gaussian-identity-disp"}
CASES = [
    (F.Poisson(), True), (F.NegativeBinomial(), True), (F.NegativeBinomial1(), True),
    (F.GeneralizedPoisson(), True), (F.NegativeBinomial(link="sqrt"), True),
    (F.TruncatedPoisson(), True), (F.TruncatedNegativeBinomial2(), True),
    (F.TruncatedNegativeBinomial1(), True),
    (F.Gaussian(), False), (F.Gaussian(link="log"), False), (F.Gamma(link="log"), False),
    (F.Gamma(), False), (F.InverseGaussian(link="log"), False), (F.NegativeBinomial(), False),
    (F.NegativeBinomial1(), False), (F.GeneralizedPoisson(), False), (F.Beta(), False),
    (F.Beta(link="probit"), False), (F.BetaBinomial(), False), (F.LogNormal(), False),
    (F.StudentT(df=4.0), False), (F.Tweedie(power=1.6), False),
    (F.TruncatedNegativeBinomial2(), False), (F.Poisson(), False),
]


def _inputs(family, zero_inflated, seed=0):
    rng = np.random.default_rng(seed)
    name = type(family).__name__
    eta = 0.5 + 0.5 * rng.normal(size=N)
    w = rng.uniform(0.5, 2.0, size=N)
    if name in ("Gaussian", "StudentT"):
        y = rng.normal(2.0, 1.0, size=N)
        y = np.abs(y) + 0.1 if family.link.name == "log" else y
    elif name in ("Gamma", "InverseGaussian", "LogNormal", "Tweedie"):
        y = rng.gamma(2.0, size=N)
        if name == "Tweedie":
            y[:4] = 0.0
        if name == "Gamma" and family.link.name == "inverse":
            eta = np.abs(eta) + 0.2
    elif name == "Beta":
        y, eta = rng.uniform(0.05, 0.95, size=N), eta - 0.5
    elif name == "BetaBinomial":
        y, eta, w = rng.integers(0, 6, size=N) / 5.0, eta - 0.5, np.full(N, 5.0)
    else:
        y = rng.poisson(2.0, size=N).astype(float)
        y[:3] = 0.0
        if family.name.startswith("truncated") and not zero_inflated:
            y = np.maximum(y, 1.0)
        if family.link.name == "sqrt":
            eta = np.abs(eta) + 0.3
    zeta = rng.normal(size=N)
    # Extreme zero-inflation on some rows, and a zero row where f(0) is tiny (μ ≈ e⁴).
    zeta[:2] = (-25.0, 25.0)
    if zero_inflated and not family.name.startswith("truncated") and y[2] == 0:
        eta[2] = 4.0
    delta = 0.3 * rng.normal(size=N)
    if name == "GeneralizedPoisson":  # φ ≥ 1 keeps θ + λy > 0 on every row
        delta = np.abs(delta) + 0.1
    return y, w, eta, zeta, delta


def _case_id(family, zero_inflated):
    return f"{family.name}-{family.link.name}-{'zi' if zero_inflated else 'disp'}"


@pytest.mark.parametrize("family,zero_inflated", [
    pytest.param(f, z, id=_case_id(f, z),
                 marks=() if _case_id(f, z) in FAST else pytest.mark.slow)
    for f, z in CASES])
def test_numpy_kernel_equals_the_jax_kernel(family, zero_inflated):
    assert supported(family)
    args = _inputs(family, zero_inflated)
    _check(RowKernel(family, zero_inflated), _build_kernel(family, zero_inflated), args)


def _check(kernel, jax_kernel, args):
    with jax.enable_x64(True):
        expected = [np.asarray(a) for a in jax_kernel(*args)]
    got = kernel(*args)
    for name, a, b in zip(("loglik", "gradient", "hessian rows", "third"), got, expected):
        assert a.shape == b.shape, name
        assert np.all(np.isfinite(b)), name
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=name)
    # Without the third derivatives: the same first three outputs.
    short = kernel(*args, third=False)
    assert short[3] is None
    for a, b in zip(short[:3], got[:3]):
        np.testing.assert_array_equal(a, b)
    # The inner Newton steps' lean path: ℓ, G_η, G_ζ, W_ηη, W_ηζ, W_ζζ as the kernel's.
    ll, g, h, _ = got
    want = (ll, g[:, 0], g[:, 1], -h[:, 0, 0], -h[:, 0, 1], -h[:, 1, 1])
    for name, a, b in zip(("ll", "G_eta", "G_zeta", "W_ee", "W_ez", "W_zz"),
                          kernel.newton(*args), want):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13, err_msg=name)


class _Synthetic(F.Poisson):
    """A density with a dispersion whose derivatives are written out by hand,
    log f = −e^(η−δ) + η·δ/2 (whatever y), so the zero-inflation algebra with δ (in the
    slow cases: the negative binomials) has a reference that compiles quickly."""

    is_truncated = False
    zero_inflatable = True
    has_dispersion = True
    tmb_dispersion_power = 1.0

    def loglik_eta(self, y, eta, weights, dispersion=None):
        import jax.numpy as jnp

        delta = jnp.log(dispersion)
        return weights * (-jnp.exp(eta - delta) + 0.5 * eta * delta)


class _SyntheticKernel(RowKernel):
    def __init__(self):  # skip RowKernel's check of the family: the density is below
        self.family, self.zero_inflated, self.truncated = _Synthetic(), True, False
        self.power, self.has_dispersion, self.trials = 1.0, True, False

    def _density(self, y, inner, eta, delta):
        return self._log_density(y, inner, eta, delta, False)[:3]

    def _log_density(self, y, inner, eta, delta, third):
        e = np.exp(eta - delta)
        return (-e + 0.5 * eta * delta, -e + 0.5 * delta, -e, -e if third else None,
                e + 0.5 * eta, e + 0.5, e)


def test_zero_inflation_algebra_with_a_dispersion():
    args = _inputs(F.Poisson(), True, seed=3)
    _check(_SyntheticKernel(), _build_kernel(_Synthetic(), True), args)


def test_user_defined_family_keeps_the_jax_kernel():
    class MyPoisson(F.Poisson):
        pass

    family = MyPoisson()
    assert not supported(family)
    assert supported(F.Poisson())


def test_host_engine_uses_the_numpy_kernel_for_builtin_families():
    from glmmjax._engines.host.parts import _kernels

    assert isinstance(_kernels(F.NegativeBinomial(), True), RowKernel)
    assert not isinstance(_kernels(type("P", (F.Poisson,), {})(), True), RowKernel)
    assert HostParts  # imported for the engine's use of the same kernels


def _parts_data(family, zero_inflated, seed=0):
    from glmmjax._engines.parts_shared import DenseTerms, PartsData

    y, w, *_ = _inputs(family, zero_inflated, seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=N)
    levels = np.arange(N) % 4
    J = (levels[:, None] == np.arange(4)).astype(float)
    cond = DenseTerms((J,), (np.ones((N, 1)),), (1,), (4,))
    X = np.column_stack([np.ones(N), x])
    return PartsData(y=y, weights=w, X=X, offset=0.1 * x, X_zi=X[:, :1] if zero_inflated
                     else np.zeros((N, 0)), offset_zi=np.zeros(N), X_disp=X,
                     offset_disp=np.zeros(N), cond=cond, zi=DenseTerms((), (), (), ()),
                     family=family, zero_inflated=zero_inflated)


@pytest.mark.parametrize("family,zero_inflated", CASES,
                         ids=[_case_id(f, z) for f, z in CASES])
def test_numpy_start_values_equal_the_compiled_ones(family, zero_inflated):
    from glmmjax._engines.compiled.parts import start_params
    from glmmjax._engines.host.parts_rows import start_params as start_numpy

    data = _parts_data(family, zero_inflated)
    with jax.enable_x64(True), jax.disable_jit():
        expected = np.asarray(start_params(jax.tree_util.tree_map(jax.numpy.asarray, data)))
    got = start_numpy(data)
    assert np.all(np.isfinite(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore::glmmjax.SingularFitWarning")  # herd's SD is 0 here
def test_betabinomial_trials_enter_the_density():
    """A binomial-type family's weights are its trials: with dispformula='~1' the parts
    engine fits the same model as the plain betabinomial GLMM (it used to multiply a
    one-trial density by the trials)."""
    import glmmjax

    data = glmmjax.datasets.load("cbpp")
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    plain = glmmjax.glmer(formula, data, family="betabinomial")
    parts = glmmjax.glmer(formula, data, family="betabinomial", dispformula="~1")
    assert type(parts).__name__ == "GLMMPartsResult"
    np.testing.assert_allclose(parts.deviance, plain.deviance, rtol=1e-10)
    np.testing.assert_allclose(parts.fixef["cond"], plain.fixef, rtol=1e-6)
    np.testing.assert_allclose(np.exp(parts.fixef["disp"].iloc[0]), plain.dispersion,
                               rtol=1e-6)
    # Simulated successes out of each row's trials: proportions in steps of 1/size.
    sims = parts.simulate(3, seed=1).to_numpy() * data["size"].to_numpy()[:, None]
    np.testing.assert_allclose(sims, np.round(sims), atol=1e-9)
    assert sims.max() > 1


def test_user_defined_family_fits_through_the_jax_kernel():
    """A family the closed forms do not cover (here a subclass, the user's) goes through
    the compiled kernel and the compiled start values; it fits the same model as the
    built-in family through the numpy ones."""
    import glmmjax

    class MyPoisson(F.Poisson):
        pass

    data = glmmjax.datasets.load("salamanders").iloc[::4].reset_index(drop=True)
    fits = [glmmjax.glmer("count ~ mined + (1 | site)", data, family=family,
                          ziformula="~ mined") for family in (MyPoisson(), F.Poisson())]
    np.testing.assert_allclose(fits[0].criterion, fits[1].criterion, rtol=1e-10)
    np.testing.assert_allclose(fits[0].params, fits[1].params, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fits[0].params_cov, fits[1].params_cov, rtol=1e-4)
