"""The launcher (``md2bench.launch``): planning, slots, progress from the trainer's progress.json, and real trainer
subprocesses on the CPU.

The end-to-end tests (``slow``) run ``md2bench train`` as real subprocesses on the tiny synthetic world with a
SQLite MLflow store in ``tmp_path`` (the working directory): the smoke grid finishes and nests under one parent,
a second invocation trains nothing, a run stopped by Ctrl-C resumes from its checkpoint (not from scratch), a
failing row fails alone beside blocked and busy ones, and the Slurm backend runs through submitit's local
executor.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from md2bench.grid import Grid, load_grid
from md2bench.launch.command import train_command
from md2bench.launch.display import Display, table_rows
from md2bench.launch.local import _Active, _update_progress, run_grid
from md2bench.launch.outcome import BLOCKED, BUSY, FAILED, FINISHED, SKIPPED, GridResult, RunOutcome
from md2bench.launch.plan import plan
from md2bench.launch.slots import OrchestratorError, auto_runs_per_gpu, detect_slots, estimate_run_memory_gb
from md2bench.tracking import MLflowTracker
from md2bench.train.rundir import ProgressWriter
from tests.conftest import release_when_passing

REPO = Path(__file__).resolve().parent.parent


def _grid_file(tmp_path: Path, body: str, name: str = "g") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\nbase = "tiny"\nseeds = [0]\n' + textwrap.dedent(body))
    return path


def _uri(path: Path) -> str:
    return f"sqlite:///{path / 'mlruns.db'}"


# ============================================================================================ unit tests
def test_the_table_reads_the_trainers_progress_file_not_its_log(tmp_path: Path) -> None:
    """Steps, phase and rate come from progress.json as the trainer writes it (``ProgressWriter``); the
    human-readable train.log is never parsed."""
    (spec,) = load_grid("smoke").with_overrides({"train.out_dir": str(tmp_path)}).expand(rows=["baseline"])
    spec.run_dir.mkdir(parents=True)
    outcomes = {spec.run_key: RunOutcome(spec, "running", attempts=1, device="cpu")}
    active = _Active(outcomes[spec.run_key], slot=None, proc=None, log=None, config_path=Path("x"),
                     started=time.monotonic() - 1.0)
    (spec.run_dir / "train.log").write_text("INFO 9 steps/epoch, 6 steps planned\nINFO step 2 epoch 0 loss 0.1\n")
    _update_progress(active)
    assert active.step is None and table_rows(outcomes, {0: active})[0][3:5] == ("running", "")
    writer = ProgressWriter(spec.run_dir, total=6, batch_size=2, every_s=0.0)
    writer.update(4, force=True)
    _update_progress(active)
    assert active.step == (4, 6) and active.phase == "train"
    assert table_rows(outcomes, {0: active})[0][:5] == (spec.run_name, spec.run_key, "cpu", "running", "4/6")
    writer.update(6, "evaluate")
    _update_progress(active)
    assert active.step == (6, 6) and table_rows(outcomes, {0: active})[0][3:5] == ("evaluating (test)", "6/6")


def test_plan_skips_done_and_finished_runs_and_resumes_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    grid = load_grid(_grid_file(tmp_path, """
        [[rows]]
        name = "a"
        [[rows]]
        name = "b"
        set = { "train.lr" = 2e-4 }
        [[rows]]
        name = "c"
        set = { "train.lr" = 3e-4 }
        [[rows]]
        name = "d"
        set = { "train.lr" = 4e-4 }
    """))
    a, b, c, d = grid.expand()
    a.run_dir.mkdir(parents=True)
    (a.run_dir / "DONE").write_text("{}")
    b.run_dir.mkdir(parents=True)
    (b.run_dir / "checkpoint.pt").write_bytes(b"")
    tracker = MLflowTracker(_uri(tmp_path))
    run = tracker.start_run("g", run_name="c/seed0", tags={"md2bench.run_key": c.run_key})
    run.end("FINISHED")
    items = plan([a, b, c, d], tracker, "g")
    assert [i.action for i in items] == ["skip", "resume", "skip", "train"]
    assert "DONE" in items[0].reason and run.run_id in items[2].reason
    assert [i.action for i in plan([a, b, c, d])] == ["skip", "resume", "train", "train"]  # folders only


def test_cpu_slots_and_bad_gpu_requests() -> None:
    slots = detect_slots("none", cpu_jobs=2)
    assert [(s.label, s.gpu, s.device) for s in slots] == [("cpu", None, "cpu"), ("cpu", None, "cpu")]
    with pytest.raises(OrchestratorError, match="--cpu-jobs"):
        detect_slots("none", cpu_jobs=0)
    with pytest.raises(OrchestratorError, match="use 'all', 'none'"):
        detect_slots("first")
    with pytest.raises(OrchestratorError, match="not present"):
        detect_slots("99")


def test_memory_estimate_and_runs_per_gpu() -> None:
    spec = load_grid("synth-ablation").expand()[0]  # 320×96, batch 12, 3 frames, bf16
    # activations 7.5 GB × (96·320·12·3)/(192·640·12·3) = 1.875 GB, × 0.6 for bf16 = 1.125; + 1.5 GB fixed
    assert estimate_run_memory_gb(spec.config) == pytest.approx(2.625)
    # 80 GB free: 0.85·80 // 2.625 = 25 by memory; 16 cores / (1 + 2 workers) = 5 by CPU -> 5
    assert auto_runs_per_gpu([spec], ["0"], {"0": 80.0}, cpu_count=16) == 5
    # 10 GB free: 8.5 // 2.625 = 3 by memory
    assert auto_runs_per_gpu([spec], ["0"], {"0": 10.0}, cpu_count=64) == 3
    # 2 GPUs share 16 cores: 16 // (3 · 2) = 2 per GPU
    assert auto_runs_per_gpu([spec], ["0", "1"], {"0": 80.0, "1": 80.0}, cpu_count=16) == 2
    assert auto_runs_per_gpu([spec], ["0"], {}, cpu_count=16) == 1  # free memory unknown


def test_train_command_carries_tags_parent_and_resume(tmp_path: Path) -> None:
    spec = load_grid("smoke").expand()[0]
    cmd = train_command(tmp_path / "c.toml", spec, "sqlite:////x/mlruns.db", "smoke", "parent123")
    assert cmd[:5] == [sys.executable, "-m", "md2bench", "train", str(tmp_path / "c.toml")]
    joined = " ".join(cmd)
    for part in ("--tracking-uri sqlite:////x/mlruns.db", "--experiment smoke", "--run-name baseline/seed0",
                 f"--tag md2bench.run_key={spec.run_key}", "--tag md2bench.row=baseline",
                 "--tag md2bench.grid=smoke", "--tag md2bench.seed=0", "--parent-run-id parent123"):
        assert part in joined
    assert cmd[-1] == "--resume"


def test_display_redraws_in_place_on_a_tty_and_prints_lines_otherwise() -> None:
    rows = [("a/seed0", "k1", "cpu", "running", "2/6", "10s")]
    live = io.StringIO()
    d = Display(live, live=True)
    d.table(rows, "total: 1 running")
    d.table(rows, "total: 1 running")
    assert live.getvalue().count("\x1b[3F") == 1  # the second draw moves up over header + row + summary
    plain = io.StringIO()
    d = Display(plain, live=False, heartbeat_s=3600)
    d.event("start a/seed0")
    d.table(rows, "total: 1 running")  # no heartbeat yet
    d.table(rows, "total: 1 running", force_beat=True)
    text = plain.getvalue()
    assert "\x1b[" not in text and text.count("a/seed0") == 2 and "2/6" in text


def test_exit_codes_of_a_grid_result() -> None:
    spec = load_grid("smoke").expand()[0]
    res = lambda *states: GridResult("g", None, [RunOutcome(spec, s) for s in states])  # noqa: E731
    assert res(FINISHED, SKIPPED, BUSY).exit_code == 0
    assert res(FINISHED, BLOCKED).exit_code == 3
    assert res(BLOCKED, FAILED).exit_code == 1
    r = res(FINISHED)
    r.interrupted = True
    assert r.exit_code == 130


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    grid = load_grid("smoke")
    done = grid.expand()[0]
    done.run_dir.mkdir(parents=True)
    (done.run_dir / "DONE").write_text("{}")
    out = io.StringIO()
    result = run_grid(grid, gpus="none", dry_run=True, stream=out, tracking_uri=_uri(tmp_path))
    text = out.getvalue()
    for spec in grid.expand():
        assert spec.run_key in text
    assert "skip" in text and "1 to train, 0 to resume, 1 to skip" in text and "rough" in text
    assert [o.state for o in result.outcomes] == [SKIPPED, "queued"]
    assert not (tmp_path / "mlruns.db").exists()  # a dry run creates no store


def test_the_grids_world_is_rendered_once_before_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rows on the same world: one render, said once; a second call renders nothing and says nothing; a
    ``data.path`` that is a non-empty folder without a world stops the grid with a message naming the run."""
    from md2bench.data.synthetic import is_rendered, world_cache_path
    from md2bench.launch.worlds import prepare_worlds

    monkeypatch.chdir(tmp_path)
    specs = load_grid("smoke").expand()
    assert len(specs) == 2 and len({s.config.data.synth_preset for s in specs}) == 1
    root = world_cache_path(specs[0].config.data.synth_preset, specs[0].config.data.synth_seed)
    assert not is_rendered(root)
    out = io.StringIO()
    assert prepare_worlds(specs, out) == [root]
    assert is_rendered(root) and out.getvalue().count("rendering the synthetic world") == 1
    again = io.StringIO()
    assert prepare_worlds(specs, again) == [root] and again.getvalue() == ""
    (tmp_path / "not-a-world").mkdir()
    (tmp_path / "not-a-world" / "x.txt").write_text("x")
    moved = load_grid("smoke").with_overrides({"data.path": str(tmp_path / "not-a-world")}).expand()
    with pytest.raises(OrchestratorError, match=r"baseline/seed0: .*not-a-world.* not empty"):
        prepare_worlds(moved, io.StringIO())


