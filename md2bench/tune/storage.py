"""Optuna storage and dead trials: the storage spec (``normalise_storage``, ``make_storage``, the retry
callback), the trials' user attributes, the trial heartbeat and the stale-trial reaper.

- **Storage**: by default an Optuna journal file (``optuna.journal``) beside the MLflow store (Optuna advises
  against SQLite for parallel workers; the journal file is safe for several processes on one file system), or
  any RDB URL given with ``--storage`` (``postgresql://...``; ``sqlite:///...`` works for one worker). Running
  the same command again loads the study and adds ``N`` more finished trials.
- **Dead trials**: every running trial records a heartbeat (host, pid, time) in a user attribute; before each
  trial, a worker fails RUNNING trials whose process is gone (same host) or whose heartbeat is older than the
  grace period, and re-queues them with Optuna's retry callback (``RetryFailedTrialCallback``; for RDB storages
  Optuna's own ``heartbeat_interval`` mechanism runs as well). A retried trial resumes the dead trial's run
  folder and checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from md2bench.tracking import resolve_uri
from md2bench.tune.space import TuneError

# Trial user attributes: the worker's heartbeat and the trial's MLflow run (part of the storage layout).
HEARTBEAT_ATTR = "md2bench.heartbeat"
RUN_ID_ATTR = "md2bench.mlflow_run_id"
DEFAULT_HEARTBEAT_S = 30
DEFAULT_GRACE_S = 120


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


def retry_callback(max_retry: int) -> Any:
    """Optuna's callback that re-queues a failed trial (at most ``max_retry`` times), keeping its params."""
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
    kwargs[callback_arg] = retry_callback(max_retry)
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
    callback = retry_callback(max_retry)
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
