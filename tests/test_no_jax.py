"""A single CPU fit that needs no JAX does not import it (issue 15: import + first fit
in a fresh process), and JAX's features still work when used afterwards. Each case
runs in a fresh interpreter: in this process other tests have imported JAX."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

_HEAVY = ("jax", "equinox", "optax")

_FIT = """
    import json, sys, warnings
    import numpy as np
    import glmmjax
    from glmmjax._engines import seam
    data = glmmjax.datasets.load("sleepstudy")
    fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", data)
    text = str(fit) + fit.summary() + fit.summary(ddf="satterthwaite")
    text += fit.summary(ddf="kenward-roger") + fit.anova().to_string()
    text += fit.anova(ddf="kenward-roger").to_string() + fit.varcorr.to_string()
    smaller = glmmjax.lmer("Reaction ~ 1 + (Days | Subject)", data)
    text += glmmjax.anova(smaller, fit).to_string()  # refitted by ML: an LR test
    ranef = fit.ranef["Subject"].to_numpy()
    predicted = fit.predict(data).to_numpy()
    residuals = fit.residuals("pearson").to_numpy()
    wald = fit.confint(method="wald").to_numpy()
    condsd = fit.ranef_condsd["Subject"].to_numpy()
    text += str(fit.opt_summary)
    loaded = [m for m in {heavy!r} if m in sys.modules]
"""


def _run(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _skip_on_accelerators():
    from glmmjax._engines import seam

    if seam._accelerator_installed():  # the compiled engine is the default there
        pytest.skip("an accelerator plugin is installed: lmer's default engine is JAX's")


def test_an_lmer_fit_and_its_summaries_import_no_jax():
    _skip_on_accelerators()
    out = _run(_FIT.format(heavy=_HEAVY) + """
    print(json.dumps({"loaded": loaded, "engine": fit.engine,
                      "text": all(s in text for s in ("Pr(>|t|)", "DenDF", "Pr(>Chisq)")),
                      "finite": bool(np.all(np.isfinite(ranef)) and np.all(np.isfinite(predicted))
                                     and np.all(np.isfinite(residuals))
                                     and np.all(condsd > 0))}))
    """)
    assert out == {"loaded": [], "engine": "host", "text": True, "finite": True}


def test_jax_features_after_a_jax_free_fit_import_jax_and_agree():
    _skip_on_accelerators()
    out = _run(_FIT.format(heavy=_HEAVY) + """
    assert loaded == [], loaded
    # Now things that need JAX: the compiled engine, Satterthwaite by autodiff, the
    # model's objective and a pytree of the fit's structure.
    compiled = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", data, engine="jax")
    import jax
    structure = fit._dense_structure
    leaves = jax.tree_util.tree_leaves(structure)
    from glmmjax._inference.ddf import satterthwaite_pieces
    host_df = satterthwaite_pieces(fit, engine="host").hessian
    jax_df = satterthwaite_pieces(fit, engine="jax").hessian
    with jax.enable_x64(True):  # the model's objective follows the caller's precision
        model_loglik = float(fit.model.log_likelihood(fit.params))
    print(json.dumps({
        "x64": bool(jax.config.jax_enable_x64) is False,
        "loglik": [fit.loglik, compiled.loglik, model_loglik],
        "beta": [fit.beta.tolist(), compiled.beta.tolist()],
        "leaves": len(leaves) == len(structure.refs) + len(structure.z) + 3 * len(
            structure.pair_first) + 5,
        "hessian": np.max(np.abs(host_df - jax_df) / np.abs(jax_df).max()).item(),
    }))
    """)
    assert out["x64"]  # nothing global was switched on
    loglik = out["loglik"]
    assert loglik[1] == pytest.approx(loglik[0], rel=1e-8)
    assert loglik[2] == pytest.approx(loglik[0], rel=1e-8)
    assert out["beta"][1] == pytest.approx(out["beta"][0], rel=1e-5)
    assert out["leaves"]
    assert out["hessian"] < 1e-5


def test_float64_reaches_jax_imported_during_a_call():
    """``with_x64`` without JAX enters JAX's float64 mode when JAX arrives mid-call."""
    out = _run("""
        import json, sys
        from glmmjax._precision import with_x64

        @with_x64
        def late():
            import jax.numpy as jnp
            return str(jnp.zeros(1).dtype)

        before = "jax" in sys.modules
        inside = late()
        import jax.numpy as jnp
        print(json.dumps([before, inside, str(jnp.zeros(1).dtype)]))
    """)
    assert out == [False, "float64", "float32"]


