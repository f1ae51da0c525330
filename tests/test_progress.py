"""Feedback where people wait: one note before a compilation (never on the host engine,
never twice for one program), progress bars in interactive sessions only."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd

import glmmjax
from glmmjax import _progress


def test_note_only_while_tracing(capsys, monkeypatch):
    monkeypatch.setattr(_progress, "_LAST", {})
    square = eqx.filter_jit(_progress.noted(lambda x: x * x, "a test program"))
    square(jnp.ones(3))
    assert capsys.readouterr().err.count("glmmjax: compiling a test program") == 1
    monkeypatch.setattr(_progress, "_LAST", {})
    square(jnp.ones(3))  # cached: no tracing, no note
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("GLMMJAX_QUIET", "1")
    square(jnp.ones(4))  # a new shape compiles, but the user asked for quiet
    assert capsys.readouterr().err == ""


def test_compiled_glm_says_so_and_host_fits_do_not(capsys, monkeypatch):
    monkeypatch.setattr(_progress, "_LAST", {})
    frame = pd.DataFrame({"x": np.arange(11.0), "y": np.r_[0, 1, 0, 0, 1, 0, 1, 1, 0, 1, 1]})
    glmmjax.glm("y ~ x", frame, family="binomial", engine="jax")
    assert "compiling the GLM fit" in capsys.readouterr().err
    glmmjax.glm("y ~ x", frame, family="binomial")  # the host engine's IRLS
    assert "compiling" not in capsys.readouterr().err
    glmmjax.lmer("Reaction ~ Days + (1 | Subject)", glmmjax.datasets.load("sleepstudy"))
    assert "compiling" not in capsys.readouterr().err  # the host engine compiles nothing


def test_bars_follow_the_session():
    assert not _progress.interactive()  # pytest captures stderr
    items = [1, 2]
    assert _progress.bar(items, enabled=None) is items
    assert _progress.bar(items, enabled=False) is items
    assert list(_progress.bar(items, enabled=True, disable=True)) == items


def test_profile_confint_shows_progress(capsys):
    fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", glmmjax.datasets.load("sleepstudy"))
    ci = fit.confint(parm=["sigma", "(Intercept)"], progress=True)
    assert list(ci.index) == ["sigma", "Intercept"]
    err = capsys.readouterr().err
    assert "profiling" in err and "2/2" in err


def test_zero_inflated_kernels_say_they_compile(capsys, monkeypatch):
    # Every kernel of the zero-inflation/dispersion host fit is built by _cpu_jit (a
    # first glmer(..., ziformula=) call compiles for seconds).
    from glmmjax._engines.host.parts import _cpu_jit

    monkeypatch.setattr(_progress, "_LAST", {})
    double = _cpu_jit(lambda x: 2 * x)
    double(jnp.ones(5))
    double(jnp.ones(5))
    assert capsys.readouterr().err.count("compiling the zero-inflation/dispersion fit") == 1


def test_nuts_progress_bar_on_by_default_in_sessions(monkeypatch):
    import pytest

    pytest.importorskip("numpyro")
    from glmmjax import bayes
    from glmmjax._bayes.model import BayesModel

    chosen = []

    def run(self, ys, num_chains, num_warmup, num_samples, seed, chain_method, progress_bar,
            *rest):
        chosen.append(progress_bar)
        raise KeyboardInterrupt  # stop before sampling

    monkeypatch.setattr(BayesModel, "_run", run)
    model = bayes.build("Yield ~ 1 + (1 | Batch)", glmmjax.datasets.load("dyestuff"))
    for session, quiet, expected in [(True, None, True), (False, None, False),
                                     (True, "1", False)]:
        monkeypatch.setattr(_progress, "interactive", lambda session=session: session)
        if quiet:
            monkeypatch.setenv("GLMMJAX_QUIET", quiet)
        with pytest.raises(KeyboardInterrupt):
            model.sample(num_chains=1, num_warmup=10, num_samples=10)
        assert chosen.pop() is expected
