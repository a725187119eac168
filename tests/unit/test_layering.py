"""The guard depends on nothing of the rest: its image carries only claude_bottle/egress."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import claude_bottle.egress

EGRESS = Path(claude_bottle.egress.__file__).parent


def test_egress_imports_only_stdlib_and_itself() -> None:
    for path in EGRESS.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: must stay inside egress
                    assert node.level == 1, f"{path.name} reaches outside egress"
                    continue
                mod = node.module or ""
            elif isinstance(node, ast.Import):
                mod = node.names[0].name
            else:
                continue
            top = mod.split(".")[0]
            assert top in sys.stdlib_module_names or top == "__future__", f"{path.name} imports {mod}"
