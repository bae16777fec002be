"""One MLflow store shared by many processes, and runs that never leak (issue 13): real processes, real SQLite.

One test per case of the issue's table (each failed before the fix), plus fast tests of the claim rules:

- many processes starting together on a store that does not exist yet;
- two orchestrators from two folders on one store;
- ``kill -9`` of a trainer before its first checkpoint, then the same command;
- ``kill -9`` of the orchestrator's process group (its trainer child lives in its own session);
- an artifact root that is a file (a set-up error after the run started);
- a loss that becomes NaN before any checkpoint; a validation that becomes NaN at the first epoch end; a rerun
  of a diverged run; non-finite numbers in the config;
- a full disk while writing a checkpoint (a small tmpfs where this machine lets the test mount one);
- a read-only store.

Small on purpose: the ``tiny`` preset on a mini synthetic world (3 drives × 5 frames: 5 train items = 2 steps per
epoch at batch 2, 1 val item, 3 test items), one intra-op thread per process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from md2bench.config import Config, load_config
from md2bench.tracking import (
    END_REASON_TAG,
    HEARTBEAT_TAG,
    OWNER_HOST_TAG,
    OWNER_PID_TAG,
    RUN_KEY_TAG,
    STALE_AFTER_S,
    ClaimBusyError,
    MLflowTracker,
    retry_locked,
)
from md2bench.train import rundir
from md2bench.train.loop import fit

REPO = Path(__file__).resolve().parent.parent


# ============================================================================================ helpers
@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from md2bench.data.synthetic import render_world

    root = render_world(tmp_path_factory.mktemp("world") / "mini", preset="tiny", sequences=3, frames=5,
                        progress=False).root
    return Path(root)


def _uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlruns.db'}"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated store, made once (MLflow's migrations take seconds); tests copy it."""
    folder = tmp_path_factory.mktemp("template")
    MlflowClient(_uri(folder)).search_experiments()
    return folder / "mlruns.db"


def _store(folder: Path, template: Path) -> str:
    """A copy of the empty store in ``folder``; its URI."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, folder / "mlruns.db")
    return _uri(folder)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _cfg(world: Path, out: Path, *overrides: str) -> Config:
    return load_config("tiny", [f"data.path={world}", f"train.out_dir={out}", *overrides])


def _md2bench(*args: str, cwd: Path) -> subprocess.Popen:
    """``python -m md2bench ARGS`` in its own session (so its process group can be signalled), output piped."""
    return subprocess.Popen([sys.executable, "-m", "md2bench", *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(ready: Callable[[], bool], proc: subprocess.Popen | None, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited before {what}: {proc.communicate()[0]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _all_runs(uri: str) -> list[Any]:
    client = MlflowClient(uri)
    return list(client.search_runs([e.experiment_id for e in client.search_experiments()]))


def _runs_of(uri: str, run_key: str) -> list[Any]:
    return [r for r in _all_runs(uri) if r.data.tags.get(RUN_KEY_TAG) == run_key]


def _log_has(path: Path, text: str) -> bool:
    return path.is_file() and text in path.read_text(errors="replace")


@pytest.fixture(autouse=True)
def _kill_leftovers() -> Iterator[list[subprocess.Popen]]:
    """Processes a test started are killed (whole group) if it failed before they ended."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ============================================================================================ the store
_STORE_USER = textwrap.dedent("""
    import sys
    from md2bench.tracking import MLflowTracker
    role, uri = sys.argv[1], sys.argv[2]
    tracker = MLflowTracker(uri)
    if role == "report":   # what `md2bench report` does first: read
        tracker.find_runs(None)
    elif role == "grid":   # `md2bench run-ablation`: the experiment, then its parent run
        tracker.experiment_id("g")
        tracker.start_run("g", run_name="grid", tags={"md2bench.kind": "grid"}).end("FINISHED")
    else:                  # `md2bench train` / `md2bench tune`: a run with params and metrics
        run = tracker.start_run(role, run_name=role)
        run.log_params({"train.lr": 1e-4})
        run.log_metrics({"train/loss": 0.5}, step=1)
        run.end("FINISHED")
    print("ok")
""")


