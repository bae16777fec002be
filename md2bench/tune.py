"""Hyperparameter search: Optuna over md2bench configs, every trial a nested MLflow run.

``run_study(config, space, study_name=..., trials=N)``:

- **Search space** (``load_space``): a TOML file of config keys with float / int ranges (optionally log scale
  or stepped) or categorical choices, validated against the config like grids: an unknown key fails naming the
  nearest valid one, and every bound and choice must make a valid config. See ``experiments/search-space.toml``.
- **Sampler and pruner**: TPE with a fixed seed, and a median pruner fed the per-epoch validation metric the
  trainer reports (``epoch_callback``: report to the trial, stop the run when ``trial.should_prune()``).
  The objective is the metric at the run's last validation (``val/abs_rel`` by default: tuning on the test
  split would leak it into the model choice).
- **Storage**: by default an Optuna journal file (``optuna.journal``) beside the MLflow store (Optuna advises
  against SQLite for parallel workers; the journal file is safe for several processes on one file system), or
  any RDB URL given with ``--storage`` (``postgresql://...``; ``sqlite:///...`` works for one worker). Running
  the same command again loads the study and adds ``N`` more finished trials.
- **Dead trials**: every running trial records a heartbeat (host, pid, time) in a user attribute; before each
  trial, a worker fails RUNNING trials whose process is gone (same host) or whose heartbeat is older than the
  grace period, and re-queues them with Optuna's retry callback (``RetryFailedTrialCallback``; for RDB storages
  Optuna's own ``heartbeat_interval`` mechanism runs as well). A retried trial resumes the dead trial's run
  folder and checkpoint.
- **Workers**: one per GPU (``--gpus 0,1`` or all visible GPUs), each a process sharing the storage; on CPU one
  in-process worker.
- **MLflow**: one study run (tag ``md2bench.kind = study``) in the experiment named after the study; each trial's
  training run is nested under it with tags ``md2bench.trial``, ``md2bench.param.<key>`` and
  ``md2bench.trial_state`` (COMPLETE / PRUNED / FAIL). The study run holds ``history.png``,
  ``importance.png`` (when at least two trials completed), ``trials.csv`` and the best trial's config.
- **Export**: ``export_best`` writes the best trial as a full config TOML that ``md2bench train`` and grids
  (``base = "best.toml"``) accept.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from md2bench.config import Config, ConfigError, load_config, valid_keys
from md2bench.paper import LOWER_IS_BETTER
from md2bench.tracking import (
    END_ERROR,
    END_FINISHED,
    END_INTERRUPTED,
    END_OWNER_GONE,
    TAG,
    Heartbeat,
    MLflowTracker,
    resolve_uri,
)

HEARTBEAT_ATTR = "md2bench.heartbeat"
RUN_ID_ATTR = "md2bench.mlflow_run_id"
DEFAULT_HEARTBEAT_S = 30
DEFAULT_GRACE_S = 120
# Keys the tuner sets itself for each trial.
RESERVED_KEYS = ("name", "train.out_dir", "train.device")
KINDS = ("float", "int", "categorical")


class TuneError(ValueError):
    """A bad search space, storage or study; the message says what to change."""


# --------------------------------------------------------------------------------------------- search space
@dataclass(frozen=True)
class Param:
    """One searched config key.

    Attributes:
        key: dotted config key (``train.lr``).
        kind: ``"float"``, ``"int"`` or ``"categorical"``.
        low: lower bound (float/int).
        high: upper bound, inclusive (float/int).
        log: sample on a log scale (float/int, needs ``low > 0``).
        step: grid step (float/int; not with ``log``).
        choices: the values of a categorical parameter.
    """

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial."""
        if self.kind == "float":
            return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log,
                                       step=None if self.step is None else float(self.step))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log,
                                     step=1 if self.step is None else int(self.step))
        return trial.suggest_categorical(self.key, list(self.choices))

    def describe(self) -> str:
        """``float [1e-05, 0.001] log`` / ``categorical [4, 8, 12]``."""
        if self.kind == "categorical":
            return f"categorical {list(self.choices)}"
        extra = " log" if self.log else (f" step {self.step}" if self.step is not None else "")
        return f"{self.kind} [{self.low}, {self.high}]{extra}"


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space and how trials are judged.

    Attributes:
        params: the searched keys, in file order.
        metric: validation metric optimised (``abs_rel`` → ``val/abs_rel`` at the last validation).
        direction: ``"minimize"`` (errors, losses) or ``"maximize"`` (δ accuracies).
        sampler_startup_trials: random trials before TPE models the space.
        pruner_startup_trials: trials that run to the end before the median pruner may prune.
        pruner_warmup_epochs: epochs of every trial that are never pruned.
        path: the file it came from.
    """

    params: tuple[Param, ...]
    metric: str = "abs_rel"
    direction: str = "minimize"
    sampler_startup_trials: int = 10
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 0
    path: Path | None = None

    def to_json(self) -> str:
        """Canonical JSON of what defines the study (checked when a study is resumed)."""
        return json.dumps({"metric": self.metric, "direction": self.direction,
                           "params": [p.__dict__ | {"choices": list(p.choices)} for p in self.params]},
                          sort_keys=True, default=str)


def _number(value: Any, where: str, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise TuneError(f"{where} must be {'an integer' if integer else 'a number'}, got {value!r}")
    return value


def _parse_param(key: str, table: Mapping[str, Any], where: str) -> Param:
    allowed = ("type", "low", "high", "log", "step", "choices")
    for name in table:
        if name not in allowed:
            near = difflib.get_close_matches(name, allowed, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise TuneError(f"{where}: unknown field {name!r}{hint} (valid: {', '.join(allowed)})")
    kind = table.get("type")
    if kind not in KINDS:
        raise TuneError(f"{where}: type must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "categorical":
        choices = table.get("choices")
        if not isinstance(choices, list) or not choices:
            raise TuneError(f"{where}: a categorical parameter needs choices = [...] (a non-empty list)")
        if not all(isinstance(c, (str, int, float, bool)) for c in choices) or len(set(map(repr, choices))) != len(choices):
            raise TuneError(f"{where}: choices must be distinct strings, numbers or booleans, got {choices!r}")
        extra = sorted(set(table) - {"type", "choices"})
        if extra:
            raise TuneError(f"{where}: a categorical parameter takes only choices, not {', '.join(extra)}")
        return Param(key, kind, choices=tuple(choices))
    integer = kind == "int"
    if "low" not in table or "high" not in table:
        raise TuneError(f"{where}: a {kind} parameter needs low and high")
    low = _number(table["low"], f"{where}: low", integer)
    high = _number(table["high"], f"{where}: high", integer)
    if not low < high:
        raise TuneError(f"{where}: need low < high, got low = {low}, high = {high}")
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise TuneError(f"{where}: log must be true or false")
    if log and low <= 0:
        raise TuneError(f"{where}: log = true needs low > 0, got {low}")
    step = table.get("step")
    if step is not None:
        step = _number(step, f"{where}: step", integer)
        if step <= 0 or log:
            raise TuneError(f"{where}: step must be > 0 and cannot be combined with log = true")
    if "choices" in table:
        raise TuneError(f"{where}: choices belong to type = \"categorical\"")
    return Param(key, kind, low, high, log, step)


def _flatten_params(table: Mapping[str, Any], prefix: str = "") -> dict[str, Mapping[str, Any]]:
    """``{"train": {"lr": {...}}}`` or ``{"train.lr": {...}}`` → ``{"train.lr": {...}}`` (a leaf has ``type``)."""
    out: dict[str, Mapping[str, Any]] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and "type" not in value and all(isinstance(v, Mapping) for v in value.values()):
            out.update(_flatten_params(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def parse_space(data: Mapping[str, Any], base: Config | None = None, where: str = "search space") -> SearchSpace:
    """Build and validate a ``SearchSpace`` from parsed TOML.

    Args:
        data: ``{"params": {...}, "objective": {...}, "sampler": {...}, "pruner": {...}}``.
        base: the config trials start from; every bound and choice is checked to make a valid config from it.
        where: file name for messages.

    Raises:
        TuneError: unknown or reserved key (naming the nearest valid key), bad bounds, or a value the config
            rejects.
    """
    sections = ("params", "objective", "sampler", "pruner")
    for key in data:
        if key not in sections:
            raise TuneError(f"{where}: unknown table {key!r} (valid: {', '.join(sections)})")
    raw = data.get("params")
    if not isinstance(raw, Mapping) or not raw:
        raise TuneError(f'{where}: needs a [params] table, e.g. [params."train.lr"] type = "float" low = 1e-5 ...')
    keys = valid_keys()
    params: list[Param] = []
    for key, table in _flatten_params(raw).items():
        pwhere = f"{where}: params.{key}"
        if key not in keys:
            near = difflib.get_close_matches(key, keys, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise TuneError(f"{where}: unknown config key {key!r}{hint}")
        if key in RESERVED_KEYS:
            raise TuneError(f"{where}: {key!r} is set by the tuner for each trial; it cannot be searched")
        if not isinstance(table, Mapping):
            raise TuneError(f'{pwhere} must be a table like {{ type = "float", low = 1e-5, high = 1e-3, log = true }}')
        param = _parse_param(key, table, pwhere)
        if base is not None:
            values = param.choices if param.kind == "categorical" else (param.low, param.high)
            for value in values:
                try:
                    base.override({key: value})
                except ConfigError as exc:
                    raise TuneError(f"{pwhere}: value {value!r} does not make a valid config: {exc}") from exc
        params.append(param)

    objective = dict(data.get("objective", {}))
    metric = objective.pop("metric", "abs_rel")
    if not isinstance(metric, str) or not metric:
        raise TuneError(f"{where}: objective.metric must be a validation metric name such as 'abs_rel'")
    metric = metric.removeprefix("val/")
    direction = objective.pop("direction", "minimize" if LOWER_IS_BETTER.get(metric, True) else "maximize")
    if direction not in ("minimize", "maximize"):
        raise TuneError(f"{where}: objective.direction must be 'minimize' or 'maximize', got {direction!r}")
    if objective:
        raise TuneError(f"{where}: unknown objective field(s) {', '.join(objective)} (valid: metric, direction)")

    def count(section: str, name: str, default: int) -> int:
        table = dict(data.get(section, {}))
        unknown = set(table) - {name}
        if unknown:
            raise TuneError(f"{where}: unknown {section} field(s) {', '.join(sorted(unknown))} (valid: {name})")
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TuneError(f"{where}: {section}.{name} must be an integer >= 0, got {value!r}")
        return value

    pruner = dict(data.get("pruner", {}))
    startup = pruner.pop("startup_trials", 5)
    warmup = pruner.pop("warmup_epochs", 0)
    if pruner:
        raise TuneError(f"{where}: unknown pruner field(s) {', '.join(pruner)} (valid: startup_trials, warmup_epochs)")
    for name, value in (("pruner.startup_trials", startup), ("pruner.warmup_epochs", warmup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TuneError(f"{where}: {name} must be an integer >= 0, got {value!r}")
    return SearchSpace(
        params=tuple(params), metric=metric, direction=direction,
        sampler_startup_trials=count("sampler", "startup_trials", 10),
        pruner_startup_trials=startup, pruner_warmup_epochs=warmup,
    )


def load_space(path: str | Path, base: Config | None = None) -> SearchSpace:
    """Read and validate a search-space TOML file (see ``parse_space``)."""
    path = Path(path)
    if not path.is_file():
        raise TuneError(f"search space {str(path)!r} not found (see experiments/search-space.toml for an example)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TuneError(f"{path}: not valid TOML: {exc}") from exc
    space = parse_space(data, base, where=str(path))
    return SearchSpace(space.params, space.metric, space.direction, space.sampler_startup_trials,
                       space.pruner_startup_trials, space.pruner_warmup_epochs, path)


# --------------------------------------------------------------------------------------------- storage
def default_storage(tracking_uri: str | None = None) -> str:
    """``journal:<dir of the MLflow SQLite file>/optuna.journal`` (or ``./optuna.journal`` for other stores)."""
    uri = resolve_uri(tracking_uri)
    folder = Path(uri[len("sqlite:///"):]).resolve().parent if uri.startswith("sqlite:///") else Path.cwd()
    return f"journal:{folder / 'optuna.journal'}"


def normalise_storage(storage: str | None, tracking_uri: str | None = None) -> str:
    """A storage spec: ``journal:<path>`` for journal files (also for bare ``*.journal`` / ``*.log`` paths),
    else the RDB URL as given; None gives ``default_storage``."""
    if not storage:
        return default_storage(tracking_uri)
    if storage.startswith("journal:"):
        return "journal:" + str(Path(storage[len("journal:"):]).resolve())
    if "://" in storage:
        return storage
    if storage.endswith((".journal", ".log")):
        return "journal:" + str(Path(storage).resolve())
    raise TuneError(
        f"--storage {storage!r}: give an RDB URL (postgresql://..., mysql://..., sqlite:///file.db) or a journal "
        f"file (journal:path or a path ending in .journal)"
    )


def _retry_callback(max_retry: int) -> Any:
    import optuna

    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" / "deprecated" notices
        return cls(max_retry=max_retry)


def make_storage(spec: str, heartbeat_s: int = DEFAULT_HEARTBEAT_S, grace_s: int = DEFAULT_GRACE_S,
                 max_retry: int = 2) -> Any:
    """The Optuna storage for a spec from ``normalise_storage``."""
    import optuna

    if spec.startswith("journal:"):
        path = Path(spec[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        journal = getattr(optuna.storages, "journal", None)
        backend_cls = getattr(journal, "JournalFileBackend", None) or optuna.storages.JournalFileStorage
        return optuna.storages.JournalStorage(backend_cls(str(path)))
    kwargs: dict[str, Any] = {"heartbeat_interval": heartbeat_s, "grace_period": grace_s}
    import inspect

    accepted = inspect.signature(optuna.storages.RDBStorage).parameters
    callback_arg = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in accepted else "failed_trial_callback"
    kwargs[callback_arg] = _retry_callback(max_retry)
    return optuna.storages.RDBStorage(spec, **kwargs)


# --------------------------------------------------------------------------------------------- dead trials
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def heartbeat(trial: Any, interval_s: float = DEFAULT_HEARTBEAT_S) -> Iterator[None]:
    """Record ``{host, pid, time}`` in the trial's user attribute ``md2bench.heartbeat`` every ``interval_s``."""
    stop = threading.Event()
    host, pid = socket.gethostname(), os.getpid()

    def beat() -> None:
        trial.set_user_attr(HEARTBEAT_ATTR, {"host": host, "pid": pid, "time": time.time()})

    def loop() -> None:
        while not stop.wait(interval_s):
            with contextlib.suppress(Exception):  # the trial may have finished meanwhile
                beat()

    beat()
    thread = threading.Thread(target=loop, name="md2bench-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def reap_stale_trials(study: Any, grace_s: float = DEFAULT_GRACE_S, max_retry: int = 2,
                      now: float | None = None) -> list[int]:
    """Fail RUNNING trials whose process died and re-queue them (Optuna's retry callback); their numbers.

    A trial is dead when its heartbeat names this host and a process that no longer exists, or when its last
    heartbeat (its start, if it has none yet) is older than ``grace_s``. Each is failed once: when two workers
    race, the storage rejects the second update and only the first re-queues the trial.
    """
    import optuna
    from optuna.trial import TrialState

    now = time.time() if now is None else now
    host = socket.gethostname()
    storage = study._storage  # noqa: SLF001 - the storage-level update is what tells racing workers apart
    callback = _retry_callback(max_retry)
    reaped: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        beat = trial.user_attrs.get(HEARTBEAT_ATTR)
        if isinstance(beat, Mapping) and float(beat.get("time", 0)) >= started - 1.0:
            last = float(beat["time"])
            gone = beat.get("host") == host and not _pid_alive(int(beat.get("pid", -1)))
        else:  # no heartbeat of its own yet (a fresh or just re-queued trial)
            last, gone = started, False
        if not gone and now - last <= grace_s:
            continue
        try:
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)  # noqa: SLF001
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        callback(study, storage.get_trial(trial._trial_id))  # noqa: SLF001
        reaped.append(trial.number)
    return reaped


