"""common/ is the bottom layer: it imports nothing from activities/ or workflows/.

Everything else (the worker, the API, the CLI, the simulator, the local stack) builds on common/;
an import back up would make e.g. logging pull in the workflows' messages and tie the layers in
a knot. Checked on the source, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UPPER_LAYERS = ("activities", "workflows")


def imported_modules(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def upward_imports(folder: Path) -> list[str]:
    return sorted(
        f"{source.relative_to(folder)} imports {name}"
        for source in folder.rglob("*.py")
        for name in imported_modules(source)
        if name.split(".")[0] in UPPER_LAYERS
    )


def test_common_imports_nothing_from_activities_or_workflows() -> None:
    assert upward_imports(ROOT / "common") == []


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    (tmp_path / "module.py").write_text(
        "def f():\n    from workflows.messages import ProcessState\n    return ProcessState\n"
    )
    assert imported_modules(tmp_path / "module.py") == {"workflows.messages"}
    assert upward_imports(tmp_path) != []
