"""The documentation site builds in MkDocs' strict mode without a warning (about two
seconds: the API reference is read from the sources by griffe, nothing is executed),
and the package ships its py.typed marker."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mkdocs", "material", "mkdocstrings")),
    reason="the docs build needs mkdocs, mkdocs-material and mkdocstrings[python] "
           "(pip install '.[test]')",
)
def test_docs_build_strict_without_warnings(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "WARNING" not in output, output
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("glmmjax.lmer", "MixedModel", "from_arrays", "solve", "Params"):
        assert name in api, name
    images = {p.name for p in (ROOT / "docs" / "images").glob("*.png")}
    for page in (ROOT / "docs").glob("*.md"):
        for line in page.read_text().splitlines():
            if line.startswith("![") and "images/" in line:
                assert line.split("images/")[1].rstrip(")") in images, (page.name, line)


def test_py_typed_is_shipped():
    assert (ROOT / "glmmjax" / "py.typed").exists()
    assert "py.typed" in (ROOT / "pyproject.toml").read_text()


def test_api_reference_lists_every_public_name():
    pytest.importorskip("numpyro")
    import glmmjax
    from glmmjax import bayes

    entries = {line[4:].strip() for line in (ROOT / "docs" / "api.md").read_text().splitlines()
               if line.startswith("::: ")}
    public = {f"glmmjax.{name}" for name in glmmjax.__all__}
    public |= {f"glmmjax.bayes.{name}" for name in bayes.__all__}
    assert not public - entries, sorted(public - entries)


@pytest.mark.parametrize(("page", "must"), [
    ("lmm.md", ["ar1(", "relmat=", "covariance_structures"]),
    ("glm.md", ["nbinom1", "tweedie", "plot_effect"]),
    ("glmm.md", ["ziformula=", "dispformula=", "GLMMPartsResult", "hurdle", "relmat="]),
    ("batches.md", ["ddf=", "status", "batch.memory", "chunk_size="]),
    ("bayesian.md", ["posterior_predict", "plot_ppc", "az.plot_ppc", "progress_bar"]),
    ("inference.md", ["confint", "satterthwaite", "kenward-roger", "bootstrap"]),
    ("jax.md", ["MixedModel.from_arrays", "glmmjax.solve", "jax.grad"]),
    ("plots.md", ["plot_profile", "plot_effect", "plot_posterior"]),
    ("examples.md", ["zero_inflated_counts.py", "hierarchical_demand.py"]),
])
def test_a_page_per_capability_covers_it(page, must):
    text = (ROOT / "docs" / page).read_text()
    for piece in must:
        assert piece in text, (page, piece)
    nav = (ROOT / "mkdocs.yml").read_text()
    assert page in nav, page


_FENCE = re.compile(r"(?:<!-- docs-test: (.*?) -->\n)?```(\w*)\n(.*?)```", re.S)


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_docs_snippets_run(page):
    """Each page's Python blocks run in order in one namespace, as a reader would run
    them (blocks marked ``<!-- docs-test: skip (why) -->`` need several processes)."""
    matplotlib = pytest.importorskip("matplotlib")
    pytest.importorskip("numpyro")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    namespace: dict = {"__name__": "docs"}
    for number, match in enumerate(_FENCE.finditer((ROOT / "docs" / page).read_text())):
        marker, language, text = match.groups()
        if language != "python" or (marker or "").startswith("skip"):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(text, f"{page} block {number}", "exec"), namespace)  # noqa: S102
    plt.close("all")
