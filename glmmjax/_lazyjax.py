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

import abc
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

    if isinstance(cls, _PytreeClassMeta):
        _register_pytree_class(cls)
    else:
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


# ---- immutable classes that are pytrees (equinox.Module's semantics, without equinox) --

_INITIALISING: set[int] = set()  # ids of PytreeClass instances whose __init__ is running


class _PytreeClassMeta(abc.ABCMeta):
    """Makes every class a dataclass as ``equinox.Module`` does (a class inherits a custom
    ``__init__`` of its bases rather than getting a generated one), registers it as a
    pytree once JAX is imported, and lets ``__init__`` alone assign fields."""

    def __new__(mcs, name, bases, namespace, **kwargs):
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        if "__init__" in namespace:
            dataclass_init = False
        else:
            dataclass_init = True
            for kls in cls.__mro__[1:-1]:
                if "_dataclass_init" in kls.__dict__:
                    dataclass_init = kls.__dict__["_dataclass_init"]
                    break
                if kls.__init__ is not object.__init__:  # a base that is no PytreeClass
                    dataclass_init = False
                    break
        type.__setattr__(cls, "_dataclass_init", dataclass_init)
        cls = dataclasses.dataclass(eq=False, repr=False, init=dataclass_init)(cls)
        if bases:  # every subclass of PytreeClass (not the field-less root itself)
            pytree_dataclass(cls)
        return cls

    def __call__(cls, *args, **kwargs):
        self = cls.__new__(cls)
        token = id(self)
        _INITIALISING.add(token)
        try:
            cls.__init__(self, *args, **kwargs)
        finally:
            _INITIALISING.discard(token)
        for field in dataclasses.fields(cls):
            try:
                getattr(self, field.name)
            except AttributeError as err:
                raise TypeError(f"Field {field.name!r} was not initialized.") from err
        for kls in cls.__mro__:
            check = kls.__dict__.get("__check_init__")
            if check is not None:
                check(self)
        return self

    @property
    def __signature__(cls):  # noqa: N805  (help() and inspect.signature show __init__'s)
        import inspect

        signature = inspect.signature(cls.__init__)
        return signature.replace(parameters=list(signature.parameters.values())[1:])


def _values_equal(a, b) -> bool:
    if a is b:
        return True
    if type(a) is not type(b) and (isinstance(a, PytreeClass) or isinstance(b, PytreeClass)):
        return False
    try:
        same = a == b
    except Exception:  # e.g. arrays of different shapes
        return False
    if isinstance(same, bool):
        return same
    try:
        import numpy as np

        return bool(np.shape(a) == np.shape(b) and np.all(same))
    except Exception:
        return False


class PytreeClass(metaclass=_PytreeClassMeta):
    """An immutable class with ``equinox.Module``'s semantics and no import of JAX.

    Every subclass (user-defined ones too) is a dataclass whose annotated class attributes
    are its fields; it is frozen except inside ``__init__``, which may assign the fields
    (``self.link = ...``); a class without its own ``__init__`` inherits its base's custom
    one, or gets the dataclass one. Instances compare equal when they have the same type
    and equal fields, hash by their fields, and print as ``Binomial(link=Logit())``.
    Each class is a JAX pytree once JAX is imported (its fields are children; fields made
    with :func:`static_field` go into the tree structure); rebuilding an instance from its
    leaves never calls ``__init__``.
    """

    def __setattr__(self, name, value):
        if id(self) in _INITIALISING and name in self.__dataclass_fields__:
            object.__setattr__(self, name, value)
            return
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def _field_values(self) -> tuple:
        return tuple(getattr(self, field.name) for field in dataclasses.fields(self))

    def __eq__(self, other):
        if not isinstance(other, PytreeClass):
            return NotImplemented
        if type(self) is not type(other):
            return False
        return all(_values_equal(a, b) for a, b in
                   zip(self._field_values(), other._field_values()))

    def __hash__(self):
        return hash((type(self), self._field_values()))

    def __repr__(self) -> str:
        shown = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.repr and value is not field.default:
                shown.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


def replace_fields(obj, **changes):
    """A copy of the :class:`PytreeClass` ``obj`` with some fields replaced (as
    ``eqx.tree_at``; its ``__init__`` is not called)."""
    unknown = set(changes) - set(obj.__dataclass_fields__)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no fields {sorted(unknown)}")
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


def _register_pytree_class(cls: type) -> None:
    import jax.tree_util as jtu

    fields = dataclasses.fields(cls)
    data = tuple(f.name for f in fields if not f.metadata.get("static", False))
    meta = tuple(f.name for f in fields if f.metadata.get("static", False))
    keys = tuple(jtu.GetAttrKey(name) for name in data)

    def flatten_with_keys(obj):
        children = tuple((key, getattr(obj, name)) for key, name in zip(keys, data))
        return children, tuple(getattr(obj, name) for name in meta)

    def flatten(obj):
        return (tuple(getattr(obj, name) for name in data),
                tuple(getattr(obj, name) for name in meta))

    def unflatten(aux, children):
        obj = object.__new__(cls)
        obj.__dict__.update(zip(data, children))
        obj.__dict__.update(zip(meta, aux))
        return obj

    jtu.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)


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
