"""The package layout: rooms that import each other one way only (issue 19)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge", "trainer")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module `name` imports, at module level or inside a function (a lazy import
    hides a circle, it does not remove it); `from pkg import mod` counts as importing pkg.mod."""
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def test_no_module_imports_itself_through_others() -> None:
    graph = _graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == [], "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_edge_never_imports_the_trainer() -> None:
    wrong = sorted((m, d) for m, deps in _graph().items() if m.startswith("edge") for d in deps
                   if d.startswith("trainer"))
    assert wrong == []


def test_rooms_depend_one_way() -> None:
    """edge's rooms form a ladder (ops, vision, inference, delivery, offline, hmi): a room may use the
    rooms before it, never one after it nor the wiring at the top (config, daemon, service, cli).
    The operator page (hmi) is last: it reads what every other room leaves behind."""
    order = ["edge.ops", "edge.vision", "edge.inference", "edge.delivery", "edge.offline", "edge.hmi"]
    # leaves every room may use; config_file is the bounded YAML reader (imports nothing of the project),
    # shared by the daemon's config and the page's
    allowed_above = {"edge.errors", "edge.timestamps", "edge.config_file"}
    leaves_import = {m: d for m, d in _graph().items() if m in allowed_above and d}
    assert leaves_import == {}, f"a leaf imports the project: {leaves_import}"
    wrong = []
    for module, deps in _graph().items():
        room = _room(module)
        if room not in order:
            continue
        for dep in deps:
            other = _room(dep)
            if dep in allowed_above or other == room or dep in order:
                continue
            if other not in order or order.index(other) > order.index(room):
                wrong.append(f"{module} -> {dep}")
    assert wrong == [], wrong


def test_every_module_is_in_a_room_or_is_the_wiring() -> None:
    top = {m for m in _modules() if m.count(".") == 1 and m.startswith("edge.")}
    assert top == {"edge.cli", "edge.config", "edge.daemon", "edge.errors", "edge.timestamps", "edge.lifecycle", "edge.preflight",
                   "edge.service", "edge.config_file", "edge.vision", "edge.inference", "edge.delivery", "edge.ops", "edge.offline",
                   "edge.hmi"}


def test_a_module_over_about_400_lines_has_its_reason_in_the_architecture_doc() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    reasons = doc[doc.index("## Modules over 400 lines"):]
    long = sorted(str(p.relative_to(ROOT)) for p in _modules().values() if len(p.read_text().splitlines()) > 420)
    assert [m for m in long if f"`{m}`" not in reasons] == []
