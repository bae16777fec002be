"""The command line as a user meets it: every command's --help, and one bad argument each, answered with exit code
2 and a message that says what to do (not a traceback, not a silent success)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from md2bench.cli import app

REPO = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    """Every leaf command as it is typed, e.g. ``train`` or ``data synth``."""
    root = typer.main.get_command(app)
    names: list[str] = []

    def walk(group: Any, prefix: str) -> None:  # a click group (typer may bring its own copy of click)
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                names.append(prefix + name)

    walk(root, "")
    return sorted(names)


# One bad argument per command and a fragment of the message that must name the fix.
BAD = {
    "bench": (["--parts", "nope"], "choose from train, loader, render, reference"),
    "train": (["train.lrr=0.1"], "did you mean 'train.lr'"),
    "evaluate": (["--checkpoint", "{tmp}/missing.pt"], "train a model first"),
    "run-ablation": (["no-such-grid", "--dry-run"], "neither a file nor a name in experiments/"),
    "report": (["no-such-grid", "--tracking-uri", "sqlite:///{tmp}/empty.db"], "no MLflow experiment called"),
    "tune": (["--space", "{tmp}/missing.toml", "--trials", "1", "--study", "s", "--tracking-uri",
              "sqlite:///{tmp}/t.db"], "see experiments/search-space.toml for an example"),
    "data synth": (["--out", "{tmp}/world", "--preset", "nope"], "choose one of: tiny, small, default"),
    "data prepare-kitti": (["--raw", "{tmp}/no-kitti"], "download the archives"),
}


def test_every_command_has_a_bad_argument_case() -> None:
    assert sorted(BAD) == _commands()


@pytest.mark.parametrize("command", _commands())
def test_help_of_every_command(command: str) -> None:
    result = CliRunner().invoke(app, [*command.split(), "--help"], prog_name="md2bench")
    assert result.exit_code == 0, result.output
    assert "Usage: md2bench " + command in " ".join(result.output.split())


@pytest.mark.parametrize("command", sorted(BAD))
def test_a_bad_argument_exits_2_with_the_fix(command: str, tmp_path: Path) -> None:
    args, hint = BAD[command]
    result = CliRunner().invoke(app, [*command.split(), *(a.format(tmp=tmp_path) for a in args)], prog_name="md2bench")
    output = " ".join(result.output.split())  # the rich error box wraps lines
    assert result.exit_code == 2, output
    assert hint in output, output
    assert "Traceback" not in output


def test_evaluate_rejects_an_unknown_crop_before_loading_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--crop", "eigen"],
                                prog_name="md2bench")
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "--crop must be garg (the Eigen/Garg crop) or none" in output, output


@pytest.mark.parametrize("entry", [["cli.py"], ["-m", "md2bench"]])
def test_the_shims_start_the_same_app(entry: list[str]) -> None:
    out = subprocess.run([sys.executable, *entry, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for command in ("bench", "train", "evaluate", "run-ablation", "report", "tune", "data"):
        assert command in out.stdout
