"""The package's shape as ARCHITECTURE.md states it: imports point down, and the orchestrator's side (the
run-folder contract, grids, the vocabulary, the launcher) imports no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "md2bench"

# Upper layers, from the top; a module may import its own layer and the ones below, never one above.
UPPER = ("md2bench.cli", "md2bench.launch", "md2bench.report", "md2bench.tune", "md2bench.bench", "md2bench.train")
# The foundations: none of these may import any upper layer (nor the reference formulation, a test oracle).
LOWER = ("config", "names", "geometry", "losses", "models", "data", "metrics", "method", "regions", "paper",
         "grid", "checkpoint", "files", "errors", "runtime", "evaluate", "floors", "findings")

TORCH_FREE = ("md2bench.train.rundir", "md2bench.names", "md2bench.grid", "md2bench.paper", "md2bench.regions",
              "md2bench.files", "md2bench.launch", "md2bench.launch.local", "md2bench.launch.dryrun")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("md2bench")}


def _files(name: str) -> list[Path]:
    folder = PACKAGE / name
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{name}.py"]


@pytest.mark.parametrize("name", LOWER)
def test_foundations_import_no_upper_layer(name: str) -> None:
    for path in _files(name):
        bad = sorted(i for i in _imports(path) if i.startswith(UPPER) or i.startswith("md2bench.reference"))
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"


def test_the_trainer_does_not_import_the_launcher_report_or_tuner() -> None:
    for path in _files("train"):
        bad = sorted(i for i in _imports(path) if i.startswith(UPPER[:5]))
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"


def test_the_orchestrator_side_imports_no_torch() -> None:
    code = f"import sys\nfor m in {TORCH_FREE!r}: __import__(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_no_module_outside_tracking_touches_the_mlflow_client() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "tracking.py":
            continue
        text = path.read_text()
        assert ".client." not in text and "tracker.client" not in text, path
        assert "import mlflow" not in text and "from mlflow" not in text, path
