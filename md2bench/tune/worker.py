"""One tuning worker: ``WorkerSpec``, the objective (suggest -> config -> ``md2bench.train.loop.fit``, pruned per
epoch) and ``run_worker``'s trial loop; ``python -m md2bench.tune SPEC.json`` runs ``main`` in its own process.

Each trial's training run is an MLflow run nested under the study run, tagged ``md2bench.trial``,
``md2bench.param.<key>`` and ``md2bench.trial_state`` (COMPLETE / PRUNED / FAIL); a retried trial
(``md2bench.retry_of``) resumes its original's run folder and checkpoint.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from md2bench.config import Config
from md2bench.tracking import END_OWNER_GONE, TAG, MLflowTracker
from md2bench.tune.space import TuneError, make_pruner, make_sampler, space_from_dict
from md2bench.tune.storage import (DEFAULT_GRACE_S, DEFAULT_HEARTBEAT_S, RUN_ID_ATTR, heartbeat, make_storage,
                                   reap_stale_trials, retry_callback)


@dataclass
class WorkerSpec:
    """Everything one worker needs (JSON-serialisable, for worker processes).

    Attributes:
        study_name: the Optuna study.
        storage: storage spec (``normalise_storage``).
        tracking_uri: MLflow URI.
        experiment: MLflow experiment (the study's name).
        study_run_id: the MLflow study run the trials nest under.
        base_toml: the base config as TOML.
        space: ``space_to_dict`` of the search space (params, objective, sampler/pruner settings).
        target: stop once the study has this many COMPLETE + PRUNED trials (with several workers, trials already
            running when the target is reached still finish, so a study may end up to ``workers − 1`` over).
        max_attempts: at most this many trials from this worker (bounds a run of failures).
        seed: sampler seed of this worker.
        device: ``train.device`` for this worker's trials ("" keeps the config's).
        heartbeat_s, grace_s, max_retry: dead-trial detection.
        progress: progress bars.
    """

    study_name: str
    storage: str
    tracking_uri: str
    experiment: str
    study_run_id: str
    base_toml: str
    space: dict[str, Any]
    target: int
    max_attempts: int
    seed: int
    device: str = ""
    heartbeat_s: int = DEFAULT_HEARTBEAT_S
    grace_s: int = DEFAULT_GRACE_S
    max_retry: int = 2
    progress: bool = False


def finished_count(study: Any) -> int:
    """Trials that count towards ``--trials``: COMPLETE and PRUNED."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _val_value(metrics: Mapping[str, float], metric: str) -> float:
    for key in (f"val/{metric}", metric):
        if key in metrics:
            return float(metrics[key])
    raise TuneError(
        f"validation reported no val/{metric} (it has: {', '.join(sorted(metrics)) or 'nothing'}); choose "
        f"objective.metric among those in the search space file"
    )


def _close_dead_runs(tracker: MLflowTracker, spec: WorkerSpec, numbers: Sequence[int]) -> None:
    """Mark the MLflow runs of dead trials (still RUNNING: their process was killed) KILLED / FAIL.

    Called when their retry starts; a retry that resumes one of them from its checkpoint re-opens it.
    """
    for number in numbers:
        for run in tracker.find_runs(spec.experiment, tags={TAG + "study": spec.study_name, TAG + "trial": number},
                                     statuses=("RUNNING",)):
            dead = tracker.run(run.info.run_id)
            dead.set_tags({TAG + "trial_state": "FAIL"})
            dead.end("KILLED", END_OWNER_GONE)


