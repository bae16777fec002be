"""The trainer's structured progress file, ``<run dir>/progress.json``: what the orchestrator's grid bar reads.

The trainer rewrites it atomically (temp file + ``os.replace``) at most every ``PROGRESS_EVERY_S`` seconds
while it trains, and at each change of phase; a reader never sees a half-written file. Keys::

    {"step": 240, "total": 1000, "phase": "train", "images_per_s": 4.6, "time": 1765000000.0}

``phase`` is ``train``, ``validate``, ``evaluate`` (the final test evaluation) or ``done``; ``images_per_s`` is the
rate over the last interval (None before the first); ``time`` is the wall-clock time of the write.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from md2bench.files import write_json_atomic

PROGRESS_NAME = "progress.json"
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


def read_progress_file(run_dir: Path) -> Progress | None:
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