def test_processes_starting_together_on_a_new_store_all_succeed(tmp_path: Path,
                                                                 _kill_leftovers: list[subprocess.Popen]) -> None:
    """Issue row 1: processes started at the same moment on a store that does not exist yet (before: alembic
    errors, "CircularDependencyError", and sometimes a store left unreadable)."""
    uri = _uri(tmp_path)
    roles = ["train", "grid", "tune", "report"]
    procs = [subprocess.Popen([sys.executable, "-c", _STORE_USER, role, uri], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True) for role in roles]
    _kill_leftovers.extend(procs)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for role, proc, output in zip(roles, procs, outputs):
        assert proc.returncode == 0, f"{role}: {output}"
    # The store opens and holds exactly what the writers wrote.
    runs = _all_runs(uri)
    assert sorted(r.info.run_name for r in runs) == ["grid", "train", "tune"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert (tmp_path / "mlruns.db.lock").exists()  # the lock file lives beside the store


def test_locked_writes_are_retried_until_sqlite_lets_them_through(tmp_path: Path) -> None:
    """A writer that finds the database locked (SQLite has one writer) waits with backoff instead of failing."""
    import sqlite3
    import threading

    db = tmp_path / "x.db"
    holder = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
    holder.execute("CREATE TABLE t (v INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")  # nobody else may write (or read) until it commits
    writer = sqlite3.connect(db, timeout=0, isolation_level=None)  # no waiting inside SQLite: fails at once
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        writer.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    attempts: list[int] = []

    def insert() -> None:
        attempts.append(1)
        writer.execute("INSERT INTO t VALUES (2)")

    retry_locked(insert, budget_s=30)
    release.join()
    assert writer.execute("SELECT v FROM t").fetchall() == [(2,)]
    assert len(attempts) > 1  # it did meet the lock, and got through once it was released


# ============================================================================================ claims
def _foreign_claim(tracker: MLflowTracker, experiment: str, run_key: str, heartbeat: float) -> str:
    """A RUNNING run claimed by a process on another machine, with the given heartbeat time."""
    run = tracker.start_run(experiment, run_name="elsewhere", tags={
        RUN_KEY_TAG: run_key, OWNER_HOST_TAG: "another-machine", OWNER_PID_TAG: "4242",
        HEARTBEAT_TAG: f"{heartbeat:.3f}"})
    return run.run_id


def test_a_fresh_claim_from_another_machine_is_busy_and_a_stale_one_is_taken_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path) -> None:
    from md2bench.grid import load_grid
    from md2bench.launch.plan import plan

    monkeypatch.chdir(tmp_path)
    tracker = MLflowTracker(_store(tmp_path, empty_store))
    grid_file = tmp_path / "g.toml"
    grid_file.write_text('name = "g"\nbase = "tiny"\nseeds = [0]\n[[rows]]\nname = "a"\n')
    (spec,) = load_grid(grid_file).expand()
    fresh = _foreign_claim(tracker, "g", spec.run_key, time.time() - 5)
    # The planner sees it busy, whatever the folder; the trainer's claim fails naming it.
    (item,) = plan([spec], tracker, "g")
    assert item.action == "busy" and fresh in item.reason and "another-machine" in item.reason
    started: list[str] = []

    def new_run() -> Any:
        run = tracker.start_run("g", tags={RUN_KEY_TAG: spec.run_key})
        started.append(run.run_id)
        return run

    with pytest.raises(ClaimBusyError, match=fresh):
        tracker.claim_run_key(spec.run_key, experiment="g", adopt_run_id=None, new_run=new_run)
    assert started == []
    # The same claim with a heartbeat older than STALE_AFTER_S: its process died; the key is free again.
    tracker.client.set_tag(fresh, HEARTBEAT_TAG, f"{time.time() - STALE_AFTER_S - 1:.3f}")
    assert plan([spec], tracker, "g")[0].action == "train"
    run, finished = tracker.claim_run_key(spec.run_key, experiment="g", adopt_run_id=None, new_run=new_run)
    assert finished is None and run is not None and started == [run.run_id]
    old = tracker.get_run(fresh)
    assert old.info.status == "KILLED" and old.data.tags[END_REASON_TAG] == "owner-gone"
    mine = tracker.get_run(run.run_id)
    assert mine.info.status == "RUNNING" and mine.data.tags[OWNER_PID_TAG] == str(os.getpid())


