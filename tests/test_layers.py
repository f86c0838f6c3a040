"""The core's layers import one way only: foundation <- space <- nn, task <- engine <- search,
and vis beside them (DEVELOPERS.md, "Layout"). Read from the source, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

DNAS = Path(__file__).parent.parent / "dnas"
FOUNDATION = {
    "errors",
    "registry",
    "schema",
    "config",
    "files",
    "checkpoint",
    "synthetic",
    "allocator",
}
# what each layer may import, besides itself and the foundation
ALLOWED = {
    "foundation": set(),
    "space": set(),
    "nn": {"space"},
    "task": {"space"},
    "vis": {"space"},
    "engine": {"space", "nn", "task"},
    "search": {"space", "nn", "task", "engine", "vis"},
    "top": {"space", "nn", "task", "engine", "vis", "search"},  # cli, __main__, __init__
}


def layer_of(module: str) -> str:
    """The layer of a dotted module name below ``dnas``."""
    head = module.split(".")[0]
    if head in FOUNDATION:
        return "foundation"
    if head in ("space", "nn", "engine", "search", "vis", "task"):
        return head
    return "top"


def imported_modules(path: Path) -> set[str]:
    """Every ``dnas.<x>`` module the file imports, lazily or not (``from dnas import x`` too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "dnas":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dnas."):
            found.add(node.module.removeprefix("dnas."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("dnas.") for a in node.names if a.name[:5] == "dnas."}
    return found


def test_every_import_of_the_core_runs_down_its_layers():
    wrong = []
    for path in sorted(DNAS.rglob("*.py")):
        module = ".".join(path.relative_to(DNAS).with_suffix("").parts)
        mine = layer_of(module)
        for target in imported_modules(path):
            theirs = layer_of(target)
            if theirs not in {mine, "foundation"} | ALLOWED[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from dnas.search.strategy import Strategy\nfrom dnas import checkpoint\n")
    assert imported_modules(bad) == {"search.strategy", "checkpoint"}
    assert layer_of("search.strategy") not in ALLOWED["nn"] | {"nn", "foundation"}