# --------------------------------------------------------------------------------------------- trials
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
        space: ``SearchSpace.to_json`` plus the sampler/pruner settings.
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


def _space_from_dict(data: Mapping[str, Any]) -> SearchSpace:
    params = tuple(Param(**{**p, "choices": tuple(p.get("choices", ()))}) for p in data["params"])
    return SearchSpace(params, data["metric"], data["direction"], data["sampler_startup_trials"],
                       data["pruner_startup_trials"], data["pruner_warmup_epochs"])


def _space_to_dict(space: SearchSpace) -> dict[str, Any]:
    return {
        "params": [{**p.__dict__, "choices": list(p.choices)} for p in space.params],
        "metric": space.metric, "direction": space.direction,
        "sampler_startup_trials": space.sampler_startup_trials,
        "pruner_startup_trials": space.pruner_startup_trials,
        "pruner_warmup_epochs": space.pruner_warmup_epochs,
    }


def _sampler(space: SearchSpace, seed: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.sampler_startup_trials)


def _pruner(space: SearchSpace) -> Any:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=space.pruner_startup_trials,
                                       n_warmup_steps=space.pruner_warmup_epochs)


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
    """The Optuna objective: suggest → config → ``trainer.fit`` (pruning per epoch) → last validation metric."""
    import optuna

    from md2bench.trainer import fit

    space = _space_from_dict(spec.space)
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
    space = _space_from_dict(spec.space)
    storage = make_storage(spec.storage, spec.heartbeat_s, spec.grace_s, spec.max_retry)
    study = optuna.load_study(study_name=spec.study_name, storage=storage,
                              sampler=_sampler(space, spec.seed), pruner=_pruner(space))
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
            _retry_callback(spec.max_retry)(study, study._storage.get_trial(frozen._trial_id))  # noqa: SLF001
            raise
        attempts += 1
    return attempts