def test_zombie_runs_of_older_versions_are_marked_by_the_next_invocation(tmp_path: Path, empty_store: Path) -> None:
    """RUNNING runs without heartbeats (md2bench before claims) are marked once they show no sign of life."""
    tracker = MLflowTracker(_store(tmp_path, empty_store))
    exp = tracker.experiment_id("g")
    hour_ago = int((time.time() - 3600) * 1000)
    zombie = tracker.client.create_run(exp, start_time=hour_ago, tags={RUN_KEY_TAG: "k1"}).info.run_id
    recent = tracker.client.create_run(exp, tags={RUN_KEY_TAG: "k2"}).info.run_id
    marked = tracker.reap_stale_runs("g")
    assert [c.run_id for c in marked] == [zombie]
    run = tracker.get_run(zombie)
    assert run.info.status == "KILLED" and run.data.tags[END_REASON_TAG] == "zombie"
    assert "gone" in run.data.tags["md2bench.end_note"]
    assert tracker.get_run(recent).info.status == "RUNNING"  # it may still be alive: left alone


# ============================================================================================ orchestrators
def _pair_grid(folder: Path, world: Path) -> Path:
    path = folder / "pair.toml"
    path.write_text(textwrap.dedent(f"""
        name = "pair"
        base = "tiny"
        seeds = [0]
        [set]
        "train.max_steps" = 1
        "data.path" = "{world}"
        [[rows]]
        name = "r1"
    """))
    return path


@pytest.mark.slow
def test_two_orchestrators_from_two_folders_train_each_key_once(tmp_path: Path, mini: Path,
                                                                _kill_leftovers: list[subprocess.Popen]) -> None:
    """Issue row 2: two `run-ablation` of one grid, started together from two folders (different run folders) on
    one new store: the key is trained once (before: twice, and the report silently used the newer); the other
    orchestrator reports it busy or finished elsewhere."""
    from md2bench.grid import load_grid

    grid = _pair_grid(tmp_path, mini)
    uri = _uri(tmp_path)
    folders = [tmp_path / "a", tmp_path / "b"]
    procs = []
    for folder in folders:
        folder.mkdir()
        procs.append(_md2bench("run-ablation", str(grid), "--gpus", "none", "--tracking-uri", uri, cwd=folder))
    _kill_leftovers.extend(procs)
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = [r for r in _all_runs(uri) if r.data.tags.get("md2bench.kind") != "grid"]
    keys = sorted(s.run_key for s in load_grid(grid).expand())
    assert sorted(r.data.tags[RUN_KEY_TAG] for r in runs) == keys, [(r.data.tags, r.info.status) for r in runs]
    assert all(r.info.status == "FINISHED" and r.data.tags[END_REASON_TAG] == "finished" for r in runs)
    assert "RUNNING" not in {r.info.status for r in _all_runs(uri)}
    done = [f / "md2bench_runs" / k / "DONE" for f in folders for k in keys]
    assert sum(p.is_file() for p in done) == 1  # trained in exactly one of the two folders