def test_slurm_job_pickles_without_its_process() -> None:
    submitit = pytest.importorskip("submitit")
    from md2bench.launch.slurm import TrainJob

    job = TrainJob()
    job._proc = subprocess.Popen([sys.executable, "-c", "pass"])
    job._proc.wait()
    clone = pickle.loads(pickle.dumps(job))
    assert clone._proc is None
    delayed = job.checkpoint(["cmd"], {}, ".", "log", 1)  # requeue with the same arguments
    assert isinstance(delayed, submitit.helpers.DelayedSubmission) and delayed.args == (["cmd"], {}, ".", "log", 1)


# ============================================================================================ end to end
def _child_runs(tracker: MLflowTracker, experiment: str) -> list:
    return [r for r in tracker.find_runs(experiment) if r.data.tags.get("md2bench.kind") != "grid"]


def _parents(tracker: MLflowTracker, experiment: str) -> list:
    return tracker.find_runs(experiment, tags={"md2bench.kind": "grid"})


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """The smoke grid run once through the CLI in a fresh working directory."""
    from typer.testing import CliRunner

    from md2bench.cli import app

    work = tmp_path_factory.mktemp("smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        result = CliRunner().invoke(app, ["run-ablation", "smoke", "--gpus", "none", "--tracking-uri", _uri(work)])
        (work / "first.out").write_text(result.output)
        assert result.exit_code == 0, result.output
        yield work
    release_when_passing(request, work)


@pytest.mark.slow
def test_smoke_grid_finishes_nested_under_one_parent(smoke_dir: Path) -> None:
    grid = load_grid("smoke")
    tracker = MLflowTracker(_uri(smoke_dir))
    parents = _parents(tracker, "smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["md2bench.grid"] == "smoke"
    # MLflow 3 opens the experiment as model training (runs table), not as a GenAI app
    assert tracker.client.get_experiment_by_name("smoke").tags["mlflow.experimentKind"] == "custom_model_development"
    runs = _child_runs(tracker, "smoke")
    assert len(runs) == len(grid.expand()) == 2
    # the orchestrator ends by naming the next commands, with the store it used
    first = (smoke_dir / "first.out").read_text()
    # the fresh folder's world was rendered by the orchestrator, once, before the first run started
    assert first.count("rendering the synthetic world") == 1
    assert first.index("rendering the synthetic world") < first.index("start ")
    assert f"md2bench report smoke --out reports/smoke --tracking-uri {tracker.uri}" in first
    assert f"mlflow ui --backend-store-uri {tracker.uri}" in first
    by_key = {r.data.tags["md2bench.run_key"]: r for r in runs}
    for spec in grid.expand():
        run = by_key[spec.run_key]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert (run.data.tags["md2bench.row"], run.data.tags["md2bench.grid"], run.data.tags["md2bench.seed"]) == (
            spec.row, "smoke", "0")
        # the row's table flags as tags and params, for MLflow's compare view (smoke.toml: baseline all false)
        row = next(r for r in grid.rows if r.name == spec.row)
        assert row.flags and spec.flags == row.flags
        for key, value in row.flags.items():
            assert run.data.tags[f"md2bench.flag.{key}"] == str(value).lower()
            assert run.data.params[f"flag.{key}"] == str(value).lower()
        assert "test/abs_rel" in run.data.metrics
        done = json.loads((smoke_dir / spec.run_dir / "DONE").read_text())
        assert done["run_id"] == run.info.run_id and done["steps"] == spec.config.train.max_steps


@pytest.mark.slow
def test_second_invocation_trains_nothing(smoke_dir: Path) -> None:
    from typer.testing import CliRunner

    from md2bench.cli import app

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(smoke_dir)
        result = CliRunner().invoke(app, ["run-ablation", "smoke", "--gpus", "none", "--tracking-uri", _uri(smoke_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.count("skip ") == 2 and "start" not in result.output
    tracker = MLflowTracker(_uri(smoke_dir))
    assert len(_child_runs(tracker, "smoke")) == 2  # no new training run
    assert len(_parents(tracker, "smoke")) == 1  # a finished grid run again adds no new, empty parent run
    assert "nothing to train (no new MLflow parent run)" in result.output


@pytest.mark.slow
def test_ctrl_c_stops_the_run_and_the_next_invocation_resumes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _grid_file(tmp_path, """
        [[rows]]
        name = "long"
        set = { "train.max_steps" = 4 }
    """, name="resume")
    spec = load_grid(path).expand()[0]
    log = spec.run_dir / "train.log"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    orch = subprocess.Popen(
        [sys.executable, "-m", "md2bench", "run-ablation", str(path), "--gpus", "none", "--tracking-uri",
         _uri(tmp_path)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (log.is_file() and re.search(r"INFO step [1-9]", log.read_text())):
            assert orch.poll() is None and time.monotonic() < deadline, "the trainer never logged a step"
            time.sleep(0.05)
        orch.send_signal(signal.SIGINT)  # Ctrl-C: the orchestrator SIGTERMs its child, which checkpoints
        output, _ = orch.communicate(timeout=300)
    finally:
        if orch.poll() is None:
            orch.kill()
    if (spec.run_dir / "DONE").exists():
        pytest.skip("the run finished before the signal arrived (machine too fast for 4 steps)")
    assert orch.returncode == 130, output
    assert "killed" in output and (spec.run_dir / "checkpoint.pt").is_file()
    tracker = MLflowTracker(_uri(tmp_path))
    (first,) = _child_runs(tracker, "resume")
    assert first.info.status == "KILLED"
    assert _parents(tracker, "resume")[0].info.status == "KILLED"
    stopped_at = max(s for s, _ in tracker.metric_history(first.info.run_id, "train/loss"))

    result = run_grid(load_grid(path), gpus="none", tracking_uri=_uri(tmp_path), stream=io.StringIO())
    (outcome,) = result.outcomes
    assert outcome.state == FINISHED and outcome.resumed and outcome.attempts == 1
    resumed = re.findall(r"resuming .* step (\d+)", log.read_text())
    assert resumed and int(resumed[-1]) >= 1  # continued from the checkpoint, not from step 0
    assert json.loads((spec.run_dir / "DONE").read_text())["steps"] == 4
    (run,) = _child_runs(tracker, "resume")  # the same MLflow run, continued
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    steps = [s for s, _ in tracker.metric_history(run.info.run_id, "train/loss")]
    # log_every = 1: steps 1..4 each logged once (a restart would log 1.. again)
    assert steps == list(range(1, 5)) and 1 <= stopped_at < 4
    # the rerun continued the interrupted grid's parent run: no new, empty parent; the child is still under it
    (parent,) = _parents(tracker, "resume")
    assert parent.info.run_id == result.parent_run_id and parent.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id


def _ok_and_broken_rows(tmp_path: Path) -> str:
    """Grid-file rows (1 step each): ``ok`` trains on the tiny world, ``broken`` fails at once (no KITTI data)."""
    return f"""
        [set]
        "train.max_steps" = 1
        [[rows]]
        name = "ok"
        [[rows]]
        name = "broken"
        set = {{ "data.dataset" = "kitti", "data.split" = "eigen_zhou", "data.test_split" = "eigen", "data.path" = "{tmp_path / 'no_kitti'}" }}
    """


@pytest.mark.slow
def test_a_failing_row_fails_alone_beside_blocked_and_busy_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _grid_file(tmp_path, _ok_and_broken_rows(tmp_path) + f"""
        [[rows]]
        name = "needs_imagenet"
        set = {{ "model.pretrained" = "imagenet", "model.weights_path" = "{tmp_path / 'missing' / 'resnet18.pth'}" }}
        [[rows]]
        name = "elsewhere"
        set = {{ "train.lr" = 2e-4 }}
    """, name="mixed")
    grid = load_grid(path)
    busy = next(s for s in grid.expand() if s.row == "elsewhere")
    busy.run_dir.mkdir(parents=True)
    with (busy.run_dir / ".lock").open("a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # "another process" trains this run
        out = io.StringIO()
        result = run_grid(grid, gpus="none", retries=1, tracking_uri=_uri(tmp_path), stream=out)
    states = {o.spec.row: o for o in result.outcomes}
    assert states["ok"].state == FINISHED
    assert states["broken"].state == FAILED and states["broken"].attempts == 2  # 1 + --retries 1
    assert states["needs_imagenet"].state == BLOCKED and states["needs_imagenet"].attempts == 1
    assert "ImageNet weights" in states["needs_imagenet"].message  # the trainer's message, where to put the file
    assert states["elsewhere"].state == BUSY and states["elsewhere"].attempts == 1
    assert result.exit_code == 1
    tracker = MLflowTracker(_uri(tmp_path))
    (parent,) = _parents(tracker, "mixed")
    assert parent.info.status == "FAILED"
    ok = [r for r in _child_runs(tracker, "mixed") if r.data.tags.get("md2bench.row") == "ok"]
    assert len(ok) == 1 and ok[0].info.status == "FINISHED"
    assert ok[0].data.tags["mlflow.parentRunId"] == parent.info.run_id


@pytest.mark.slow
def test_an_unfinished_grid_rerun_with_other_rows_or_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid whose parent run did not finish (here FAILED), run again: with the same rows and seeds but other
    slots and retries it continues that parent (MLflow params are write-once: the new values go to a tag); with
    other rows it starts a new parent and leaves the old one as it was. Before, both raised MlflowException
    ("Changing param values is not allowed")."""
    monkeypatch.chdir(tmp_path)
    path = _grid_file(tmp_path, _ok_and_broken_rows(tmp_path), name="again")
    uri = _uri(tmp_path)
    first = run_grid(load_grid(path), rows=["broken"], gpus="none", retries=0, tracking_uri=uri, stream=io.StringIO())
    tracker = MLflowTracker(uri)
    (parent,) = _parents(tracker, "again")
    assert parent.info.status == "FAILED" and parent.data.params["grid.rows"] == "broken"

    out = io.StringIO()
    second = run_grid(load_grid(path), rows=["broken"], gpus="none", cpu_jobs=2, retries=1, tracking_uri=uri,
                      stream=out)
    assert second.parent_run_id == first.parent_run_id  # the same selection: its parent continued
    assert "continuing the grid's unfinished MLflow parent run" in out.getvalue()
    (parent,) = _parents(tracker, "again")
    assert parent.data.params["grid.retries"] == "0" and parent.data.params["grid.slots"] == "cpu"
    assert parent.data.tags["md2bench.grid.resumed_with"] == "grid.slots=cpu,cpu; grid.retries=1"

    out = io.StringIO()
    third = run_grid(load_grid(path), gpus="none", retries=0, tracking_uri=uri, stream=out)
    assert third.parent_run_id != first.parent_run_id
    assert f"unfinished MLflow parent run {first.parent_run_id} holds another selection" in out.getvalue()
    states = {o.spec.row: o.state for o in third.outcomes}
    assert states == {"ok": FINISHED, "broken": FAILED}
    parents = {p.info.run_id: p for p in _parents(tracker, "again")}
    assert len(parents) == 2 and parents[first.parent_run_id].data.params["grid.rows"] == "broken"
    assert parents[third.parent_run_id].data.params["grid.rows"] == "broken,ok"
    (ok,) = [r for r in _child_runs(tracker, "again") if r.data.tags.get("md2bench.row") == "ok"]
    assert ok.data.tags["mlflow.parentRunId"] == third.parent_run_id


@pytest.mark.slow
def test_slurm_backend_through_submitits_local_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("submitit")
    from md2bench.launch.slurm import run_grid_slurm

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    grid: Grid = load_grid("smoke")
    out = io.StringIO()
    result = run_grid_slurm(
        grid, rows=["baseline"], tracking_uri=_uri(tmp_path), folder=tmp_path / "slurm", gpus_per_run=0,
        cluster="local", wait=True, stream=out, poll_s=0.5,
    )
    (outcome,) = result.outcomes
    assert outcome.state == FINISHED, out.getvalue() + outcome.message
    tracker = MLflowTracker(_uri(tmp_path))
    (run,) = _child_runs(tracker, "smoke")
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    # Submitting again finds the run finished and submits nothing.
    again = run_grid_slurm(grid, rows=["baseline"], tracking_uri=_uri(tmp_path), folder=tmp_path / "slurm",
                           gpus_per_run=0, cluster="local", wait=True, stream=io.StringIO())
    assert [o.state for o in again.outcomes] == [SKIPPED]


def test_a_stopped_child_is_killed_unless_it_had_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C: a child that died of the signal during start-up is KILLED with a readable reason; one whose stop
    landed after it wrote DONE (while printing its summary) counts as finished, as the next invocation will."""
    from md2bench.launch import local
    from md2bench.launch.slots import Slot

    monkeypatch.chdir(tmp_path)
    specs = load_grid(_grid_file(tmp_path, """
        [[rows]]
        name = "early"
        [[rows]]
        name = "late"
        set = { "train.lr" = 2e-4 }
    """)).expand()
    tracker = MLflowTracker(_uri(tmp_path))
    display = Display(io.StringIO(), live=False)
    states = {}
    for spec, code in zip(specs, (-signal.SIGTERM, 1)):
        spec.run_dir.mkdir(parents=True)
        if spec.row == "late":
            (spec.run_dir / "DONE").write_text("{}")
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        active = _Active(RunOutcome(spec, attempts=1), Slot("cpu", None, 0), proc, None, tmp_path / "x.toml",
                         time.monotonic())
        assert local._finish(active, code, True, 1, tracker, "g", display) is False  # stopping: never retried
        states[spec.row] = (active.outcome.state, active.outcome.message)
    assert states["early"][0] == "killed" and "SIGTERM during start-up" in states["early"][1]
    assert states["late"] == (FINISHED, "")


def test_estimate_uses_the_measured_end_to_end_rate_of_finished_runs(tmp_path: Path) -> None:
    """A finished run in a real SQLite store (600 images in 120 s = 5 images/s on this device) makes the estimate
    a measurement: 3 runs of 300 images on 2 slots = 3 x 60 s / 2 = 90 s; another shape stays rough."""
    from mlflow.entities import Param

    from md2bench.launch.estimate import estimate_line, estimate_seconds, measured_rates, spec_rate_key, this_device_tag
    from md2bench.launch.slots import Slot

    device = this_device_tag("cpu")
    tracker = MLflowTracker(_uri(tmp_path))
    grid = load_grid("smoke").with_overrides({"train.max_steps": 150, "train.batch_size": 2})
    specs = grid.expand()[:1] * 3
    cfg = specs[0].config.override({"train.max_steps": 300})
    client = tracker.client
    run = client.create_run(tracker.experiment_id("earlier"), start_time=1_000_000, tags={"md2bench.device": device})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in cfg.flat().items()])
    client.set_terminated(run.info.run_id, "FINISHED", end_time=1_000_000 + 120_000)
    rates = measured_rates(tracker)
    assert rates == {spec_rate_key(cfg, device): (pytest.approx(5.0), 1)}
    slots = [Slot("cpu", None, 0), Slot("cpu", None, 1)]
    images, seconds = estimate_seconds(specs, slots, rates, device)
    assert images == 3 * 300 and seconds == pytest.approx(90.0)
    line = estimate_line(specs, slots, tracker)
    assert "measured" in line and "1m30s" in line and "median 5.0 images/s" in line
    # another shape (batch 4) has no measurement: the rough constant, said so
    other = [s for s in load_grid("smoke").with_overrides({"train.batch_size": 4}).expand()]
    assert "rough (no finished run of this shape" in estimate_line(other, slots, tracker)
    assert estimate_seconds(other, slots, rates, device) == estimate_seconds(other, slots)


def test_grid_progress_counts_steps_over_the_whole_grid() -> None:
    from md2bench.launch.display import grid_progress

    specs = load_grid("cpu-mono").expand()  # rows of 400 (reference start), 1,000 (warm-up), ... steps x 3 seeds
    total = sum(s.config.train.max_steps for s in specs)
    assert {400, 1000} <= {s.config.train.max_steps for s in specs}
    outcomes = {s.run_key: RunOutcome(s) for s in specs}
    assert grid_progress(outcomes, {}) == f"grid 0/{total:,} steps (0%)"  # nothing running: no time left to tell
    ref = next(s for s in specs if s.config.train.max_steps == 400)
    warm = next(s for s in specs if s.config.train.max_steps == 1000)
    outcomes[ref.run_key].state = FINISHED
    now = time.monotonic()
    # the warm-up run: started here at step 100 60 s ago, now at 400 -> 5 steps/s for the total - 400 - 400 left
    running = _Active(outcomes[warm.run_key], slot=None, proc=None, log=None, config_path=Path("x"), started=now,
                      first_step=(100, now - 60.0), step=(400, 1000))
    text = grid_progress(outcomes, {0: running})
    minutes = int((total - 800) / 5) // 60
    assert text.startswith(f"grid 800/{total:,} steps ({100 * 800 // total}%), ~{minutes}m")
    unknown = {s.run_key: RunOutcome(s) for s in load_grid("cpu-mono").with_overrides({"train.max_steps": 0}).expand()}
    assert grid_progress(unknown, {}) == ""  # epochs only: lengths in steps unknown here
