"""The package's layout as the README draws it: which module uses which, read from
the code's own imports, so the picture cannot drift from the code.

    .venv/bin/python tests/test_layout.py --write    # after moving things: redraw it
"""
from __future__ import annotations

import ast
import sys
from graphlib import TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minicontainer"
BEGIN, END = "<!-- package map: tests/test_layout.py --write -->", "<!-- end of package map -->"


def module_name(path: Path) -> str:
    """minicontainer/vm/qemu.py → vm.qemu; __init__.py names its package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "minicontainer"


def uses(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports, at the top or inside a function."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] if node.level > 1 else package
            base = [p for p in base if p != "minicontainer"]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:             # `from .vm import machine, VM`: vm.machine, vm
                submodule = f"{target}.{alias.name}".strip(".")
                found |= {submodule} if submodule in known else {target} & known
    return found - {module_name(path)}


def package_map() -> list[tuple[str, list[str]]]:
    """(module, the modules it uses), lowest layer first: a module comes after all it uses."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"}
    graph = {name: uses(path, set(paths)) for name, path in paths.items()}
    sorter = TopologicalSorter(graph)
    order, floor = [], {}
    sorter.prepare()
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        for name in ready:
            floor[name] = 1 + max((floor[u] for u in graph[name]), default=-1)
        order += ready
        sorter.done(*ready)
    order.sort(key=lambda name: (floor[name], name))
    return [(name, sorted(graph[name], key=lambda u: (floor[u], u))) for name in order
            if name != "minicontainer"]


def drawn() -> str:
    rows = ["| module | uses |", "|---|---|"]
    rows += [f"| `{name}` | {', '.join(used) or '—'} |" for name, used in package_map()]
    return "\n".join([BEGIN, *rows, END])


def test_the_readme_draws_the_package_as_the_code_has_it():
    readme = (ROOT / "README.md").read_text()
    assert BEGIN in readme and END in readme, "the README lost its package map"
    shown = readme[readme.index(BEGIN):readme.index(END) + len(END)]
    assert shown == drawn(), "the package changed: `.venv/bin/python tests/test_layout.py --write`"


def test_imports_point_down():
    """No cycles: a layer uses only the layers below it (graphlib would raise)."""
    assert package_map()


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    (ROOT / "README.md").write_text(readme[:start] + drawn() + readme[end:])