def _worker_main(argv: Sequence[str]) -> int:
    """Entry point of a worker process: ``python -m md2bench.tune SPEC.json``."""
    spec = WorkerSpec(**json.loads(Path(argv[0]).read_text()))
    run_worker(spec)
    return 0


# --------------------------------------------------------------------------------------------- the study
@dataclass
class StudyResult:
    """What ``run_study`` did.

    Attributes:
        study_name: the study.
        storage: the storage spec.
        study_run_id: the MLflow study run.
        trials: the study's trials after this invocation (Optuna ``FrozenTrial``s).
        new_trials: how many trials this invocation added.
        best_params: the best trial's params (empty when none completed).
        best_value: its objective (NaN when none).
        exported: the exported config file, if any.
        notes: plots skipped and similar.
    """

    study_name: str
    storage: str
    study_run_id: str
    trials: list[Any]
    new_trials: int
    best_params: dict[str, Any] = field(default_factory=dict)
    best_value: float = math.nan
    exported: Path | None = None
    notes: list[str] = field(default_factory=list)


def resolve_devices(gpus: str | None, cfg: Config) -> list[str]:
    """Devices for the workers: ``["cpu"]`` / ``[""]`` (one worker, the config's device) or one CUDA index each.

    Args:
        gpus: ``None``/``"auto"`` (every visible GPU when the config may use CUDA, else one worker), ``"cpu"``,
            or a comma-separated list of GPU indices (``"0,1"``).
    """
    if gpus in (None, "", "auto"):
        if cfg.train.device == "cpu":
            return [""]
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [str(i) for i in range(count)] or [""]
    if gpus == "cpu":
        return ["cpu"]
    parts = [p.strip() for p in gpus.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise TuneError(f"--gpus {gpus!r}: give 'auto', 'cpu' or GPU indices like '0,1'")
    return parts


def _study_run(tracker: MLflowTracker, experiment: str, name: str, storage: str, space: SearchSpace,
               base: Config) -> str:
    """The study's MLflow run: the newest existing one (re-opened) or a new one."""
    found = tracker.find_runs(experiment, tags={TAG + "kind": "study", TAG + "study": name})
    if found:
        return tracker.resume_run(found[0].info.run_id).run_id
    run = tracker.start_run(experiment, run_name=f"study/{name}",
                            tags={TAG + "kind": "study", TAG + "study": name, TAG + "storage": storage,
                                  TAG + "metric": f"val/{space.metric}", TAG + "direction": space.direction})
    run.log_params({f"space.{p.key}": p.describe() for p in space.params})
    run.log_text(base.to_toml(), "base_config.toml")
    return run.run_id


def run_study(
    config: str | Path | None,
    space: str | Path,
    *,
    study_name: str,
    trials: int,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    storage: str | None = None,
    tracking_uri: str | None = None,
    gpus: str | None = None,
    seed: int = 0,
    export: str | Path | None = None,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    grace_s: int = DEFAULT_GRACE_S,
    max_retry: int = 2,
    progress: bool = False,
) -> StudyResult:
    """Create or resume a study and add ``trials`` finished (complete or pruned) trials to it.

    Args:
        config: base config (TOML path or preset name).
        space: search-space TOML.
        study_name: Optuna study name, also the MLflow experiment.
        trials: finished trials to add in this invocation.
        overrides: dotted overrides applied to the base config.
        storage: Optuna storage (see ``normalise_storage``); default a journal file beside the MLflow store.
        tracking_uri: MLflow store.
        gpus: see ``resolve_devices``.
        seed: sampler seed; worker w of an invocation that finds k trials uses ``seed + 1000·w + k`` so a resumed
            study draws new points instead of replaying its first ones.
        export: write the best trial's config here.
        heartbeat_s, grace_s, max_retry: dead-trial detection and retries.
        progress: progress bars.

    Raises:
        TuneError: bad space or storage, or a study created with a different space.
    """
    import optuna

    if trials < 1:
        raise TuneError(f"--trials must be >= 1, got {trials}")
    base = load_config(config, overrides)
    search = load_space(space, base)
    tracking_uri = resolve_uri(tracking_uri)
    spec_storage = normalise_storage(storage, tracking_uri)
    devices = resolve_devices(gpus, base)
    if len(devices) > 1 and spec_storage.startswith("sqlite"):
        warnings.warn("Optuna advises against SQLite for parallel workers; prefer the default journal file or a "
                      "PostgreSQL/MySQL URL", stacklevel=2)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=make_storage(spec_storage, heartbeat_s, grace_s,
                                max_retry), direction=search.direction, load_if_exists=True)
    stored = study.user_attrs.get("md2bench.space")
    if stored is None:
        study.set_user_attr("md2bench.space", search.to_json())
        study.set_user_attr("md2bench.base_config", base.to_toml())
    elif stored != search.to_json():
        raise TuneError(
            f"study {study_name!r} in {spec_storage} was created with a different search space or objective; "
            f"use the same space file or a new --study name"
        )
    if study.direction.name.lower() != search.direction:
        raise TuneError(f"study {study_name!r} optimises in direction {study.direction.name.lower()}; "
                        f"the space says {search.direction}")

    tracker = MLflowTracker(tracking_uri)
    tracker.require_writable()
    tracker.reap_stale_runs(study_name, tags={TAG + "kind": "trial"})  # trials left RUNNING by dead processes
    study_run_id = _study_run(tracker, study_name, study_name, spec_storage, search, base)
    study_run = tracker.run(study_run_id)
    study_run.claim_tags()
    beat = Heartbeat(study_run).start()
    before = len(study.trials)
    done = finished_count(study)
    specs = [
        WorkerSpec(
            study_name=study_name, storage=spec_storage, tracking_uri=tracking_uri, experiment=study_name,
            study_run_id=study_run_id, base_toml=base.to_toml(), space=_space_to_dict(search),
            target=done + trials, max_attempts=2 * trials + max_retry, seed=seed + 1000 * w + before,
            device={"": "", "cpu": "cpu"}.get(dev, "cuda" if len(devices) > 1 else f"cuda:{dev}"),
            heartbeat_s=heartbeat_s, grace_s=grace_s, max_retry=max_retry, progress=progress,
        )
        for w, dev in enumerate(devices)
    ]
    status, reason = "FINISHED", END_FINISHED
    try:
        if len(specs) == 1:
            run_worker(specs[0])
        else:
            _run_worker_processes(specs, devices)
    except Exception:
        status, reason = "FAILED", END_ERROR
        raise
    except BaseException:  # Ctrl-C / SIGTERM: the interrupted trial resumes next time
        status, reason = "KILLED", END_INTERRUPTED
        raise
    finally:
        beat.stop()
        try:
            study = optuna.load_study(study_name=study_name, storage=make_storage(spec_storage, heartbeat_s,
                                      grace_s, max_retry))
            notes = finish_study_run(tracker, study_run_id, study, search, status, reason)
        except Exception:  # the plots or artifacts failed: the study run still gets a true end
            with contextlib.suppress(Exception):
                study_run.end("FAILED" if status == "FINISHED" else status, END_ERROR if status == "FINISHED"
                              else reason)
            raise
    result = StudyResult(study_name, spec_storage, study_run_id, list(study.trials), len(study.trials) - before,
                         notes=notes)
    best = _best_trial(study)
    if best is not None:
        result.best_params, result.best_value = dict(best.params), float(best.value)
        if export is not None:
            result.exported = export_best(study, base, export)
    elif export is not None:
        result.notes.append("no trial completed; nothing exported")
    return result


