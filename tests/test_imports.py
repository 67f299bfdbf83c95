"""The import graph of ``probe`` and ``analyses`` has no cycle, and ``probe`` never imports ``analyses``.

Every ``import``/``from ... import`` counts, at module level or inside a function: a cycle held apart
only by a late import is still two modules that cannot be understood one without the other.
An edge goes to the module named; ``from package import name`` goes to ``package.name`` when that
is a module, else to the package's ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probe", "analyses")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(name: str, source: str, known: set[str], is_package: bool = False) -> set[str]:
    """The modules of ``known`` that ``source`` (module ``name``) imports anywhere in its body."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(name, path.read_text(), set(mods), path.name == "__init__.py")
            for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``edges`` as a path that ends where it starts, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_walker_sees_cycles_and_late_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    known = {"p", "p.a", "p.b", "p.c", "q"}
    source = "import q\nfrom . import b\ndef f():\n    from .c import x\n    from p import a, nothing\n"
    assert imported("p.a", source, known) == {"q", "p.b", "p.c", "p"}
    assert imported("p", "from .a import y", known, is_package=True) == {"p.a"}
    assert "probe.arch" in graph()["probe.capture"]


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(m for m in modules() if m.startswith("probe")))
def test_probe_never_imports_analyses(name):
    assert not {m for m in graph()[name] if m.startswith("analyses")}
