"""The run-folder contract, torch-free: what the trainer writes into ``<train.out_dir>/<run_key>/`` and what the
orchestrator, Slurm backend, tuner and CLI read from it: exit codes, file names, the lock, the markers and the
structured progress file.

Both sides import these names; neither keeps a copy. Files of a run folder:

- ``checkpoint.pt``: full resume state (``md2bench.checkpoint``), written atomically.
- ``config.toml``: the config as trained; ``train.log``: the trainer's plain-text log (for people, not parsed).
- ``.lock``: an exclusive ``flock`` held by the training process (a second one exits ``EXIT_BUSY``).
- ``DONE``: JSON written when the run finished (MLflow run id, test metrics, validation history, steps).
- ``DIVERGED``: JSON written when the run failed on non-finite numbers (a rerun says so and stops).
- ``mlflow_run.json``: the MLflow run id with its store, written when the run is claimed (before step 1).
- ``progress.json``: the trainer's progress, rewritten atomically at most every ``PROGRESS_EVERY_S`` seconds
  and at each change of phase; a reader never sees a half-written file. Keys::

      {"step": 240, "total": 1000, "phase": "train", "images_per_s": 4.6, "time": 1765000000.0}

  ``phase`` is ``train``, ``validate``, ``evaluate`` (the final test evaluation) or ``done``; ``images_per_s`` is
  the rate over the last interval (None before the first); ``time`` is the wall-clock time of the write.
- ``stdout.log``: the child's stdout and stderr when an orchestrator started it (one header per attempt).
- ``launch-<tag>.toml``: the config an orchestrator handed to the trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from md2bench.files import write_json_atomic

# ----- exit codes of ``md2bench train`` (the orchestrator, Slurm backend and CLI rely on these numbers) ----------
EXIT_FINISHED = 0
EXIT_FAILED = 1  # non-finite loss, validation or weights, or an exception (disk full, store read-only ...)
EXIT_BLOCKED = 3  # ImageNet weights file missing (md2bench.models.encoder.WeightsNotFoundError)
EXIT_BUSY = 4  # another process holds the run's lock (RunBusyError)
EXIT_INTERRUPTED = 75  # SIGTERM/SIGINT: checkpoint written, resume later (EX_TEMPFAIL)

# ----- file names --------------------------------------------------------------------------------------------
CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.toml"
LOG_NAME = "train.log"
DONE_NAME = "DONE"
LOCK_NAME = ".lock"
RUN_ID_NAME = "mlflow_run.json"
DIVERGED_NAME = "DIVERGED"
PROGRESS_NAME = "progress.json"
STDOUT_NAME = "stdout.log"

PARENT_PID_ENV = "MD2BENCH_PARENT_PID"  # set by the orchestrator: the trainer stops when that process is gone


class RunBusyError(RuntimeError):
    """Another process is training this run (it holds ``<run_dir>/.lock``)."""


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Non-blocking exclusive ``flock`` on ``<run_dir>/.lock``; ``RunBusyError`` when another holder exists."""
    handle = open(run_dir / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunBusyError(
                f"run {run_dir.name} is being trained by another process (lock {run_dir / LOCK_NAME} is held); "
                "wait for it to finish or stop it first"
            ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


# ----- markers -----------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_done(run_dir: Path) -> bool:
    """True when the run finished (its ``DONE`` marker exists)."""
    return (Path(run_dir) / DONE_NAME).exists()


def read_done(run_dir: Path) -> dict[str, Any] | None:
    """The ``DONE`` marker's payload, or None when the run has not finished (or the file is unreadable)."""
    return _read_json(Path(run_dir) / DONE_NAME)


def write_done(run_dir: Path, payload: dict[str, Any]) -> None:
    """Atomically write the ``DONE`` marker (keys: run_id, run_key, name, steps, test_metrics, val_history,
    finished_at)."""
    write_json_atomic(Path(run_dir) / DONE_NAME, payload)


def read_diverged(run_dir: Path) -> dict[str, Any] | None:
    """The ``DIVERGED`` marker's payload (error, step, run_id, lr, checkpoint_step, at), or None."""
    return _read_json(Path(run_dir) / DIVERGED_NAME)


def write_diverged(run_dir: Path, payload: dict[str, Any]) -> None:
    """Atomically write the ``DIVERGED`` marker."""
    write_json_atomic(Path(run_dir) / DIVERGED_NAME, payload)


def write_run_id(run_dir: Path, run_id: str, tracking_uri: str, experiment_id: str) -> None:
    """Persist the MLflow run id in ``<run_dir>/mlflow_run.json`` (before the first step)."""
    write_json_atomic(Path(run_dir) / RUN_ID_NAME, {"run_id": run_id, "tracking_uri": tracking_uri,
                                                     "experiment_id": experiment_id, "written_at": time.time()})


def read_run_id(run_dir: Path, tracking_uri: str) -> str | None:
    """The run id in ``mlflow_run.json`` when it was written for the same store; None otherwise."""
    data = _read_json(Path(run_dir) / RUN_ID_NAME)
    if data is None or data.get("tracking_uri") != tracking_uri:
        return None
    return str(data.get("run_id") or "") or None


# ----- progress ----------------------------------------------------------------------------------------------
PROGRESS_EVERY_S = 2.0
PHASES = ("train", "validate", "evaluate", "done")


@dataclass(frozen=True)
class Progress:
    """One reading of a run's progress file."""

    step: int
    total: int | None
    phase: str
    images_per_s: float | None
    time: float


def write_progress(run_dir: Path, progress: Progress) -> None:
    """Atomically write ``progress`` into ``run_dir / PROGRESS_NAME``."""
    if progress.phase not in PHASES:
        raise ValueError(f"unknown phase {progress.phase!r} (valid: {', '.join(PHASES)})")
    write_json_atomic(Path(run_dir) / PROGRESS_NAME, dataclasses.asdict(progress))


def read_progress(run_dir: Path) -> Progress | None:
    """The run's last progress, or None when there is no readable progress file (not started, older trainer)."""
    try:
        data = json.loads((Path(run_dir) / PROGRESS_NAME).read_text())
        rate = data.get("images_per_s")
        total = data.get("total")
        return Progress(int(data["step"]), None if total is None else int(total), str(data["phase"]),
                        None if rate is None else float(rate), float(data["time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ProgressWriter:
    """Throttled producer for the trainer: ``update`` every step, it writes at most every ``every_s`` seconds
    (and always on a new phase), with the image rate measured between writes."""

    def __init__(self, run_dir: Path, total: int | None, batch_size: int, every_s: float = PROGRESS_EVERY_S) -> None:
        self.run_dir = Path(run_dir)
        self.total = total
        self.batch_size = batch_size
        self.every_s = every_s
        self._last: tuple[float, int] | None = None  # (monotonic time, step) of the last write
        self._phase = ""
        self._rate: float | None = None

    def update(self, step: int, phase: str = "train", force: bool = False) -> bool:
        """Record ``step`` in ``phase``; True when the file was written."""
        now = time.monotonic()
        if not force and phase == self._phase and self._last is not None and now - self._last[0] < self.every_s:
            return False
        if self._last is not None and step > self._last[1] and phase == "train" and self._phase == "train":
            self._rate = (step - self._last[1]) * self.batch_size / max(now - self._last[0], 1e-9)
        write_progress(self.run_dir, Progress(step, self.total, phase, self._rate, time.time()))
        self._last, self._phase = (now, step), phase
        return True