def _run_worker_processes(specs: Sequence[WorkerSpec], devices: Sequence[str]) -> None:
    """One ``python -m md2bench.tune`` process per GPU (``CUDA_VISIBLE_DEVICES`` set to it); wait for all."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for w, (spec, dev) in enumerate(zip(specs, devices)):
            path = Path(tmp) / f"worker{w}.json"
            path.write_text(json.dumps(spec.__dict__))
            env = dict(os.environ)
            if dev not in ("", "cpu"):
                env["CUDA_VISIBLE_DEVICES"] = dev
            procs.append(subprocess.Popen([sys.executable, "-m", "md2bench.tune", str(path)], env=env))
        try:
            codes = [p.wait() for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    p.wait()
    failed = [f"worker {w} (GPU {d}): exit {c}" for w, (c, d) in enumerate(zip(codes, devices)) if c != 0]
    if failed:
        raise RuntimeError("tuning workers failed: " + "; ".join(failed))


def _best_trial(study: Any) -> Any:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    return study.best_trial


# --------------------------------------------------------------------------------------------- results
def trials_frame(study: Any) -> Any:
    """One row per trial: number, state, value, params, MLflow run id, retry origin, duration."""
    import pandas as pd

    records = []
    for t in study.get_trials(deepcopy=False):
        rec: dict[str, Any] = {
            "number": t.number, "state": t.state.name, "value": t.value,
            "last_epoch": max(t.intermediate_values) if t.intermediate_values else None,
            "mlflow_run_id": t.user_attrs.get(RUN_ID_ATTR, ""),
            "retry_of": t.system_attrs.get("failed_trial"),
            "duration_s": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start else None,
        }
        rec.update({f"param.{k}": v for k, v in t.params.items()})
        records.append(rec)
    return pd.DataFrame.from_records(records)


def plot_history(study: Any, direction: str) -> Any:
    """Objective per trial (dots: complete; ×: pruned, at their last reported value) and the best so far."""
    import seaborn as sns

    from md2bench.report import _new_figure

    frame = trials_frame(study)
    fig = _new_figure(6.5, 4.0)
    with sns.axes_style("whitegrid"):
        ax = fig.subplots()
    complete = frame[frame["state"] == "COMPLETE"].sort_values("number") if len(frame) else frame
    if len(complete):
        ax.scatter(complete["number"], complete["value"], color="#1f77b4", label="complete", zorder=3)
        best = complete["value"].cummin() if direction == "minimize" else complete["value"].cummax()
        ax.step(complete["number"], best, where="post", color="#c0392b", label="best so far")
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED" and t.intermediate_values]
    if pruned:
        ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   marker="x", color="#7f7f7f", label="pruned (last value)", zorder=3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.set_title(f"Optimisation history ({direction})")
    if len(complete) or pruned:
        ax.legend(fontsize=8)
    return fig


def plot_importance(study: Any) -> Any:
    """Horizontal bars of Optuna's parameter importances (needs at least two complete trials)."""
    import optuna

    from md2bench.report import _new_figure

    importances = optuna.importance.get_param_importances(study)
    fig = _new_figure(6.0, 0.5 * len(importances) + 1.2)
    ax = fig.subplots()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="#4c72b0")
    ax.set_xlabel("importance")
    ax.set_title("Parameter importance")
    return fig