@pytest.mark.slow
def test_kill_9_of_the_orchestrator_group_stops_its_child_and_the_next_invocation_finishes(
        tmp_path: Path, mini: Path, monkeypatch: pytest.MonkeyPatch, _kill_leftovers: list[subprocess.Popen]) -> None:
    """Issue row 4: SIGKILL of the orchestrator's process group. Its trainer child (own session) stops by itself
    (checkpoint, run KILLED "parent-gone") instead of training on as an orphan; the next invocation marks the
    dead grid's parent run and finishes the grid: one run per key, nothing left RUNNING."""
    import io

    from md2bench.grid import load_grid
    from md2bench.launch import FINISHED, run_grid

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "one.toml"
    path.write_text(f'name = "one"\nbase = "tiny"\nseeds = [0]\n[set]\n"train.max_steps" = 0\n"train.epochs" = 2\n'
                    f'"data.path" = "{mini}"\n[[rows]]\nname = "r1"\n')
    (spec,) = load_grid(path).expand()
    log = spec.run_dir / "train.log"
    uri = _uri(tmp_path)
    orch = _md2bench("run-ablation", str(path), "--gpus", "none", "--tracking-uri", uri, cwd=tmp_path)
    _kill_leftovers.append(orch)
    _wait_for(lambda: _log_has(log, "steps planned"), orch, "the trainer's claim")  # it trains now
    child = int((spec.run_dir / rundir.LOCK_NAME).read_text())
    os.killpg(orch.pid, signal.SIGKILL)
    orch.wait()
    _wait_for(lambda: not _pid_alive(child), None, "the orphaned trainer to stop", timeout_s=120)
    (first,) = _runs_of(uri, spec.run_key)
    assert first.info.status == "KILLED" and first.data.tags[END_REASON_TAG] == "parent-gone"
    assert "the orchestrator (pid" in log.read_text()

    stream = io.StringIO()
    result = run_grid(load_grid(path), gpus="none", tracking_uri=uri, stream=stream)
    (outcome,) = result.outcomes
    assert outcome.state == FINISHED and outcome.resumed
    (run,) = _runs_of(uri, spec.run_key)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    everything = _all_runs(uri)
    assert "RUNNING" not in {r.info.status for r in everything}
    # the dead grid's parent was marked (its owner is gone) and then continued by the rerun: one parent, FINISHED
    output = stream.getvalue()
    assert "was left RUNNING by a process that is gone" in output
    assert "continuing the grid's unfinished MLflow parent run" in output
    parents = [r for r in everything if r.data.tags.get("md2bench.kind") == "grid"]
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_run_id
    assert parents[0].info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == result.parent_run_id


# ============================================================================================ the trainer
def _train_args(world: Path, out: Path, uri: str, *overrides: str) -> list[str]:
    return ["train", "tiny", f"data.path={world}", f"train.out_dir={out}", *overrides, "--tracking-uri", uri,
            "--no-progress"]


@pytest.mark.slow
def test_kill_9_before_the_first_checkpoint_continues_the_same_mlflow_run(
        tmp_path: Path, mini: Path, empty_store: Path, _kill_leftovers: list[subprocess.Popen]) -> None:
    """Issue row 3: SIGKILL right after the trainer started its MLflow run (no checkpoint yet), then the same
    training again (here in-process, to save a start-up): the same MLflow run continues to FINISHED (before: a
    second run, the first RUNNING forever)."""
    uri = _store(tmp_path, empty_store)  # the store exists first: this test is about the trainer
    cfg = _cfg(mini, tmp_path / "runs", "train.max_steps=0")
    run_dir = tmp_path / "runs" / cfg.run_key
    args = _train_args(mini, tmp_path / "runs", uri, "train.max_steps=0")
    proc = _md2bench(*args, cwd=tmp_path)
    _kill_leftovers.append(proc)
    _wait_for(lambda: _log_has(run_dir / rundir.LOG_NAME, "steps planned"), proc, "the MLflow run")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / rundir.CHECKPOINT_NAME).exists()  # killed before the first checkpoint
    (killed,) = _runs_of(uri, cfg.run_key)
    assert killed.info.status == "RUNNING"  # what SIGKILL leaves behind

    again = fit(cfg, MLflowTracker(uri), progress=False)
    assert again.status == "FINISHED", again.message
    (run,) = _runs_of(uri, cfg.run_key)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags[END_REASON_TAG] == "finished" and "test/abs_rel" in run.data.metrics


