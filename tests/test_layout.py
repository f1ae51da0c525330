"""The package's layout shows its architecture, and stays that way: subpackages import
downward only (families and the model description at the bottom, then the engines,
then the front doors, results, inference and batches), with no import circle among
module-level imports. A deferred import inside a function (a result's ``confint``
calling the profile code) is how an upper layer is reached from a lower one on demand,
and only the documented kinds of those exist (``DEFERRED_UPWARD``). The tests read the
source with :mod:`ast` (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "glmmjax"

# Lower number = lower layer; a module may import at module level only from its own
# layer or below.
LAYERS = {
    "_stacklevel": 0, "_precision": 0, "_progress": 0, "_errors": 0, "_linalg": 0,
    "_display": 0, "_lazyjax": 0,
    "_families": 1, "families": 1, "links": 1,
    "_model": 2, "datasets": 2,
    "_engines": 3,
    "_solve": 4, "_results": 4,
    "_lmer": 5, "_glmer": 5, "_glm": 5, "_parts_fit": 5, "_residual_ar1": 5,
    "_inference": 6, "_batching": 6,
    "_bayes": 7, "bayes": 7,
    "_cli": 8, "__main__": 8, "__init__": 9,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _import_nodes(path: Path, deferred: bool):
    """Module-level import statements, or (``deferred``) those inside functions."""
    tree = ast.parse(path.read_text())
    if not deferred:
        # `if TYPE_CHECKING:` imports are not run
        return [n for n in tree.body if not isinstance(n, ast.If)]
    return [sub for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom))]


def _module_level_imports(name: str, path: Path, modules, deferred: bool = False) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in _import_nodes(path, deferred):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                targets.add(sub if sub in modules else target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("glmmjax"):
            targets.add(node.module)
        elif isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name.startswith("glmmjax"))
    return {t for t in targets if t in modules and t != name}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return LAYERS[top]


def test_every_module_has_a_layer():
    assert {m.split(".")[1] for m in _modules() if "." in m} <= set(LAYERS)


def test_module_level_imports_go_down_the_layers():
    modules = _modules()
    upward = [f"{name} -> {target}"
              for name, path in sorted(modules.items())
              for target in sorted(_module_level_imports(name, path, modules))
              if _layer(target) > _layer(name)]
    assert upward == []


def test_no_import_circle_among_module_level_imports():
    modules = _modules()
    graph = {name: _module_level_imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in graph:
        if start not in state:
            visit(start, [start])


# The only imports that go up a layer, each deferred to the call that needs it:
# - a result's on-demand methods (``fit.confint()``, ``fit.simulate()``, ``fit.ddf``,
#   diagnostics) reach the inference layer, which takes results as arguments;
# - :class:`~glmmjax.MixedModel`'s methods evaluate its objective with the compiled
#   engine and ``MixedModel.fit`` goes through the front doors (the model itself sits
#   below them: results hold it);
# - the command line imports the package.
# Anything else (an engine building a result, a family formatting with a result's
# helpers) is a layering mistake: move the shared piece down instead.
DEFERRED_UPWARD = {
    ("glmmjax._results", "glmmjax._inference"),
    ("glmmjax._model.model", "glmmjax._engines"),
    ("glmmjax._model.model", "glmmjax._results.mixed"),
    ("glmmjax._model.model", "glmmjax._lmer"),
    ("glmmjax._model.model", "glmmjax._glmer"),
    ("glmmjax._cli", "glmmjax"),
}


def test_deferred_upward_imports_are_the_documented_ones():
    modules = _modules()
    upward = set()
    for name, path in modules.items():
        for target in _module_level_imports(name, path, modules, deferred=True):
            if _layer(target) > _layer(name):
                upward.add((name, target))
    unexplained = sorted(
        f"{name} -> {target}" for name, target in upward
        if not any((name == a or name.startswith(a + ".")) and
                   (target == b or target.startswith(b + ".")) for a, b in DEFERRED_UPWARD))
    assert unexplained == []


def test_engines_are_mirrored():
    """The host engine's numpy kernels sit in files named as their compiled twins."""
    host = {p.stem for p in (PACKAGE / "_engines" / "host").glob("*.py")}
    compiled = {p.stem for p in (PACKAGE / "_engines" / "compiled").glob("*.py")}
    assert {"lmm", "glmm", "products", "parts"} <= host & compiled


def test_architecture_page_places_every_module():
    """docs/architecture.md (for contributors) names every subpackage and top module."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = [name for name in LAYERS
               if name not in ("__init__", "__main__") and f"`{name}" not in text]
    assert missing == []
