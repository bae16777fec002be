"""Tuning: search-space validation, dead-trial detection, and a real three-trial study on the CPU.

The study trains on a mini synthetic world (5 training items: one epoch is 1–2 steps), so every trial reaches
an epoch boundary and reports its validation abs_rel to the pruner.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
from typer.testing import CliRunner

from md2bench import tune
from md2bench.config import load_config
from tests.conftest import release_when_passing

SPACE = """
[objective]
metric = "abs_rel"

[params."train.lr"]
type = "float"
low = 1e-5
high = 1e-3
log = true

[params."loss.smoothness"]
type = "float"
low = 1e-4
high = 1e-2
log = true

[params."train.batch_size"]
type = "categorical"
choices = [2, 3]
"""


# ============================================================================================ search space
def test_example_space_loads_against_the_synth_preset() -> None:
    path = Path(__file__).resolve().parents[1] / "experiments" / "search-space.toml"
    space = tune.load_space(path, load_config("synth"))
    assert [p.key for p in space.params] == ["loss.smoothness", "train.lr", "train.batch_size"]
    assert space.direction == "minimize" and space.metric == "abs_rel"
    assert space.params[2].choices == (4, 8, 12)


def test_space_parsing_and_nested_keys() -> None:
    data = tomllib.loads("""
