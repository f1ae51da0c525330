"""The seam picks the host engine on a CPU-only machine without starting JAX's backends,
and still sees an accelerator plugin (the compiled engine's default there). Each case
runs in a fresh interpreter: in this process other tests have started the backends."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str, extra_path: str | None = None) -> str:
    env_path = [extra_path] if extra_path else []
    script = f"import sys\nsys.path[:0] = {env_path!r}\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    return done.stdout.strip().splitlines()[-1]


def test_an_installed_accelerator_plugin_is_seen(tmp_path):
    # JAX's plugins register as modules of the `jax_plugins` namespace package (the CUDA
    # plugin as jax_plugins.xla_cuda12): a fake one must make the seam ask JAX.
    (tmp_path / "jax_plugins" / "xla_fake").mkdir(parents=True)
    (tmp_path / "jax_plugins" / "xla_fake" / "__init__.py").write_text("")
    out = _run("""
        from glmmjax._engines import seam
        print(seam._accelerator_installed())
    """, str(tmp_path))
    assert out == "True"


def test_cpu_only_choice_does_not_start_the_backends():
    out = _run("""
        import importlib.util
        from jax._src import xla_bridge
        from glmmjax._engines import seam
        if seam._accelerator_installed():  # a machine with a plugin: nothing to check
            print("skip")
        else:
            choice = seam.choose_lmm(None)
            print(choice, xla_bridge.backends_are_initialized())
    """)
    assert out in ("skip", "host False")


def test_started_backends_are_asked():
    out = _run("""
        import jax, jax.numpy as jnp
        jnp.zeros(1).block_until_ready()
        from glmmjax._engines import seam
        print(seam._default_backend() == jax.default_backend())
    """)
    assert out == "True"


def test_cpu_choice_imports_no_jax_where_jax_is_not_imported():
    # JAX_PLATFORMS led by cpu, or no accelerator plugin: "cpu" without importing jax.
    script = """
        import os, sys
        from glmmjax._engines import seam
        os.environ["JAX_PLATFORMS"] = "cpu"
        first = seam.choose_lmm(None)
        del os.environ["JAX_PLATFORMS"]
        second = seam.choose_lmm(None) if not seam._accelerator_installed() else "host"
        print(first, second, "jax" in sys.modules)
    """
    assert _run(script) == "host host False"
