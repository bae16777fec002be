"""The structured progress file: the trainer's writer and the orchestrator's reader in one test, real files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from md2bench.grid import load_grid
from md2bench.launch.display import grid_progress
from md2bench.launch.local import _Active, _update_progress
from md2bench.launch.outcome import RunOutcome
from md2bench.train.rundir import PROGRESS_NAME, Progress, ProgressWriter, read_progress, write_progress


def test_writer_throttles_and_the_reader_sees_whole_files(tmp_path: Path) -> None:
    writer = ProgressWriter(tmp_path, total=100, batch_size=8, every_s=0.2)
    assert writer.update(0, force=True)
    first = read_progress(tmp_path)
    assert first is not None and (first.step, first.total, first.phase, first.images_per_s) == (0, 100, "train", None)
    assert not writer.update(1)  # within every_s: not written
    assert read_progress(tmp_path).step == 0
    assert writer.update(5, "validate")  # a new phase is written at once
    assert read_progress(tmp_path).phase == "validate"
    writer.update(5, "train", force=True)
    time.sleep(0.25)
    assert writer.update(10)
    again = read_progress(tmp_path)
    assert again.step == 10 and again.images_per_s == pytest.approx(5 * 8 / 0.25, rel=0.5)  # 5 steps of 8 images
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind
    (tmp_path / PROGRESS_NAME).write_text("{half")  # a broken file reads as no progress, not an error
    assert read_progress(tmp_path) is None
    with pytest.raises(ValueError, match="unknown phase"):
        write_progress(tmp_path, Progress(1, 2, "sleeping", None, time.time()))


def test_the_grid_bar_reads_the_trainers_progress_files(tmp_path: Path) -> None:
    specs = load_grid("cpu-mono").with_overrides({"train.out_dir": str(tmp_path)}).expand()
    outcomes = {s.run_key: RunOutcome(s) for s in specs}
    warm = next(s for s in specs if s.config.train.max_steps == 1000)
    run_dir = warm.run_dir
    run_dir.mkdir(parents=True)
    # a stale file from an earlier attempt is ignored (written before this attempt started)...
    write_progress(run_dir, Progress(999, 1000, "train", 50.0, time.time() - 3600))
    active = _Active(outcomes[warm.run_key], slot=None, proc=None, log=None, config_path=Path("x"),
                     started=time.monotonic())
    _update_progress(active)
    assert active.step is None and active.images_per_s is None
    # ...the trainer's own file drives the table and the grid line
    writer = ProgressWriter(run_dir, total=1000, batch_size=8, every_s=0.0)
    writer.update(100, force=True)
    time.sleep(0.05)
    writer.update(120)
    _update_progress(active)
    assert active.step == (120, 1000) and active.phase == "train" and active.images_per_s > 0
    line = grid_progress(outcomes, {0: active})
    total = sum(s.config.train.max_steps for s in specs)  # every row of cpu-mono stops at max_steps
    assert line.startswith(f"grid 120/{total:,} steps ({100 * 120 // total}%), ") and " img/s now" in line
    writer.update(120, "evaluate")
    _update_progress(active)
    assert active.phase == "evaluate" and " img/s now" not in grid_progress(outcomes, {0: active})
    assert json.loads((run_dir / PROGRESS_NAME).read_text())["phase"] == "evaluate"


@pytest.mark.slow
@pytest.mark.parametrize("automask", [True, False])
def test_pose_probe_script_runs_on_a_tiny_world(tmp_path: Path, automask: bool) -> None:
    """experiments/pose_probe.py (the README's monocular finding) as a user runs it: a real subprocess on a tiny
    rendered world, one JSON line per report, the auto-mask share only where auto-masking is on."""
    import subprocess
    import sys

    from md2bench.data.synthetic import render_world

    world = render_world(tmp_path / "tiny", preset="tiny", progress=False).root
    script = Path(__file__).resolve().parents[1] / "experiments" / "pose_probe.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--steps", "4", "--every", "2", f"data.path={world}", "data.synth_preset=tiny",
         "data.height=64", "data.width=160", "train.batch_size=2", f"loss.automask={str(automask).lower()}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [line["step"] for line in lines] == [2, 4]
    for line in lines:
        assert -1.0 <= line["t_cos"] <= 1.0 and line["abs_cx"] >= 0.0 and line["loss"] > 0.0
        assert (line["automask"] is not None) == automask