def make_objective(spec: WorkerSpec, tracker: MLflowTracker) -> Callable[[Any], float]:
    """The Optuna objective: suggest → config → ``md2bench.train.loop.fit`` (pruning per epoch) → last validation metric."""
    import optuna

    from md2bench.train.loop import fit

    space = space_from_dict(spec.space)
    base = Config.from_dict(tomllib.loads(spec.base_toml), where="base config")

    def objective(trial: Any) -> float:
        # A re-queued trial carries the original's number (set by the retry callback) in its system attributes.
        frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        origin = frozen.system_attrs.get("failed_trial")
        params = {p.key: p.suggest(trial) for p in space.params}
        lineage = trial.number if origin is None else int(origin)
        extra: dict[str, Any] = {
            "name": f"{spec.study_name}-trial{trial.number}",
            # one folder per trial lineage: trials never share a checkpoint, a retry resumes its original's
            "train.out_dir": str(Path(base.train.out_dir) / "tune" / spec.study_name / f"trial-{lineage:04d}"),
        }
        if spec.device:
            extra["train.device"] = spec.device
        cfg = base.override({**params, **extra})
        tags = {TAG + "kind": "trial", TAG + "study": spec.study_name, TAG + "trial": trial.number,
                **{f"{TAG}param.{k}": v for k, v in params.items()}}
        if origin is not None:
            tags[TAG + "retry_of"] = origin
            _close_dead_runs(tracker, spec, frozen.system_attrs.get("retry_history", [origin]))

        def on_epoch(epoch: int, val_metrics: Mapping[str, float]) -> bool:
            trial.report(_val_value(val_metrics, space.metric), epoch)
            return bool(trial.should_prune())

        with heartbeat(trial, spec.heartbeat_s):
            trial.set_user_attr("md2bench.run_key", cfg.run_key)
            result = fit(cfg, tracker, experiment=spec.experiment, run_name=f"trial-{trial.number}", tags=tags,
                         parent_run_id=spec.study_run_id, resume=origin is not None, epoch_callback=on_epoch,
                         progress=spec.progress)
        if result.run_id:
            trial.set_user_attr(RUN_ID_ATTR, result.run_id)
        state = {"FINISHED": "COMPLETE", "PRUNED": "PRUNED"}.get(result.status, "FAIL")
        if result.run_id:
            tracker.run(result.run_id).set_tags({TAG + "trial_state": state})
        if result.status == "KILLED":  # Ctrl-C / SIGTERM: checkpoint written; stop tuning, resume it next time
            raise TrialInterrupted(trial.number, result.message)
        if state == "PRUNED":
            raise optuna.TrialPruned(result.message)
        if state == "FAIL":
            raise RuntimeError(f"trial {trial.number}: training ended {result.status}: {result.message}")
        if not result.val_history:
            raise TuneError(f"trial {trial.number}: the run reported no validation; set train.val_batches >= 0")
        value = _val_value(result.val_history[-1], space.metric)
        if result.run_id:
            tracker.run(result.run_id).log_metrics({"tune/objective": value}, step=0)
        return value

    return objective


class TrialInterrupted(KeyboardInterrupt):
    """A trial's training was stopped by SIGINT/SIGTERM (it checkpointed): the worker stops, and the trial is
    re-queued so that the next invocation resumes its checkpoint instead of counting it as failed."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(f"trial {number} interrupted: {message}")
        self.number = number


def run_worker(spec: WorkerSpec) -> int:
    """Run trials until the study has ``spec.target`` finished trials (or ``max_attempts``); trials run here."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = space_from_dict(spec.space)
    storage = make_storage(spec.storage, spec.heartbeat_s, spec.grace_s, spec.max_retry)
    study = optuna.load_study(study_name=spec.study_name, storage=storage,
                              sampler=make_sampler(space, spec.seed), pruner=make_pruner(space))
    tracker = MLflowTracker(spec.tracking_uri)
    objective = make_objective(spec, tracker)
    attempts = 0
    while attempts < spec.max_attempts:
        reap_stale_trials(study, spec.grace_s, spec.max_retry)
        if finished_count(study) >= spec.target:
            break
        try:
            study.optimize(objective, n_trials=1, catch=(RuntimeError,), gc_after_trial=True)
        except TrialInterrupted as exc:  # Optuna marked it FAIL; queue its retry (same folder, resumes)
            frozen = study.get_trials(deepcopy=False)[exc.number]
            retry_callback(spec.max_retry)(study, study._storage.get_trial(frozen._trial_id))  # noqa: SLF001
            raise
        attempts += 1
    return attempts


def main(argv: Sequence[str]) -> int:
    """Entry point of a worker process: ``python -m md2bench.tune SPEC.json`` (``md2bench/tune/__main__.py``)."""
    spec = WorkerSpec(**json.loads(Path(argv[0]).read_text()))
    run_worker(spec)
    return 0
