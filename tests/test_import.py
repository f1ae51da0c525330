"""``import glmmjax`` stays light: heavy dependencies load on first use of a name."""

import subprocess
import sys

import pytest


def _modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


def _loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def test_import_loads_no_heavy_dependency():
    modules = _modules_after("import glmmjax")
    for package in ("jax", "pandas", "scipy", "formulaic", "matplotlib", "numpyro",
                    "equinox"):
        assert not _loaded(modules, package), f"import glmmjax imported {package}"


def test_fitting_functions_do_not_import_scipy_stats_or_plotting():
    modules = _modules_after("import glmmjax\nglmmjax.lmer, glmmjax.glmer, glmmjax.glm, "
                             "glmmjax.anova, glmmjax.families.Binomial")
    for package in ("scipy.stats", "matplotlib", "numpyro", "statsmodels"):
        assert not _loaded(modules, package), f"glmmjax's fitting functions import {package}"


@pytest.mark.parametrize("name", ["lmer", "glmer", "glm", "fit_many", "families", "links",
                                  "datasets", "MixedModel", "DataError", "SingularFitWarning"])
def test_public_names_resolve(name):
    import glmmjax

    assert name in dir(glmmjax)
    value = getattr(glmmjax, name)
    assert getattr(glmmjax, name) is value
    namespace = {}
    exec(f"from glmmjax import {name} as imported", namespace)
    assert namespace["imported"] is value


def test_every_public_name_resolves_and_unknown_names_fail():
    import glmmjax

    for name in glmmjax.__all__:
        assert getattr(glmmjax, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'lmerr'"):
        glmmjax.lmerr  # noqa: B018
