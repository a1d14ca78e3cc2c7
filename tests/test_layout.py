"""The layout is the architecture: no import cycle in ``pvbuild/``, and no module imports a higher
layer (foundation < plugins/config < services < engine < stages < entry points)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pvbuild"
# Lowest first. A module may import its own layer and the ones below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("pvbuild", "pvbuild.errors", "pvbuild.progress", "pvbuild.files", "pvbuild.plugin_types", "pvbuild.hookspecs",
     "pvbuild.browser", "pvbuild.fetch", "pvbuild.prices"),
    ("pvbuild.plugins", "pvbuild.config"),
    ("pvbuild.services", "pvbuild.builtins"),
    ("pvbuild.engine",),
    ("pvbuild.stages",),
    ("pvbuild.tasks", "pvbuild.check", "pvbuild.cli", "pvbuild.reporter", "pvbuild.ask", "pvbuild.diff",
     "pvbuild.history", "pvbuild.publish", "pvbuild.plan", "pvbuild.__main__"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    matches = [(len(prefix), index) for index, prefixes in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def imports() -> dict[str, set[str]]:
    """Every pvbuild module and the pvbuild modules it imports (at any depth of the file)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pvbuild"):
                for alias in node.names:  # `from pvbuild.stages import urls` imports a module
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").is_file()
                              else node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("pvbuild")}
        graph[name] = found - {name}
    return graph


def test_no_module_imports_a_higher_layer() -> None:
    wrong = [f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
             for module, targets in imports().items() for target in sorted(targets)
             if target != "pvbuild" and layer(target) > layer(module)]
    assert wrong == []


def test_no_import_cycle() -> None:
    graph = imports()
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target):], target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
