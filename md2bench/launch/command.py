"""What every backend runs for one run: the trainer command line (``train_command``) with its tags (``run_tags``),
the child's environment (``child_env``), the launch config it reads (``write_launch_config``), and the paths both
need (``package_root``, ``absolute_uri``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

from md2bench.files import write_text_atomic
from md2bench.grid import RunSpec
from md2bench.tracking import FLAG_TAG
from md2bench.train.rundir import PARENT_PID_ENV


def package_root() -> Path:
    """The folder holding the ``md2bench`` package (put on the children's PYTHONPATH)."""
    return Path(__file__).resolve().parents[2]  # md2bench/launch/command.py -> the folder above md2bench


def absolute_uri(uri: str) -> str:
    """A ``sqlite:///relative.db`` URI made absolute against the working directory (others unchanged)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((Path.cwd() / uri[len(prefix):]).resolve())
    return uri


def run_tags(spec: RunSpec) -> dict[str, str]:
    """The md2bench tags the orchestrator passes to every run (the trainer adds device, commit ...)."""
    return {
        "md2bench.run_key": spec.run_key,
        "md2bench.row": spec.row,
        "md2bench.label": spec.label,
        "md2bench.grid": spec.grid,
        "md2bench.seed": str(spec.seed),
        # the report's ✓/✗ columns, so that MLflow's compare view can colour and filter by them
        **{f"{FLAG_TAG}{key}": str(bool(value)).lower() for key, value in spec.flags.items()},
    }


def train_command(
    config_path: Path, spec: RunSpec, tracking_uri: str, experiment: str, parent_run_id: str | None
) -> list[str]:
    """The trainer command line for one run (always ``--resume``: the trainer resumes when a checkpoint exists)."""
    cmd = [
        sys.executable, "-m", "md2bench", "train", str(config_path),
        "--tracking-uri", tracking_uri, "--experiment", experiment, "--run-name", spec.run_name, "--no-progress",
    ]
    for key, value in run_tags(spec).items():
        cmd += ["--tag", f"{key}={value}"]
    if parent_run_id:
        cmd += ["--parent-run-id", parent_run_id]
    return cmd + ["--resume"]


def child_env(gpu: str | None, threads: int | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a child: pinned GPU (or none visible), md2bench importable, unbuffered output."""
    env = dict(os.environ if base is None else base)
    env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""
    root = str(package_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env[PARENT_PID_ENV] = str(os.getpid())  # the child stops itself when this process is gone
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, threads))
    return env


def write_launch_config(spec: RunSpec, device: str, tag: str) -> Path:
    """Write the run's config (with ``train.device``) to ``<run_dir>/launch-<tag>.toml`` atomically."""
    cfg = spec.config.override({"train.device": device})
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(run_dir / f"launch-{tag}.toml", cfg.to_toml())
