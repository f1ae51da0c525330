"""Shared fixtures: reference JSON from R, and fits cached per session so each model
structure is compiled once for the whole test run."""

from __future__ import annotations

import json
import pathlib

import pytest

REFERENCE = pathlib.Path(__file__).parent / "reference"

# Compiled programs shared between the xdist workers of one run: a worker that needs a
# program another worker has already compiled (the same model shapes in another file)
# loads it from this run's own temporary directory instead of compiling it again. The
# directory is made by the controller and removed at its end, so nothing outlives a run
# and single-process runs (-n 0) are unchanged; subprocesses started by tests ignore it.
_CACHE_ENV = "GLMMJAX_TEST_COMPILATION_CACHE"


# The fast suite (-m "not slow") compiles with XLA's backend (LLVM) optimizations off:
# its models are tiny, so compiling is most of its time, and level 0 compiles about a
# third faster for the same results at the tests' tolerances. Any run that includes the
# slow tests keeps XLA's default, so the programs users run are still checked there; an
# XLA_FLAGS that already sets the level (e.g. --xla_backend_optimization_level=2) wins.
_FAST_XLA_FLAG = "--xla_backend_optimization_level=0"


def _fast_suite(config) -> bool:
    return "not slow" in " ".join((config.getoption("markexpr", "") or "").split())


def pytest_configure(config):
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    if _fast_suite(config) and "xla_backend_optimization_level" not in flags:
        # Before JAX starts its CPU backend (test modules import it at collection).
        os.environ["XLA_FLAGS"] = f"{flags} {_FAST_XLA_FLAG}".strip()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        path = os.environ.get(_CACHE_ENV)
        if path and os.path.isdir(path):
            import jax

            jax.config.update("jax_compilation_cache_dir", path)
    elif config.pluginmanager.hasplugin("xdist") and _CACHE_ENV not in os.environ:
        import tempfile

        config._glmmjax_compilation_cache = tempfile.mkdtemp(prefix="glmmjax-jit-cache-")
        os.environ[_CACHE_ENV] = config._glmmjax_compilation_cache


def pytest_unconfigure(config):
    import os
    import shutil

    path = getattr(config, "_glmmjax_compilation_cache", None)
    if path:
        os.environ.pop(_CACHE_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def load_reference(name: str) -> dict:
    with open(REFERENCE / f"{name}.json") as handle:
        return json.load(handle)


@pytest.fixture(scope="session")
def lmm_reference():
    return load_reference("lmm")["models"]


_FITS: dict = {}


def load_example(name: str):
    """The module ``examples/<name>.py`` (the examples are scripts, not a package)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cached(key, make):
    """Return ``make()`` once per session for ``key`` (fits are expensive to compile)."""
    if key not in _FITS:
        _FITS[key] = make()
    return _FITS[key]


def rel_close(actual, expected, rtol, atol=0.0):
    import numpy as np

    actual = np.asarray(actual, dtype=float)
    expected = np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
