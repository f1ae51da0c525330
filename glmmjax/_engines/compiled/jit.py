"""``program``: ``eqx.filter_jit`` for glmmjax's large fit programs, with the XLA
options that make them compile fast on CPU, run with single-threaded LAPACK.

XLA:CPU's newer MLIR fusion emitters took about twice as long to compile a fit as the
classic ones and gave no faster code in our fits (figures in benchmarks/README.md,
"Design measurements"). The choice is passed to each program's compilation, never set
globally: users' own JAX code is untouched.

XLA:CPU runs its Cholesky factorizations and triangular solves in the OpenBLAS that
SciPy bundles, whose worker threads wait by spinning. Next to XLA's own threads, and
worse next to any other busy process, they fight over the cores (a several-fold
slowdown on a 2-core CPU: benchmarks/README.md). Each program call therefore limits OpenBLAS
to one thread (:func:`glmmjax._engines.blas.single_threaded_blas`) until its results are ready,
and restores the setting.

:func:`batch_program` compiles the vmapped batch programs (``fit_many``) with the same
options, but does not wait for their results (``eqx.filter_jit`` does, inside XLA, where
Ctrl-C cannot reach): the caller waits in Python
(:func:`glmmjax._progress.wait_interruptibly`), which lets Ctrl-C through and reports a
computation that stopped making progress instead of hanging.
"""

from __future__ import annotations

import functools

from ..blas import single_threaded_blas

_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def _prefer_cpu_options(plain, tuned):
    """Call ``tuned`` (compiled with :data:`_CPU_OPTIONS`) on the CPU backend, ``plain``
    elsewhere, and ``plain`` for good once a jaxlib rejects an option."""
    import jax

    usable = [True]

    def run(*args, **kwargs):
        if jax.default_backend() != "cpu" or not usable[0]:
            return plain(*args, **kwargs)
        try:
            return tuned(*args, **kwargs)
        except jax.errors.JaxRuntimeError as error:
            if "compile option" not in str(error):
                raise
            usable[0] = False
            return plain(*args, **kwargs)

    return run


def _built_on_first_call(build):
    """A function returning ``build()``'s result, built on its first call (defining a
    program imports no JAX)."""
    built = []

    def get():
        if not built:
            built.append(build())
        return built[0]

    return get


def program(fun):
    """Jit ``fun`` (equinox's filtering) with :data:`_CPU_OPTIONS` on the CPU backend.

    A jaxlib that does not know an option rejects the compilation before anything runs;
    the program is then compiled with XLA's defaults (and stays so). Jitted on its first
    call: defining a program imports no JAX.
    """

    def build():
        import equinox as eqx

        return _prefer_cpu_options(
            eqx.filter_jit(fun), eqx.filter_jit(fun, compiler_options=_CPU_OPTIONS))

    compiled = _built_on_first_call(build)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        import jax

        run = compiled()
        if jax.default_backend() != "cpu":
            return run(*args, **kwargs)
        with single_threaded_blas():
            # Dispatch is asynchronous: wait for the results inside the limit.
            return jax.block_until_ready(run(*args, **kwargs))

    return call


class _Static:
    """The non-array part of a call's arguments, hashable by value (a jit static)."""

    __slots__ = ("tree", "_key")

    def __init__(self, tree):
        import jax

        self.tree = tree
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        self._key = (treedef, tuple(leaves))

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key == other._key


def batch_program(fun):
    """``fun`` jitted with equinox's filtering (arrays traced, everything else static)
    and :data:`_CPU_OPTIONS` on the CPU; returns without waiting for the result. Jitted
    on its first call, as :func:`program`."""

    def build():
        import equinox as eqx
        import jax

        def split_call(dynamic, static):
            return fun(*eqx.combine(dynamic, static.tree))

        return _prefer_cpu_options(
            jax.jit(split_call, static_argnums=1),
            jax.jit(split_call, static_argnums=1, compiler_options=_CPU_OPTIONS))

    compiled = _built_on_first_call(build)

    @functools.wraps(fun)
    def call(*args):
        import equinox as eqx

        dynamic, static = eqx.partition(args, eqx.is_array)
        return compiled()(dynamic, _Static(static))

    return call