[objective]
metric = "a1"
[params.train.epochs]
type = "int"
low = 1
high = 4
step = 1
[params."data.flip"]
type = "categorical"
choices = [true, false]
""")
    space = tune.parse_space(data, load_config("tiny"))
    assert [(p.key, p.kind) for p in space.params] == [("train.epochs", "int"), ("data.flip", "categorical")]
    # a1 (δ < 1.25) is an accuracy: higher is better.
    assert space.direction == "maximize"


@pytest.mark.parametrize(
    "params, message",
    [
        ('[params."train.lrr"]\ntype = "float"\nlow = 1e-5\nhigh = 1e-3', "did you mean 'train.lr'"),
        ('[params."train.lr"]\ntype = "float"\nlow = 0.0\nhigh = 1e-3\nlog = true', "log = true needs low > 0"),
        ('[params."train.lr"]\ntype = "float"\nlow = 1e-3\nhigh = 1e-5', "need low < high"),
        ('[params."train.lr"]\ntype = "uniform"\nlow = 1e-5\nhigh = 1e-3', "type must be one of"),
        # batch size 0 is rejected by the config itself, so the space is too.
        ('[params."train.batch_size"]\ntype = "categorical"\nchoices = [0, 4]', "train.batch_size"),
        # a float range on an integer key: the config rejects 1.5 epochs.
        ('[params."train.epochs"]\ntype = "float"\nlow = 1.5\nhigh = 3.0', "train.epochs must be an integer"),
        ('[params."train.out_dir"]\ntype = "categorical"\nchoices = ["a"]', "set by the tuner"),
        ('[params."train.lr"]\ntype = "float"\nlow = 1e-5\nhigh = 1e-3\nlg = true', "did you mean 'log'"),
    ],
)
def test_space_errors_name_the_problem(params: str, message: str) -> None:
    with pytest.raises(tune.TuneError, match=message.replace("(", r"\(")):
        tune.parse_space(tomllib.loads(params), load_config("tiny"))


def test_storage_specs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    # Default: a journal file beside the MLflow SQLite file.
    assert tune.normalise_storage(None, uri) == f"journal:{tmp_path.resolve()}/optuna.journal"
    assert tune.normalise_storage("postgresql://db/x", uri) == "postgresql://db/x"
    assert tune.normalise_storage(str(tmp_path / "s.journal"), uri) == f"journal:{(tmp_path / 's.journal').resolve()}"
    with pytest.raises(tune.TuneError, match="RDB URL"):
        tune.normalise_storage("nonsense", uri)


# ============================================================================================ dead trials
def test_dead_trials_are_failed_and_requeued_once(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    storage = tune.make_storage(f"journal:{tmp_path / 'o.journal'}")
    study = optuna.create_study(study_name="s", storage=storage)
    # A process that has exited: its pid is free (on this host) -> the trial is dead at once.
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    dead.set_user_attr(tune.HEARTBEAT_ATTR, {"host": socket.gethostname(), "pid": proc.pid, "time": 1e12})
    # A live trial (this process, a fresh heartbeat) and a silent one whose last beat is far too old.
    live = study.ask()
    live.set_user_attr(tune.HEARTBEAT_ATTR, {"host": socket.gethostname(), "pid": os.getpid(), "time": 1e12 + 150})
    silent = study.ask()
    silent.set_user_attr(tune.HEARTBEAT_ATTR, {"host": "elsewhere", "pid": 1, "time": 1e12})

    # "now" = 1e12 + 60 s: the silent trial's beat is 60 s old, within the 120 s grace; the dead pid is not.
    assert tune.reap_stale_trials(study, grace_s=120, now=1e12 + 60) == [dead.number]
    # At +200 s the silent one's beat is 200 s old, past the grace period; the live one beat 50 s ago; the dead
    # one is not reaped twice.
    assert tune.reap_stale_trials(study, grace_s=120, now=1e12 + 200) == [silent.number]
    trials = study.get_trials()
    assert [t.state for t in trials[:3]] == [TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    # Re-queued with the same params and the original trial number (what the objective uses to resume).
    assert sorted(t.system_attrs["failed_trial"] for t in waiting) == [dead.number, silent.number]
    assert [t.params for t in waiting if t.system_attrs["failed_trial"] == dead.number] == [dead.params]


# ============================================================================================ a real study
@pytest.fixture(scope="module")
def study_env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    from md2bench.data.synthetic import render_world

    base = tmp_path_factory.mktemp("tune")
    world = Path(render_world(base / "mini", preset="tiny", sequences=3, frames=5, progress=False).root)
    space = base / "space.toml"
    space.write_text(SPACE)
    env = {
        "base": base, "world": world, "space": space, "uri": f"sqlite:///{base}/mlruns.db",
        "overrides": [f"data.path={world}", f"train.out_dir={base / 'runs'}", "train.max_steps=0"],
        "export": base / "best.toml",
    }
    env["first"] = tune.run_study("tiny", space, study_name="tiny-study", trials=3, overrides=env["overrides"],
                                  tracking_uri=env["uri"], gpus="cpu", seed=0, export=env["export"])
    yield env
    release_when_passing(request, base)


def _mlflow_trials(uri: str, study_run_id: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny-study")
    return client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{study_run_id}'")


@pytest.mark.slow
def test_three_trials_in_both_stores(study_env: dict[str, Any]) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    result = study_env["first"]
    assert result.new_trials == 3
    study = optuna.load_study(study_name="tiny-study", storage=tune.make_storage(result.storage))
    assert result.storage == f"journal:{study_env['base'].resolve()}/optuna.journal"
    assert len(study.trials) == 3
    client = MlflowClient(study_env["uri"])
    study_run = client.get_run(result.study_run_id)
    assert study_run.data.tags["md2bench.kind"] == "study"
    runs = {int(r.data.tags["md2bench.trial"]): r for r in _mlflow_trials(study_env["uri"], result.study_run_id)}
    assert sorted(runs) == [0, 1, 2]
    for trial in study.trials:
        run = runs[trial.number]
        assert trial.user_attrs[tune.RUN_ID_ATTR] == run.info.run_id
        state = run.data.tags["md2bench.trial_state"]
        assert state == trial.state.name  # COMPLETE or PRUNED, the same in both stores
        for key, value in trial.params.items():
            assert run.data.tags[f"md2bench.param.{key}"] == str(value)
            assert run.data.params[key] == str(value)  # the trainer logged the config the trial chose
        # The pruner was fed the per-epoch validation abs_rel: epoch 0's report is the run's val/abs_rel.
        history = client.get_metric_history(run.info.run_id, "val/abs_rel")
        assert trial.intermediate_values[0] == pytest.approx(history[0].value)
        if trial.state.name == "COMPLETE":
            assert trial.value == pytest.approx(history[-1].value)
    artifacts = {a.path for a in client.list_artifacts(result.study_run_id)}
    assert {"history.png", "trials.csv"} <= artifacts
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert ("importance.png" in artifacts) == (len(complete) >= 2 and not result.notes)


@pytest.mark.slow
def test_second_invocation_adds_trials(study_env: dict[str, Any]) -> None:
    import optuna

    first = study_env["first"]
    runner = CliRunner()
    from md2bench.cli import app

    out = runner.invoke(app, ["tune", "tiny", *study_env["overrides"], "--space", str(study_env["space"]),
                              "--trials", "1", "--study", "tiny-study", "--tracking-uri", study_env["uri"],
                              "--gpus", "cpu"])
    assert out.exit_code == 0, out.output
    assert "1 new trials, 4 in all" in out.output
    study = optuna.load_study(study_name="tiny-study", storage=tune.make_storage(first.storage))
    assert [t.number for t in study.trials] == [0, 1, 2, 3]  # resumed, not started over
    # The new trial nests under the same MLflow study run.
    runs = _mlflow_trials(study_env["uri"], first.study_run_id)
    assert sorted(int(r.data.tags["md2bench.trial"]) for r in runs) == [0, 1, 2, 3]


@pytest.mark.slow
def test_exported_config_loads_and_trains(study_env: dict[str, Any]) -> None:
    from md2bench.train.loop import fit

    first = study_env["first"]
    assert first.exported == study_env["export"]
    cfg = load_config(study_env["export"])
    for key, value in first.best_params.items():
        section, _, name = key.partition(".")
        assert getattr(getattr(cfg, section), name) == value
    assert not math.isnan(first.best_value)
    result = fit(cfg.override({"train.max_steps": 1, "train.out_dir": str(study_env["base"] / "best-run")}),
                 progress=False)
    assert result.status == "FINISHED" and result.steps == 1


@pytest.mark.slow
def test_ctrl_c_stops_the_study_and_the_next_invocation_resumes_the_trial(study_env: dict[str, Any]) -> None:
    """Ctrl-C during a trial: the trainer checkpoints and returns KILLED; the study stops there (it does not go
    on to the next trial) and the trial is re-queued, so running the command again resumes its checkpoint."""
    import signal
    import threading
    import time

    from optuna.trial import TrialState

    base = study_env["base"]
    # 4 epochs of 1-2 steps (5 items, batch 3 or 2): the watcher signals at the first step, a few remain.
    overrides = [*study_env["overrides"], "train.epochs=4", "train.val_batches=1"]
    logs = base / "runs" / "tune" / "ctrl-c"
    sent = threading.Event()

    def interrupt_at_first_step() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any("INFO step 1 " in p.read_text() for p in logs.glob("trial-*/*/train.log")):
                os.kill(os.getpid(), signal.SIGINT)  # the trainer's handler (main thread) sets its stop flag
                sent.set()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=interrupt_at_first_step, daemon=True)
    watcher.start()
    try:
        tune.run_study("tiny", study_env["space"], study_name="ctrl-c", trials=2, overrides=overrides,
                       tracking_uri=study_env["uri"], gpus="cpu", seed=0)
    except KeyboardInterrupt:
        pass
    else:
        watcher.join()
        assert not sent.is_set(), "Ctrl-C during a trial did not stop the study"
        pytest.skip("both trials finished before the signal arrived (machine too fast)")
    watcher.join()
    import optuna

    study = optuna.load_study(study_name="ctrl-c", storage=tune.make_storage(tune.normalise_storage(
        None, study_env["uri"])))
    trials = study.get_trials()
    # One trial ran (FAIL, as Optuna records an interruption) and was re-queued; no second trial was started.
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params
    (checkpoint,) = logs.glob("trial-0000/*/checkpoint.pt")

    # Again: the re-queued trial resumes trial 0's checkpoint (same folder, same run_key) and completes.
    result = tune.run_study("tiny", study_env["space"], study_name="ctrl-c", trials=1, overrides=overrides,
                            tracking_uri=study_env["uri"], gpus="cpu", seed=0)
    assert [t.state for t in result.trials][:2] == [TrialState.FAIL, TrialState.COMPLETE]
    log = next(logs.glob("trial-0000/*/train.log")).read_text()
    assert "resuming" in log and checkpoint.is_file()
