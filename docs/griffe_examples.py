"""A griffe extension for the docs build: glmmjax's docstrings title their doctests
"Example:" (singular), which Google style reads as an admonition; render them as the
examples section they are, so doctest output stays code."""

from __future__ import annotations

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