def test_artifact_root_that_is_a_file_fails_in_one_line_and_ends_the_run(tmp_path: Path, mini: Path,
                                                                        empty_store: Path) -> None:
    """Issue row 5: the run's first artifact cannot be written (``mlartifacts`` is a file), a set-up error after
    the run started: one line naming the file, exit 1, and the MLflow run FAILED (before: left RUNNING)."""
    from md2bench.cli import app

    uri = _store(tmp_path, empty_store)
    (tmp_path / "mlartifacts").write_text("not a folder")
    result = CliRunner().invoke(app, _train_args(mini, tmp_path / "runs", uri, "train.max_steps=1"))
    assert result.exit_code == rundir.EXIT_FAILED, result.output
    message = result.output.strip()
    assert "\n" not in message and "Traceback" not in message
    assert f"{tmp_path / 'mlartifacts'} is a file where a folder is needed" in message
    (run,) = _all_runs(uri)
    assert run.info.status == "FAILED" and run.data.tags[END_REASON_TAG] == "error"
    assert "mlartifacts is a file" in run.data.tags["md2bench.failure"]


@pytest.mark.slow
def test_nan_before_any_checkpoint_says_none_exists_and_a_rerun_says_it_diverged(tmp_path: Path, mini: Path,
                                                                                 empty_store: Path) -> None:
    """Issue row 6: ``train.lr=1e6`` makes the loss NaN at step 2, before the first checkpoint (end of epoch 0):
    the message says that no checkpoint exists and what to change (before: it named a checkpoint that did not
    exist); the same command again says the run diverged instead of silently repeating it."""
    tracker = MLflowTracker(_store(tmp_path, empty_store))
    cfg = _cfg(mini, tmp_path / "runs", "train.lr=1e6", "train.max_steps=0")
    result = fit(cfg, tracker, progress=False)
    assert result.status == "FAILED" and "non-finite loss at step 2" in result.message, result.message
    assert "no checkpoint exists" in result.message and "lower train.lr (now 1e+06)" in result.message
    assert not (result.run_dir / rundir.CHECKPOINT_NAME).exists()
    run = tracker.get_run(result.run_id)
    assert run.info.status == "FAILED" and run.data.tags[END_REASON_TAG] == "non-finite"

    again = fit(cfg, tracker, progress=False)
    assert again.status == "FAILED" and again.exit_code == rundir.EXIT_FAILED
    assert "diverged before" in again.message and "--no-resume" in again.message
    assert len(_runs_of(tracker.uri, cfg.run_key)) == 1  # nothing was trained again


