"""The documentation site builds in MkDocs' strict mode without a warning (about two
seconds: the API reference is read from the sources by griffe, nothing is executed),
and the package ships its py.typed marker."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

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
