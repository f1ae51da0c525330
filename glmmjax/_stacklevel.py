"""Warnings that point at the user's line, not at glmmjax's internals.

A fixed ``stacklevel`` is wrong as soon as a warning can be reached through different
call paths (``lmer`` directly, ``MixedModel.fit``, ``refit``, decorators such as
``with_x64``), which left singular-fit and separation warnings attributed to
``glmmjax/_precision.py``. :func:`external_stacklevel` counts the frames inside this
package instead (Python 3.12's ``skip_file_prefixes`` does the same, but the package
supports 3.10).
"""

from __future__ import annotations

import importlib.util
import os
import sys


def _package_dir(name: str) -> str | None:
    """Where package ``name`` lives, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        return None
    return os.path.dirname(os.path.abspath(spec.origin)) + os.sep


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# equinox wraps the methods of its Modules (MixedModel.fit): those frames are plumbing.
SKIPPED = tuple(d for d in (PACKAGE_DIR, _package_dir("equinox")) if d is not None)


def external_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` call made by the caller of this
    function, such that the warning names the first frame outside glmmjax (and the
    equinox method wrappers around it)."""
    frame = sys._getframe(1)  # the frame that calls warnings.warn: stacklevel 1
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(SKIPPED):
        frame = frame.f_back
        level += 1
    return level