_GLM_FITS = """
    import json, sys, warnings
    import numpy as np
    import glmmjax
    cbpp = glmmjax.datasets.load("cbpp")
    owls = glmmjax.datasets.load("owls")
    text = ""
    binomial = glmmjax.glm("cbind(incidence, size - incidence) ~ period", cbpp,
                           family="binomial")
    nb = glmmjax.glm("SiblingNegotiation ~ FoodTreatment * SexParent"
                     " + offset(log(BroodSize))", owls, family="negative_binomial")
    nb1 = glmmjax.glm("SiblingNegotiation ~ FoodTreatment + offset(log(BroodSize))", owls,
                      family="nbinom1")
    glms = [binomial, nb, nb1]
    for fit in glms:
        text += str(fit) + fit.summary()
    means = [fit.predict(type="response", se_fit=True).to_numpy() for fit in glms]
    cbpp_glmm = glmmjax.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                              family="binomial")
    owls_formula = ("SiblingNegotiation ~ FoodTreatment * SexParent + offset(log(BroodSize))"
                    " + (1 | Nest)")
    owls_nb2 = glmmjax.glmer(owls_formula, owls, family="negative_binomial")
    owls_zi = glmmjax.glmer("SiblingNegotiation ~ FoodTreatment + offset(log(BroodSize))"
                            " + (1 | Nest)", owls, family="poisson", ziformula="~1")
    smaller = glmmjax.glmer("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", cbpp,
                            family="binomial")
    glmms = [cbpp_glmm, owls_nb2, owls_zi]
    for fit in glmms:
        text += str(fit) + fit.summary() + fit.varcorr.to_string()
        means.append(fit.predict(type="response").to_numpy())
    text += glmmjax.anova(smaller, cbpp_glmm).to_string()
    means += [fit.residuals(kind).to_numpy() for fit in (binomial, nb, cbpp_glmm, owls_nb2)
              for kind in ("pearson", "deviance", "working")]
    means.append(nb.fitted_values.to_numpy())
    ranef = [fit.ranef[name].to_numpy() for fit, name in
             zip(glmms, ("herd", "Nest", "Nest"))]
    loaded = [m for m in {heavy!r} if m in sys.modules]
"""


def test_glm_and_glmer_host_fits_import_no_jax():
    """glm (binomial, NB with θ estimated, a glmmTMB family) and glmer (cbpp binomial,
    Owls NB2 with an offset, a zero-inflated Poisson on the parts engine) with their
    print/summary/anova/predict/ranef and Pearson, deviance and working residuals: no JAX,
    equinox or optax."""
    _skip_on_accelerators()
    out = _run(_GLM_FITS.format(heavy=_HEAVY) + """
    print(json.dumps({"loaded": loaded,
                      "engines": [fit.engine for fit in glmms],
                      "text": all(s in text for s in ("Pr(>|z|)", "Pr(>Chisq)", "theta")),
                      "finite": all(bool(np.all(np.isfinite(a))) for a in means + ranef)}))
    """)
    assert out == {"loaded": [], "engines": ["host"] * 3, "text": True, "finite": True}


def test_jax_features_after_jax_free_glm_and_glmer_fits_agree():
    """After those fits: engine="jax" fits agree with the host ones, and a user-defined
    family and link (subclasses with their own __init__) fit and are pytrees."""
    _skip_on_accelerators()
    out = _run(_GLM_FITS.format(heavy=_HEAVY) + """
    assert loaded == [], loaded
    compiled = glmmjax.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                             cbpp, family="binomial", engine="jax")
    compiled_nb = glmmjax.glm("SiblingNegotiation ~ FoodTreatment * SexParent"
                              " + offset(log(BroodSize))", owls, family="negative_binomial",
                              engine="jax")
    import jax
    import jax.numpy as jnp
    from glmmjax.families import Poisson
    from glmmjax.links import Link

    class Power(Link):
        name = "power"
        power: float

        def __init__(self, power):
            self.power = power

        def link(self, mu):
            return mu ** self.power

        def inverse(self, eta):
            return eta ** (1.0 / self.power)

    class MyPoisson(Poisson):
        allowed_links = None

    family = MyPoisson(link=Power(0.5))
    custom = glmmjax.glm("SiblingNegotiation ~ FoodTreatment", owls, family=family)
    builtin = glmmjax.glm("SiblingNegotiation ~ FoodTreatment", owls,
                          family=glmmjax.families.Poisson(link="sqrt"))
    leaves, tree = jax.tree_util.tree_flatten(family)
    rebuilt = jax.tree_util.tree_unflatten(tree, leaves)
    traced = jax.jit(lambda f, e: f.link.inverse(e))(family, jnp.asarray(3.0))
    print(json.dumps({
        "loglik": [cbpp_glmm.loglik, compiled.loglik, nb.loglik, compiled_nb.loglik],
        "custom": [custom.loglik, builtin.loglik],
        "pytree": [leaves == [0.5], rebuilt == family, hash(rebuilt) == hash(family),
                   float(traced)],
    }))
    """)
    loglik = out["loglik"]
    assert loglik[1] == pytest.approx(loglik[0], rel=1e-6)
    assert loglik[3] == pytest.approx(loglik[2], rel=1e-8)
    assert out["custom"][0] == pytest.approx(out["custom"][1], rel=1e-8)
    assert out["pytree"] == [True, True, True, 9.0]
