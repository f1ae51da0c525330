"""JAX on demand: what lets a fit that needs no JAX run without importing it.

Importing JAX (with equinox) costs about a second, more than a whole host-engine fit of a
small LMM (:mod:`glmmjax._engines.host.lmm`). The containers that both engines build
(the random-effects structure, the cross-products, the PLS solution) are therefore plain
frozen dataclasses, declared here with :func:`pytree_dataclass`: they become JAX pytrees
(``jax.tree_util.register_dataclass``; fields marked :func:`static_field` go into the tree
structure, as ``eqx.field(static=True)``) as soon as JAX is imported, by glmmjax or by
anyone, and never make a process import it. Code that runs both ways uses :data:`jnp`,
which imports ``jax.numpy`` on its first attribute access, and :func:`run_x64`, which
enters JAX's float64 mode only where JAX is (or gets) imported.

The one hook (:class:`_JaxImportHook`) sits at the front of ``sys.meta_path`` only until
``jax`` is imported; it changes nothing about that import but runs the registrations
right after it, and then removes itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys
import threading

_PENDING: list[type] = []  # pytree dataclasses waiting for JAX
_X64 = threading.local()  # per thread: the ExitStacks of with_x64 calls running without JAX


class _LazyModule:
    """A module imported on its first attribute access (``jnp.zeros`` imports jax.numpy)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = getattr(importlib.import_module(self._name), attr)
        if not isinstance(value, type(importlib)):  # submodules may still be replaced
            setattr(self, attr, value)  # later lookups skip __getattr__
        return value

    def __repr__(self) -> str:
        return f"<{self._name}, imported on first use>"


def lazy_module(name: str) -> _LazyModule:
    """Module ``name``, imported on its first attribute access."""
    return _LazyModule(name)


jnp = lazy_module("jax.numpy")
jax = lazy_module("jax")


def jax_imported() -> bool:
    """Whether JAX is imported in this process (by glmmjax or anyone)."""
    return "jax" in sys.modules


def static_field(**kwargs):
    """A dataclass field kept in the pytree's structure (``eqx.field(static=True)``)."""
    return dataclasses.field(metadata={"static": True}, **kwargs)


def pytree_dataclass(cls: type) -> type:
    """Make the dataclass ``cls`` a JAX pytree once JAX is imported (now, if it is)."""
    if jax_imported():
        _register(cls)
    else:
        _PENDING.append(cls)
        _install_hook()
    return cls


def _register(cls: type) -> None:
    import jax.tree_util

    jax.tree_util.register_dataclass(cls)


def ensure_pytrees() -> None:
    """Register the pending dataclasses where JAX is imported (for JAX code that may run
    where jax was imported past the hook, e.g. by a finder placed before it)."""
    if jax_imported():
        while _PENDING:
            _register(_PENDING.pop(0))


def _jax_arrived() -> None:
    """Run once JAX is imported: the pending registrations, and float64 for the
    :func:`run_x64` calls of this thread that began without JAX."""
    ensure_pytrees()
    stacks = getattr(_X64, "stacks", None)
    if stacks:
        import jax

        for stack in stacks:
            stack.enter_context(jax.enable_x64(True))


class _RegisteringLoader:
    """jax's own loader, followed by :func:`_jax_arrived` (then the module's loader is
    set back to jax's)."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        _jax_arrived()

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _JaxImportHook:
    """A ``sys.meta_path`` finder that answers only for ``jax``, and only once."""

    def find_spec(self, name, path=None, target=None):
        if name != "jax":
            return None
        _remove_hook()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


_HOOK = _JaxImportHook()


def _install_hook() -> None:
    if not any(finder is _HOOK for finder in sys.meta_path):
        sys.meta_path.insert(0, _HOOK)


def _remove_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if finder is not _HOOK]


@contextlib.contextmanager
def run_x64():
    """``jax.enable_x64(True)`` where JAX is imported; without JAX, nothing until JAX
    gets imported in this thread during the block, then float64 from there to its end.
    (Should another thread import JAX meanwhile, the rest of this block runs in the
    caller's JAX precision; glmmjax's own JAX entry points enter float64 themselves.)"""
    if jax_imported():
        import jax

        with jax.enable_x64(True):
            yield
        return
    stacks = getattr(_X64, "stacks", None)
    if stacks is None:
        stacks = _X64.stacks = []
    stack = contextlib.ExitStack()
    stacks.append(stack)
    _install_hook()
    try:
        yield
    finally:
        stacks.remove(stack)
        stack.close()
