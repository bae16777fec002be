"""md2bench's tracking interface against a real SQLite MLflow store: the ``Tracker`` protocol is what
``MLflowTracker`` implements, runs nest and end with a reason, handles write without changing status, and the
store-wide ``run_key`` claim lets one live owner in. (Multi-process and crash behaviour: test_reliability.py.)"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest

from md2bench.tracking import (
    END_OWNER_GONE,
    END_REASON_TAG,
    PARENT_TAG,
    RUN_KEY_TAG,
    MLflowTracker,
    Owner,
    Tracker,
    TrackedRun,
)


@pytest.fixture()
def tracker(tmp_path: Path) -> MLflowTracker:
    return MLflowTracker(f"sqlite:///{tmp_path}/mlruns.db")


def _members(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(getattr(cls, name)) for name, value in vars(cls).items()
            if callable(value) and not name.startswith("_")}


def test_mlflow_tracker_implements_every_member_of_the_protocol() -> None:
    protocol, implementation = _members(Tracker), _members(MLflowTracker)
    assert protocol, "the protocol declares no methods"
    for name, declared in protocol.items():
        assert name in implementation, f"MLflowTracker lacks {name}"
        assert list(declared.parameters) == list(implementation[name].parameters), name
    assert "uri" in Tracker.__annotations__


def test_nested_runs_log_params_metrics_and_end_with_a_reason(tracker: MLflowTracker) -> None:
    parent = tracker.start_run("exp", run_name="grid", tags={"md2bench.kind": "grid"})
    child = tracker.start_run("exp", run_name="row/seed0", tags={RUN_KEY_TAG: "abc"}, parent_run_id=parent.run_id)
    child.log_params({"loss.automask": True, "train.lr": 1e-4})
    child.log_metrics({"val/abs_rel": 0.5, "val/nan": math.nan}, step=3)  # the NaN is skipped, not an error
    child.log_metrics({"val/abs_rel": 0.25}, step=6)
    child.end("FINISHED")
    run = tracker.get_run(child.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"loss.automask": "True", "train.lr": "0.0001"}
    assert run.data.tags[PARENT_TAG] == parent.run_id and run.data.tags[END_REASON_TAG] == "finished"
    assert "val/nan" not in run.data.metrics
    assert tracker.metric_history(child.run_id, "val/abs_rel") == [(3, 0.5), (6, 0.25)]
    found = tracker.find_runs("exp", tags={RUN_KEY_TAG: "abc"})
    assert [r.info.run_id for r in found] == [child.run_id]
    assert tracker.find_runs("exp", parent_run_id=parent.run_id)[0].info.run_id == child.run_id
    assert tracker.find_runs("exp", statuses=("RUNNING",))[0].info.run_id == parent.run_id


def test_a_handle_writes_without_changing_status_and_resume_reopens(tracker: MLflowTracker, tmp_path: Path) -> None:
    run = tracker.start_run("exp", run_name="r")
    run.end("KILLED", END_OWNER_GONE)
    handle = tracker.run(run.run_id)
    assert isinstance(handle, TrackedRun) and handle.experiment_id == run.experiment_id
    handle.set_tags({"md2bench.trial_state": "FAIL"})
    note = tmp_path / "note.txt"
    note.write_text("kept\n")
    handle.log_artifact(note, "report")
    after = tracker.get_run(run.run_id)
    assert after.info.status == "KILLED" and after.data.tags[END_REASON_TAG] == END_OWNER_GONE
    assert after.data.tags["md2bench.trial_state"] == "FAIL"
    fetched = tracker.download_artifact(run.run_id, "report/note.txt", tmp_path / "dl")
    assert Path(fetched).read_text() == "kept\n"
    tracker.resume_run(run.run_id)
    assert tracker.get_run(run.run_id).info.status == "RUNNING"


def test_experiment_names_and_ids(tracker: MLflowTracker) -> None:
    assert tracker.experiment_id("nothing-here", create=False) is None
    first = tracker.experiment_id("b-grid")
    assert tracker.experiment_id("b-grid") == first
    tracker.experiment_id("a-grid")
    assert tracker.experiment_names() == sorted(["Default", "a-grid", "b-grid"])


def test_claiming_a_run_key_takes_over_this_process_s_leftovers_and_skips_finished_work(
    tracker: MLflowTracker, tmp_path: Path,
) -> None:
    """(A live claim of another machine or process is refused: test_reliability.py, with real processes.)"""

    def new_run() -> TrackedRun:
        return tracker.start_run("exp", run_name="row/seed0", tags={RUN_KEY_TAG: "key1"})

    first, finished = tracker.claim_run_key("key1", experiment="exp", adopt_run_id=None, new_run=new_run,
                                            run_dir=tmp_path / "key1")
    assert first is not None and finished is None
    tags = tracker.get_run(first.run_id).data.tags
    assert Owner.from_tags(tags) == Owner.current() and tags["md2bench.run_dir"] == str((tmp_path / "key1").resolve())
    assert tracker.live_claim("key1") is None  # this process's own claim is no obstacle to itself
    # a later fit in the same process (the first left its run RUNNING): the leftover is ended, a new run claimed
    second, _ = tracker.claim_run_key("key1", experiment="exp", adopt_run_id=None, new_run=new_run)
    assert second is not None and second.run_id != first.run_id
    left = tracker.get_run(first.run_id)
    assert left.info.status == "KILLED" and left.data.tags[END_REASON_TAG] == END_OWNER_GONE
    # adopting a run (its run folder says it continues it) re-opens that run instead of starting another
    again, _ = tracker.claim_run_key("key1", experiment="exp", adopt_run_id=second.run_id, new_run=new_run)
    assert again is not None and again.run_id == second.run_id
    again.end("FINISHED")
    nothing, done = tracker.claim_run_key("key1", experiment="exp", adopt_run_id=None, new_run=new_run)
    assert nothing is None and done == second.run_id
