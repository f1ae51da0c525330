"""``program``: ``eqx.filter_jit`` for glmmjax's large fit programs, with the XLA
options that make them compile fast on CPU.

XLA:CPU's newer MLIR fusion emitters take about twice as long to compile a fit as the
classic ones (InstEval's LMM fit: 4.7 s against 2.3 s under the same load) and gave no
faster code in our fits (2.55 s against 2.57 s for the same fit). The choice is passed
to each program's compilation, never set globally: users' own JAX code is untouched.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax

_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def program(fun):
    """Jit ``fun`` (equinox's filtering) with :data:`_CPU_OPTIONS` on the CPU backend.

    A jaxlib that does not know an option rejects the compilation before anything runs;
    the program is then compiled with XLA's defaults (and stays so).
    """
    plain = eqx.filter_jit(fun)
    tuned = eqx.filter_jit(fun, compiler_options=_CPU_OPTIONS)
    usable = [True]

    @functools.wraps(fun)
    def call(*args, **kwargs):
        if not usable[0] or jax.default_backend() != "cpu":
            return plain(*args, **kwargs)
        try:
            return tuned(*args, **kwargs)
        except jax.errors.JaxRuntimeError as error:
            if "compile option" not in str(error):
                raise
            usable[0] = False
            return plain(*args, **kwargs)

    return call