def finish_study_run(tracker: MLflowTracker, run_id: str, study: Any, space: SearchSpace,
                     status: str = "FINISHED", reason: str | None = None) -> list[str]:
    """Log the history and importance plots, ``trials.csv`` and the best trial onto the study run; end it."""
    from optuna.trial import TrialState

    notes: list[str] = []
    run = tracker.run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frame = trials_frame(study)
        frame.to_csv(folder / "trials.csv", index=False)
        run.log_artifact(folder / "trials.csv")
        fig = plot_history(study, space.direction)
        for suffix in ("png", "pdf"):
            fig.savefig(folder / f"history.{suffix}", dpi=150)
            run.log_artifact(folder / f"history.{suffix}")
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(complete) < 2:
            notes.append(f"parameter importance needs >= 2 complete trials (have {len(complete)}); plot skipped")
        else:
            try:
                fig = plot_importance(study)
                for suffix in ("png", "pdf"):
                    fig.savefig(folder / f"importance.{suffix}", dpi=150)
                    run.log_artifact(folder / f"importance.{suffix}")
            except Exception as exc:  # noqa: BLE001 - e.g. every complete trial drew the same values
                notes.append(f"parameter importance skipped: {type(exc).__name__}: {exc}")
    counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in counts:
            counts[t.state.name.lower()] += 1
    step = len(study.trials)
    metrics = {f"trials/{k}": float(v) for k, v in counts.items()}
    best = _best_trial(study)
    if best is not None:
        metrics["best_value"] = float(best.value)
        run.set_tags({TAG + "best_trial": str(best.number), **{f"{TAG}best.{k}": str(v) for k, v in best.params.items()}})
    run.log_metrics(metrics, step=step)
    if notes:
        run.log_text("\n".join(notes) + "\n", "notes.txt")
    run.end(status, reason)
    return notes


def export_best(study: Any, base: Config, path: str | Path) -> Path:
    """Write the best trial as a full config TOML (base + best params, named ``<study>-best``)."""
    best = _best_trial(study)
    if best is None:
        raise TuneError(f"study {study.study_name!r} has no complete trial to export")
    cfg = base.override({**best.params, "name": f"{study.study_name}-best"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Best trial of Optuna study {study.study_name!r}: trial {best.number}, objective {best.value:.6g}\n"
              f"# params: {json.dumps(best.params)}\n")
    path.write_text(header + cfg.to_toml())
    return path


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
