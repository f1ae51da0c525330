"""The README's Python snippets run as written, in order, in one namespace (as a reader
would run them), and its sample outputs are what the code prints today.

Markers, as HTML comments on the line before a fence:
``<!-- readme-test: slow -->`` runs the block only in the full suite (``-m slow``);
``<!-- readme-test: subprocess (why) -->`` runs it alone in a fresh Python process (for
blocks that change global state); ``<!-- readme-test: skip (why) -->`` never runs it; ``<!-- checked: EXPR -->`` before an
output block compares it with ``str(EXPR)`` evaluated after the preceding snippets (the
convergence line's counts may differ: optimizer details change, the estimates must not).
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import warnings

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"(?:<!-- (readme-test|checked): ?(.*?) -->\n)?```(\w*)\n(.*?)```", re.S)


def _blocks():
    """(kind, marker argument, language, text) per fenced block, in order."""
    return [(m.group(1), m.group(2), m.group(3), m.group(4))
            for m in _FENCE.finditer(README.read_text())]


def _normalized(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    return [re.sub(r"\d+(\.\d+)?(e[-+]\d+)?", "#", line) if line.startswith("Convergence:")
            else line for line in lines]


def _run(include_slow: bool):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    namespace: dict = {"__name__": "readme"}
    checked = 0
    for number, (kind, argument, language, text) in enumerate(_blocks()):
        if kind == "readme-test" and argument.startswith("skip"):
            continue
        if kind == "readme-test" and argument.startswith("subprocess"):
            run = subprocess.run([sys.executable, "-c", text], capture_output=True, text=True,
                                 timeout=120)
            assert run.returncode == 0, f"README block {number}:\n{run.stderr}"
            continue
        if kind == "readme-test" and argument == "slow" and not include_slow:
            # Later fast blocks must not depend on a slow one: run each fast block with
            # the names it needs defined by fast blocks only.
            continue
        if language == "python":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(text, f"README.md block {number}", "exec"), namespace)  # noqa: S102
        elif kind == "checked":
            actual = str(eval(argument, namespace))  # noqa: S307
            assert _normalized(actual) == _normalized(text), (
                f"README block {number} is stale; `{argument}` prints:\n{actual}")
            checked += 1
    import matplotlib.pyplot as plt

    plt.close("all")
    return checked


def test_readme_fast_snippets_run_and_outputs_are_current():
    assert _run(include_slow=False) == 2


@pytest.mark.slow
def test_readme_all_snippets_run():
    pytest.importorskip("numpyro")
    assert _run(include_slow=True) == 2