@pytest.mark.slow
def test_nan_validation_never_becomes_the_last_good_checkpoint(tmp_path: Path, mini: Path) -> None:
    """Issue row 7: ``train.lr=1e30`` with one step per epoch: the first step blows the weights up and the
    epoch's validation is NaN; no checkpoint is written from that state (before: it was, as "last good")."""
    cfg = _cfg(mini, tmp_path / "runs", "train.lr=1e30", "train.batch_size=4", "train.epochs=2",
               "train.max_steps=0")
    result = fit(cfg, progress=False)
    assert result.status == "FAILED", result.message
    assert "non-finite validation after epoch 0 (step 1)" in result.message and "val/loss=nan" in result.message
    assert "no checkpoint exists" in result.message
    assert not (result.run_dir / rundir.CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_in_the_config_are_config_errors(tmp_path: Path, value: str) -> None:
    """Issue row 8: ``train.lr=nan`` passed validation and failed later with a raw ValueError (exit 1)."""
    from md2bench.cli import app
    from md2bench.config import ConfigError

    with pytest.raises(ConfigError, match="train.lr must be a finite number"):
        load_config("tiny", [f"train.lr={value}"])
    (tmp_path / "c.toml").write_text(f"[loss]\nsmoothness = {value}\n")
    with pytest.raises(ConfigError, match="loss.smoothness must be a finite number"):
        load_config(tmp_path / "c.toml")
    result = CliRunner().invoke(app, ["train", "tiny", f"train.lr={value}", f"train.out_dir={tmp_path}"])
    assert result.exit_code == 2 and "finite number" in result.output


# ============================================================================================ errors that say what to do
@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs (a checkpoint of the tiny preset needs ~300 MB); skipped where it cannot be mounted."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root; run as root (or in a container) to test a full disk")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip() or made.returncode}); a full disk is not tested")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_names_the_cause_in_one_line_and_fails_the_run(tmp_path: Path, mini: Path, empty_store: Path,
                                                                    small_tmpfs: Path) -> None:
    """Issue row 9: the first checkpoint does not fit on the run folder's disk (before: "RuntimeError: [enforce
    fail at inline_container.cc:672] . unexpected pos ...", the cause only inside train.log)."""
    from md2bench.cli import app

    uri = _store(tmp_path, empty_store)
    result = CliRunner().invoke(app, _train_args(mini, small_tmpfs, uri, "train.max_steps=0"))
    cfg = _cfg(mini, small_tmpfs, "train.max_steps=0")
    checkpoint = small_tmpfs / cfg.run_key / rundir.CHECKPOINT_NAME
    assert result.exit_code == rundir.EXIT_FAILED, result.output
    message = result.output.strip()
    assert "\n" not in message and "Traceback" not in message and "inline_container" not in message
    assert message.startswith(f"error: no space left on device: could not write checkpoint {checkpoint}")
    assert "train.out_dir" in message  # what to change
    assert not checkpoint.exists() and not list(checkpoint.parent.glob(".checkpoint.pt.*"))  # no half file
    (run,) = _all_runs(uri)
    assert run.info.status == "FAILED" and "no space left on device" in run.data.tags["md2bench.failure"]


@pytest.fixture
def read_only_store(tmp_path: Path, empty_store: Path) -> Iterator[Path]:
    """A folder holding an existing store, made read-only (permissions; a read-only bind mount for root)."""
    folder = tmp_path / "store"
    _store(folder, empty_store)
    if os.geteuid() != 0:
        os.chmod(folder / "mlruns.db", 0o444)
        os.chmod(folder, 0o555)
        try:
            yield folder
        finally:
            os.chmod(folder, 0o755)
        return
    for command in (["mount", "--bind", str(folder), str(folder)],
                    ["mount", "-o", "remount,ro,bind", str(folder)]):
        made = subprocess.run(command, capture_output=True, text=True)
        if made.returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)
            pytest.skip(f"root cannot make a read-only folder here ({made.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_read_only_store_fails_in_one_line(tmp_path: Path, mini: Path, read_only_store: Path,
                                            _kill_leftovers: list[subprocess.Popen]) -> None:
    """Issue row 10: a store that cannot be written (before: ~60 lines of MLflow's SQLAlchemy traceback before
    the one line that matters). A real process, so MLflow's own logging would show."""
    proc = _md2bench(*_train_args(mini, tmp_path / "runs", _uri(read_only_store), "train.max_steps=1"), cwd=tmp_path)
    _kill_leftovers.append(proc)
    output = proc.communicate(timeout=300)[0].strip()
    assert proc.returncode == rundir.EXIT_FAILED, output
    assert "\n" not in output and "Traceback" not in output, output
    assert output.startswith(f"error: MLflow store {read_only_store / 'mlruns.db'} is read-only")
    assert "--tracking-uri" in output  # what to change
