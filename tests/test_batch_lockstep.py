"""The lockstep engine (glmmjax._batching.lockstep): fit_many on the CPU in float64 for
random slopes, dispersion families, crossed terms and zero-inflation / dispersion
models, all models in numpy at once. Each model of a batch equals its single fit
(issues 19 and 20); failures are flagged per model, none lost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import rel_close

import glmmjax
from glmmjax._batching import lockstep as ls
from glmmjax._batching.fit_many import _design_for, _lockstep_applies
from glmmjax._families.base import get_family


def assert_equals_alone(batch, k, alone, names=None):
    fixef = alone.fixef.to_numpy() if names is None else names[0]
    se = alone.fixef_se.to_numpy() if names is None else names[1]
    rel_close(batch.fixef.iloc[k].to_numpy(), fixef, 1e-6, atol=1e-7)
    rel_close(batch.fixef_se.iloc[k].to_numpy(), se, 1e-5)
    assert abs(batch.models["criterion"][k] - alone.criterion) <= 1e-8 * abs(alone.criterion)
    assert batch.models["converged"][k], batch.models["status"][k]


def slope_data(n_groups=8, per_group=8, k=3, seed=3):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per_group)
    x = rng.normal(size=g.size)
    b0, b1 = rng.normal(0, 0.5, (n_groups, k)), rng.normal(0, 0.3, (n_groups, k))
    mu = np.exp(1.0 + 0.4 * x[:, None] + b0[g] + b1[g] * x[:, None])
    size = rng.uniform(1.0, 5.0, k)
    Y = rng.poisson(rng.gamma(size, mu / size)).astype(float)
    return pd.DataFrame({"x": x, "g": pd.Categorical(g)}), Y


def test_nb2_random_slopes_equal_single_fits_with_missing_rows():
    data, Y = slope_data()
    Y[[3, 17, 40], 1] = np.nan  # model 1: three missing samples
    design = _design_for("~ x + (x | g)", data, None, None)
    assert _lockstep_applies(design, get_family("nbinom2"), 1, "float64")
    batch = glmmjax.fit_many("~ x + (x | g)", data, Y, family="nbinom2")
    for k in range(Y.shape[1]):
        keep = ~np.isnan(Y[:, k])
        alone = glmmjax.glmer("y ~ x + (x | g)", data[keep].assign(y=Y[keep, k]),
                              family="nbinom2")
        assert_equals_alone(batch, k, alone)
        rel_close(batch.models["dispersion"][k], alone.dispersion, 1e-5)


def test_crossed_logistic_equal_single_fits_and_a_separated_model_is_flagged():
    rng = np.random.default_rng(11)
    a, b = (x.ravel() for x in np.meshgrid(np.arange(8), np.arange(5), indexing="ij"))
    a, b = np.repeat(a, 2), np.repeat(b, 2)
    x = rng.normal(size=a.size)
    data = pd.DataFrame({"x": x, "a": pd.Categorical(a), "b": pd.Categorical(b)})
    eta = -0.3 + 0.6 * x[:, None] + rng.normal(0, 0.9, (8, 2))[a] + rng.normal(0, 0.6, (5, 2))[b]
    Y = (rng.uniform(size=eta.shape) < 1 / (1 + np.exp(-eta))).astype(float)
    # A third model completely separated by x: flagged, and no harm to the others.
    Y = np.column_stack([Y, (x > 0).astype(float)])
    batch = glmmjax.fit_many("~ x + (1 | a) + (1 | b)", data, Y, family="binomial")
    assert len(batch) == 3
    assert not batch.converged[2] and batch.models["status"][2] != "converged"
    for k in range(2):
        alone = glmmjax.glmer("y ~ x + (1 | a) + (1 | b)", data.assign(y=Y[:, k]),
                              family="binomial")
        assert_equals_alone(batch, k, alone)


def test_zero_inflated_negative_binomial_with_a_dispersion_model_equals_single_fits():
    rng = np.random.default_rng(6)
    data = glmmjax.datasets.load("salamanders").iloc[::4].reset_index(drop=True)
    sites = data["site"].cat.codes.to_numpy()
    mined = (data["mined"] == "no").to_numpy(float)
    Y = []
    for _ in range(2):
        b = rng.normal(0, 0.4, sites.max() + 1)
        mu = np.exp(0.8 + 0.8 * mined + b[sites])
        size = np.exp(1.0 + 0.5 * mined)
        zero = rng.random(len(data)) < 1 / (1 + np.exp(-(0.0 - 1.0 * mined)))
        Y.append(np.where(zero, 0, rng.poisson(rng.gamma(size, mu / size))))
    Y = np.column_stack(Y).astype(float)
    batch = glmmjax.fit_many("~ mined + (1 | site)", data, Y, family="nbinom2",
                             ziformula="~ mined", dispformula="~ mined")
    assert list(batch.fixef.columns)[-2:] == ["d~Intercept", "d~mined[T.no]"]
    for k in range(2):
        fit = glmmjax.glmer("y ~ mined + (1 | site)", data.assign(y=Y[:, k]),
                            family="nbinom2", ziformula="~ mined", dispformula="~ mined")
        want = np.concatenate([fit.fixef["cond"], fit.fixef["zi"], fit.fixef["disp"]])
        want_se = np.concatenate([fit.fixef_se["cond"], fit.fixef_se["zi"],
                                  fit.fixef_se["disp"]])
        rel_close(batch.fixef.iloc[k].to_numpy(), want, 1e-6, atol=1e-7)
        rel_close(batch.fixef_se.iloc[k].to_numpy(), want_se, 1e-4)
        assert batch.models["criterion"][k] <= fit.criterion * (1 + 1e-10)
        assert abs(batch.models["criterion"][k] - fit.criterion) <= 1e-8 * fit.criterion
        assert batch.converged[k]


@pytest.mark.parametrize("case", ["nb2-slope", "zinb-disp", "crossed-binomial"])
def test_exact_gradient_matches_differences_of_the_criterion(case):
    data, Y = slope_data(n_groups=5, per_group=6, k=2, seed=8)
    n = len(data)
    rng = np.random.default_rng(2)
    if case == "crossed-binomial":
        data = data.assign(h=pd.Categorical(rng.integers(0, 4, n)))
        design = _design_for("~ x + (1 | g) + (1 | h)", data, None, None)
        family = get_family("binomial")
        models = ls.glmm_models(design, family, (Y > 2).astype(float), np.ones_like(Y))
        psi = np.array([[0.8, 0.5, -0.2, 0.4], [1.1, 0.3, 0.1, -0.3]])
    elif case == "nb2-slope":
        design = _design_for("~ x + (x | g)", data, None, None)
        family = get_family("nbinom2")
        models = ls.glmm_models(design, family, Y, np.ones_like(Y))
        psi = np.array([[0.5, 0.1, 0.3, 1.0, 0.4, 0.7], [0.3, -0.2, 0.2, 0.9, 0.3, 1.5]])
    else:
        from glmmjax._model.parts_design import build_parts

        family = get_family("nbinom2")
        frame = data.assign(y=Y[:, 0])
        parts = build_parts("y ~ x + (x | g)", frame, family, "x", "x")
        d = parts.cond
        rows = ls.RowModel(family, True, True)
        models = ls.LockstepModels(d.X, d.offset, d.terms, Y, np.ones_like(Y), rows,
                                   X_zi=parts.zi.X, offset_zi=parts.zi.offset,
                                   X_d=parts.disp.X, offset_d=parts.disp.offset)
        psi = np.array([[0.5, 0.1, 0.3, 1.0, 0.4, -0.5, 0.3, 0.7, 0.2],
                        [0.3, -0.2, 0.2, 0.9, 0.3, -1.0, -0.2, 1.2, -0.1]])
    idx = np.arange(2)
    u0 = np.zeros((2, models.layout.width))
    out = models.evaluate(idx, psi, u0)
    for j in range(psi.shape[1]):
        h = 1e-5
        up, down = psi.copy(), psi.copy()
        up[:, j] += h
        down[:, j] -= h
        numeric = (models.evaluate(idx, up, out["u"], gradient=False)["value"]
                   - models.evaluate(idx, down, out["u"], gradient=False)["value"]) / (2 * h)
        np.testing.assert_allclose(out["grad"][:, j], numeric, rtol=1e-6, atol=1e-6)


def test_small_blocks_factor_as_lapack():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 3, 3, 3))
    H = A @ np.swapaxes(A, -1, -2) + 0.5 * np.eye(3)
    logdet, inverse, ok = ls._factor(H)
    assert ok.all()
    np.testing.assert_allclose(logdet, np.linalg.slogdet(H)[1], rtol=1e-12)
    np.testing.assert_allclose(inverse, np.linalg.inv(H), rtol=1e-10, atol=1e-12)
    H[1, 2, 0, 0] = -1.0  # not positive definite: flagged
    assert not ls._factor(H)[2][1, 2] and ls._factor(H)[2][0].all()
    # The Schur-complement route (a diagonal leading block) agrees with LAPACK.
    D = rng.uniform(1.0, 3.0, (2, 1, 7))
    C = rng.normal(size=(2, 1, 7, 5))
    B = rng.normal(size=(2, 1, 5, 5))
    E = np.swapaxes(C, -1, -2) @ (C / D[..., None]) + B @ np.swapaxes(B, -1, -2) + np.eye(5)
    M = np.concatenate([np.concatenate([D[..., None] * np.eye(7), C], -1),
                        np.concatenate([np.swapaxes(C, -1, -2), E], -1)], -2)
    F = ls._Schur(D[:, 0], C[:, 0], E[:, 0])
    assert F.ok.all()
    np.testing.assert_allclose(F.logdet, np.linalg.slogdet(M[:, 0])[1], rtol=1e-12)
    inverse = np.linalg.inv(M[:, 0])
    v = rng.normal(size=(2, 12))
    np.testing.assert_allclose(F.solve(v), np.einsum("kij,kj->ki", inverse, v), rtol=1e-10)
    np.testing.assert_allclose(F.diag_top, np.diagonal(inverse[:, :7, :7], axis1=1, axis2=2),
                               rtol=1e-10)
    np.testing.assert_allclose(-F.M, inverse[:, :7, 7:], rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(F.S_inv, inverse[:, 7:, 7:], rtol=1e-10)
    light = ls._Schur(D[:, 0], C[:, 0], E[:, 0], light=True)  # solves only
    assert light.ok.all()
    np.testing.assert_allclose(light.solve(v), F.solve(v), rtol=1e-10)
    many = rng.normal(size=(3, 2, 12))  # several right-hand sides per model at once
    np.testing.assert_allclose(F.solve(many), np.einsum("kij,pkj->pki", inverse, many),
                               rtol=1e-10)


@pytest.mark.parametrize("family, zero_inflated, dispersion", [
    ("poisson", True, False), ("nbinom2", False, True), ("binomial", False, False),
    ("poisson", False, False)])
def test_closed_form_rows_equal_the_general_kernels(family, zero_inflated, dispersion):
    # The specialized row terms (ZIP, NB2-log, binomial-logit, Poisson-log) against
    # glmmjax._engines.host.parts_rows.RowKernel / glmmjax._families.math.row_terms.
    from glmmjax._engines.host.parts_rows import RowKernel

    fam = get_family(family)
    rng = np.random.default_rng(1)
    k, n = 3, 7
    eta, zeta = rng.normal(0, 1, (k, n)), rng.normal(0, 1.5, (k, n))
    delta = rng.normal(0.5, 0.5, (k, 1))
    y = (rng.uniform(size=(k, n)) < 0.5).astype(float) if family == "binomial" else \
        np.where(rng.uniform(size=(k, n)) < 0.3, 0.0, rng.poisson(3.0, (k, n))).astype(float)
    w = rng.uniform(0.5, 2.0, (k, n))
    fast = ls.RowModel(fam, zero_inflated, dispersion)
    assert fast.fast is not None
    got = fast(y, w, eta, zeta if zero_inflated else None, delta if dispersion else None,
               third=True)
    ll, g, h, t = RowKernel(fam, zero_inflated)(
        y.ravel(), w.ravel(), eta.ravel(), zeta.ravel(),
        np.broadcast_to(delta, (k, n)).ravel() if dispersion else np.zeros(k * n))
    want = dict(ll=ll, g_e=g[:, 0], W=-h[:, 0, 0], W_e=-t[:, 0, 0, 0])
    if zero_inflated:
        want.update(g_z=g[:, 1], h_ez=h[:, 0, 1], W_z=-t[:, 0, 0, 1])
    if dispersion:
        want.update(g_d=g[:, 2], h_ed=h[:, 0, 2], W_d=-t[:, 0, 0, 2])
    for key, value in want.items():
        have = np.broadcast_to(got[key], (k, n))
        if key == "ll":  # the closed forms leave out terms free of the parameters
            have = have.sum(axis=1) + fast.constant(y, w)
            value = value.reshape(k, n).sum(axis=1)
        np.testing.assert_allclose(have, np.reshape(value, have.shape), rtol=1e-10,
                                   atol=1e-12, err_msg=key)


def test_gamma_random_intercepts_through_the_general_row_terms_equal_single_fits():
    # A dispersion family without a specialized closed form (glmmjax._families.math).
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(8), 6)
    x = rng.normal(size=48)
    data = pd.DataFrame({"x": x, "g": pd.Categorical(g)})
    Y = rng.gamma(4.0, np.exp(1 + 0.3 * x[:, None] + rng.normal(0, 0.4, (8, 2))[g]) / 4.0)
    assert ls.RowModel(get_family("Gamma"), False, True).fast is None
    batch = glmmjax.fit_many("~ x + (1 | g)", data, Y, family="Gamma")
    for k in range(2):
        alone = glmmjax.glmer("y ~ x + (1 | g)", data.assign(y=Y[:, k]), family="Gamma")
        assert_equals_alone(batch, k, alone)
        rel_close(batch.models["dispersion"][k], alone.dispersion, 1e-6)


def _agq_data(seed=11):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(12), 8)
    x = rng.normal(size=g.size)
    data = pd.DataFrame({"x": x, "g": pd.Categorical(g)})
    eta = 0.2 + 0.6 * x + rng.normal(0, 0.8, 12)[g]
    Y = np.column_stack([
        (rng.uniform(size=(g.size, 2)) < 1 / (1 + np.exp(-eta[:, None]))).astype(float),
        rng.poisson(np.exp(eta)[:, None], (g.size, 2)).astype(float)])
    return data, Y


@pytest.mark.parametrize("family, n_agq, missing", [
    ("binomial", 5, False),
    # (slow: the single fits of two row counts compile two programs, ~15 s)
    pytest.param("poisson", 3, True, marks=pytest.mark.slow)])
def test_agq_one_scalar_term_equals_single_glmer_fits(family, n_agq, missing):
    # glmer's nAGQ > 1 in the lockstep engine (nothing compiled): each model equals its
    # single glmer(n_agq=k) fit (checked against lme4 in tests/test_glmm.py); with
    # ``missing``, a model with missing responses on its observed rows.
    data, Y = _agq_data()
    Y = Y[:, :2] if family == "binomial" else Y[:, 2:]
    if missing:
        Y[[3, 40], 1] = np.nan
    design = _design_for("~ x + (1 | g)", data, None, None)
    assert _lockstep_applies(design, get_family(family), n_agq, "float64")
    batch = glmmjax.fit_many("~ x + (1 | g)", data, Y, family=family, n_agq=n_agq)
    assert batch.method == f"AGQ({n_agq})"
    laplace = glmmjax.fit_many("~ x + (1 | g)", data, Y, family=family)
    for k in range(2):
        rows = np.isfinite(Y[:, k])
        alone = glmmjax.glmer("y ~ x + (1 | g)", data.assign(y=Y[:, k])[rows], family=family,
                              n_agq=n_agq)
        assert_equals_alone(batch, k, alone)
        rel_close(batch.theta[k], alone.theta_values, 1e-5)
        # the quadrature changes the criterion (it is not the Laplace fit's)
        assert abs(laplace.models["criterion"][k] - batch.models["criterion"][k]) > 1e-6


def _nb2_agq_data(seed=12, k=2):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(12), 8)
    x = rng.normal(size=g.size)
    data = pd.DataFrame({"x": x, "g": pd.Categorical(g)})
    mu = np.exp(1.0 + 0.5 * x[:, None] + rng.normal(0, 0.7, (12, k))[g])
    size = np.array([1.5, 4.0])[:k]
    return data, rng.poisson(rng.gamma(size, mu / size)).astype(float)


@pytest.mark.slow  # ~15-40 s: the single NB2 AGQ fits compile (the gradient test below is fast)
def test_agq_with_a_dispersion_equals_single_glmer_fits():
    # NB2 with nAGQ = 5 in the lockstep engine: the dispersion's node terms and its
    # derivative of H enter the quadrature and its exact gradient; each model equals its
    # single glmer(family="nbinom2", n_agq=5) fit.
    data, Y = _nb2_agq_data()
    design = _design_for("~ x + (1 | g)", data, None, None)
    assert _lockstep_applies(design, get_family("nbinom2"), 5, "float64")
    batch = glmmjax.fit_many("~ x + (1 | g)", data, Y, family="nbinom2", n_agq=5)
    assert batch.method == "AGQ(5)"
    laplace = glmmjax.fit_many("~ x + (1 | g)", data, Y, family="nbinom2")
    for k in range(2):
        assert abs(laplace.models["criterion"][k] - batch.models["criterion"][k]) > 1e-6
        alone = glmmjax.glmer("y ~ x + (1 | g)", data.assign(y=Y[:, k]), family="nbinom2",
                              n_agq=5)
        assert_equals_alone(batch, k, alone)
        rel_close(batch.theta[k], alone.theta_values, 1e-5)
        rel_close(batch.models["dispersion"][k], alone.dispersion, 1e-5)


@pytest.mark.parametrize("family", ["binomial", "nbinom2"])
def test_agq_gradient_matches_differences_of_the_criterion(family):
    if family == "binomial":
        data, Y = _agq_data()
        Y = Y[:, :2]
        psi = np.array([[0.8, 0.1, 0.5], [1.3, -0.4, 0.9]])
    else:  # the last parameter: the log dispersion
        data, Y = _nb2_agq_data()
        psi = np.array([[0.7, 1.0, 0.4, 0.3], [0.5, 0.8, 0.6, 1.4]])
    design = _design_for("~ x + (1 | g)", data, None, None)
    models = ls.glmm_models(design, get_family(family), Y, np.ones((len(Y), 2)))
    models.n_agq = 7
    idx = np.arange(2)
    at = models.evaluate(idx, psi, np.zeros((2, 12)))
    numeric = np.empty_like(psi)
    for j in range(psi.shape[1]):
        step = np.zeros_like(psi)
        step[:, j] = 1e-5
        up = models.evaluate(idx, psi + step, at["u"], gradient=False)["value"]
        down = models.evaluate(idx, psi - step, at["u"], gradient=False)["value"]
        numeric[:, j] = (up - down) / 2e-5
    rel_close(at["grad"], numeric, 1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["crossed-logistic", "nested-poisson-offset",
                                  "scalar-slope-logistic", "vector-poisson"])
def test_exact_hessian_matches_differences_of_the_gradient(case):
    # The Laplace criterion's exact Hessian in θ and β (binomial logit, Poisson log)
    # against central differences of the exact gradient, on small seeded models.
    rng = np.random.default_rng(19)
    n = 60
    g = np.repeat(np.arange(10), 6)
    data = pd.DataFrame({"x": rng.normal(size=n), "g": pd.Categorical(g),
                         "h": pd.Categorical(rng.integers(0, 4, n)),
                         "sub": pd.Categorical(g * 3 + rng.integers(0, 3, n)),
                         "off": rng.normal(0, 0.3, n)})
    formula, family = {
        "crossed-logistic": ("~ x + (1 | g) + (1 | h)", "binomial"),
        "nested-poisson-offset": ("~ x + (1 | g) + (1 | sub) + offset(off)", "poisson"),
        "scalar-slope-logistic": ("~ x + (1 | g) + (0 + x | h)", "binomial"),
        "vector-poisson": ("~ x + (x | g)", "poisson"),
    }[case]
    Y = ((rng.uniform(size=(n, 2)) < 0.5) if family == "binomial"
         else rng.poisson(2.0, (n, 2))).astype(float)
    design = _design_for(formula, data, None, None)
    models = ls.glmm_models(design, get_family(family), Y, np.ones_like(Y))
    assert models.exact_hessian
    n_theta = models.layout.n_theta
    psi = np.column_stack([rng.uniform(0.3, 1.0, (2, n_theta)),
                           rng.normal(0, 0.4, (2, models.P - n_theta))])
    idx = np.arange(2)
    out = models.evaluate(idx, psi, np.zeros((2, models.layout.width)), hessian=True)
    numeric = np.empty_like(out["hess"])
    for j in range(models.P):
        h = 1e-5
        up, down = psi.copy(), psi.copy()
        up[:, j] += h
        down[:, j] -= h
        numeric[:, :, j] = (models.evaluate(idx, up, out["u"])["grad"]
                            - models.evaluate(idx, down, out["u"])["grad"]) / (2 * h)
    np.testing.assert_allclose(out["hess"], numeric, rtol=1e-6,
                               atol=1e-6 * np.max(np.abs(numeric)))


def test_nested_poisson_with_an_offset_equals_single_fits():
    # Two scalar terms (nested) and an offset, fitted by Newton's method with the exact
    # Hessian: each model equals its single fit (estimates, SEs, criterion).
    rng = np.random.default_rng(21)
    g = np.repeat(np.arange(8), 8)
    sub = g * 2 + rng.integers(0, 2, g.size)
    x = rng.normal(size=g.size)
    off = rng.normal(0, 0.3, g.size)
    data = pd.DataFrame({"x": x, "g": pd.Categorical(g), "sub": pd.Categorical(sub),
                         "off": off})
    eta = (0.5 + 0.3 * x + off)[:, None] + rng.normal(0, 0.5, (8, 2))[g] \
        + rng.normal(0, 0.3, (16, 2))[sub]
    Y = rng.poisson(np.exp(eta)).astype(float)
    formula = "~ x + (1 | g) + (1 | sub) + offset(off)"
    design = _design_for(formula, data, None, None)
    assert _lockstep_applies(design, get_family("poisson"), 1, "float64")
    batch = glmmjax.fit_many(formula, data, Y, family="poisson")
    for k in range(2):
        alone = glmmjax.glmer("y " + formula, data.assign(y=Y[:, k]), family="poisson")
        assert_equals_alone(batch, k, alone)


def test_exact_hessian_kept_between_refreshes_gives_the_same_fits(monkeypatch):
    # EXACT_EVERY off: the exact Hessian only where a difference Hessian would be
    # refreshed (chord / BFGS steps between) and at the returned point: same optima.
    rng = np.random.default_rng(5)
    a, b = (x.ravel() for x in np.meshgrid(np.arange(10), np.arange(6), indexing="ij"))
    x = rng.normal(size=a.size)
    data = pd.DataFrame({"x": x, "a": pd.Categorical(a), "b": pd.Categorical(b)})
    eta = 0.2 + 0.5 * x[:, None] + rng.normal(0, 0.8, (10, 3))[a] + rng.normal(0, 0.5, (6, 3))[b]
    Y = (rng.uniform(size=eta.shape) < 1 / (1 + np.exp(-eta))).astype(float)
    design = _design_for("~ x + (1 | a) + (1 | b)", data, None, None)
    family = get_family("binomial")
    every = ls.fit_glmm_many(design, family, Y, np.ones_like(Y))
    monkeypatch.setattr(ls, "EXACT_EVERY", False)
    kept = ls.fit_glmm_many(design, family, Y, np.ones_like(Y))
    assert np.all(kept["status"] == 0) and np.all(every["status"] == 0)
    rel_close(kept["params"], every["params"], 1e-6, atol=1e-7)
    rel_close(kept["value"], every["value"], 1e-10)
    rel_close(np.sqrt(np.diagonal(kept["beta_cov"], axis1=1, axis2=2)),
              np.sqrt(np.diagonal(every["beta_cov"], axis1=1, axis2=2)), 1e-5)
