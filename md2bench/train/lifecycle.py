"""The process around one run: its log file, stop requests (signals, a vanished parent) and its MLflow run.

- ``make_logger``: the run's ``train.log`` (logger ``md2bench.trainer.<run_key>``).
- ``StopFlag``: SIGTERM/SIGINT ask for a stop (checkpoint, exit 75); a second signal forces the quit.
- ``ParentWatch``: a trainer started by the orchestrator (``$MD2BENCH_PARENT_PID``) stops itself like on
  SIGTERM when that process dies.
- ``claim_tracked_run`` / ``RunLifecycle``: the run claims its ``run_key`` in the whole MLflow store before
  training and is ended exactly once, with a true status and ``md2bench.end_reason``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from md2bench.config import Config
from md2bench.train.device import device_tag
from md2bench.train.rundir import LOG_NAME, PARENT_PID_ENV, RunBusyError

if TYPE_CHECKING:
    from md2bench.tracking import Tracker

PARENT_POLL_S = 1.0


# ============================================================================================ log file
class QuietFileHandler(logging.FileHandler):
    """A file handler that drops a record it cannot write (a full disk) instead of printing a traceback."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass


def make_logger(run_dir: Path, run_key: str) -> tuple[logging.Logger, logging.Handler]:
    """The run's logger, writing ``<run_dir>/train.log``; remove and close the handler when the run ends."""
    logger = logging.getLogger(f"md2bench.trainer.{run_key}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = QuietFileHandler(run_dir / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler


# ============================================================================================ stop requests
class StopFlag:
    """Set by SIGTERM/SIGINT (or by ``ParentWatch``); a second signal raises ``KeyboardInterrupt`` (force quit).

    ``reason`` is the MLflow end reason of the stop: ``interrupted``, or ``parent-gone`` when the orchestrator
    that started this trainer died.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.reason = "interrupted"
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signal = signum

    def request(self, signum: int, reason: str) -> None:
        """Ask for a stop as a signal would (from another thread); a no-op when a stop is already asked."""
        if self.signal is None:
            self.reason = reason
            self.signal = signum

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


class ParentWatch:
    """Stops the run (as SIGTERM would) when the orchestrator that started it is gone.

    The orchestrator starts each trainer in its own session (so Ctrl-C in a terminal reaches only the
    orchestrator) and names itself in ``$MD2BENCH_PARENT_PID``; when it dies, even by SIGKILL, this process is
    re-parented and the watch asks for a stop: checkpoint, MLflow run KILLED with reason ``parent-gone``, exit 75.
    """

    def __init__(self, stop: StopFlag, logger: logging.Logger, poll_s: float = PARENT_POLL_S) -> None:
        text = os.environ.get(PARENT_PID_ENV, "")
        self.parent = int(text) if text.isdigit() else None
        self.stop_flag = stop
        self.logger = logger
        self.poll_s = poll_s
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def parent_gone(self) -> bool:
        return self.parent is not None and os.getppid() != self.parent

    def start(self) -> "ParentWatch":
        if self.parent is None:
            return self
        self._thread = threading.Thread(target=self._loop, name="md2bench-parent-watch", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            if self.parent_gone():
                self.logger.warning("the orchestrator (pid %d) is gone: stopping this run", self.parent)
                self.stop_flag.request(signal.SIGTERM, "parent-gone")
                return
            if self._done.wait(self.poll_s):
                return

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


# ============================================================================================ the MLflow run
class RunLifecycle:
    """The MLflow run of one ``fit`` from its claim to its end: ended exactly once, with a status and a reason.

    ``fit`` ends it on every exit path the training code did not (an exception in start-up after the claim, a
    forced quit), so no run stays RUNNING while its process is gone; only SIGKILL escapes, and then the stale
    heartbeat lets the next invocation mark it.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.run: Any = None
        self.heartbeat: Any = None
        self.ended = False

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run is not None else None

    def attach(self, run: Any) -> None:
        """Take over a claimed run and keep its heartbeat fresh until it ends."""
        from md2bench.tracking import Heartbeat

        self.run = run
        self.heartbeat = Heartbeat(run).start()

    def end(self, status: str, reason: str, failure: str | None = None) -> None:
        """End the run (idempotent, best effort: a store that cannot be written is logged, not raised)."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        if self.run is None or self.ended:
            return
        self.ended = True
        try:
            if failure:
                from md2bench.tracking import FAILURE_TAG

                self.run.set_tags({FAILURE_TAG: failure[:5000]})
            self.run.end(status, reason)
        except Exception as exc:  # e.g. the store's disk is full: the next invocation marks the run instead
            self.logger.warning("could not mark MLflow run %s %s: %s", self.run.run_id, status, exc)


def claim_tracked_run(
    tracker: Tracker | None,
    cfg: Config,
    device: torch.device,
    run_dir: Path,
    logger: logging.Logger,
    *,
    experiment: str,
    run_name: str | None,
    tags: Mapping[str, Any] | None,
    parent_run_id: str | None,
    adopt_run_id: str | None,
    resumed_from: str | None,
    resume: bool,
) -> tuple[Any, str | None]:
    """Claim the run key in the store: continue ``adopt_run_id`` or start a new run; ``(run, None)``, or
    ``(None, finished_run_id)`` when a FINISHED run of this key exists in ``experiment`` (only when resuming).

    Raises:
        RunBusyError: a live run of another process holds the key (any folder, any machine).
    """
    from md2bench.tracking import ClaimBusyError

    tags_now = run_tags(cfg, device, tags)

    def new_run() -> Any:
        if adopt_run_id:
            logger.warning("could not re-open MLflow run %s; starting a new run", adopt_run_id)
        fresh_tags = {**tags_now, **({"md2bench.resumed_from": resumed_from} if resumed_from else {})}
        run = tracker.start_run(experiment, run_name=run_name or cfg.name, tags=fresh_tags,
                                parent_run_id=parent_run_id)
        run.log_params({**cfg.flat(), **flag_params(tags_now)})
        return run

    try:
        run, finished_id = tracker.claim_run_key(cfg.run_key, experiment=experiment, adopt_run_id=adopt_run_id,
                                                 new_run=new_run, run_dir=run_dir, skip_if_finished=resume)
    except ClaimBusyError as exc:
        raise RunBusyError(str(exc)) from exc
    if run is not None and run.run_id == adopt_run_id:
        run.set_tags(tags_now)
        if not tracker.get_run(run.run_id).data.params:  # killed between creating the run and logging its params
            run.log_params({**cfg.flat(), **flag_params(tags_now)})
    return run, finished_id


def flag_params(tags: Mapping[str, str]) -> dict[str, str]:
    """A grid row's table flags, passed as ``md2bench.flag.<key>`` tags, as ``flag.<key>`` params too (the MLflow
    compare view and parallel-coordinates plot offer params, not tags)."""
    from md2bench.tracking import FLAG_TAG

    return {f"flag.{k[len(FLAG_TAG):]}": v for k, v in tags.items() if k.startswith(FLAG_TAG)}


def run_tags(cfg: Config, device: torch.device, extra: Mapping[str, Any] | None) -> dict[str, str]:
    """The md2bench tags of a run on ``device`` (row, key, seed, commit, device, data and, for a synthetic world,
    its content fingerprint, evaluation), then ``extra``."""
    from md2bench import tracking
    from md2bench.evaluate import scaling_for
    from md2bench.metrics import protocol_for_split

    median_scaling, factor, _ = scaling_for(cfg, Path(cfg.data.path) if cfg.data.path else None)
    tags = {
        "md2bench.row": cfg.name,
        "md2bench.grid": "none",
        "md2bench.run_key": cfg.run_key,
        "md2bench.seed": str(cfg.train.seed),
        "md2bench.commit": tracking.git_commit(),
        "md2bench.device": device_tag(device),
        "md2bench.dataset": cfg.data.dataset,
        "md2bench.split": cfg.data.split,
        "md2bench.test_split": cfg.data.test_split,
        "md2bench.eval.crop": protocol_for_split(cfg.data.test_split).crop,
        "md2bench.eval.scaling": "median" if median_scaling else f"stereo-{factor:g}",
        "md2bench.torch": torch.__version__,
    }
    if cfg.data.dataset == "synthetic" and cfg.data.path:
        from md2bench.data.synthetic import is_rendered, world_fingerprint

        if is_rendered(Path(cfg.data.path)):  # the exact bytes trained on: same options can render differently
            tags["md2bench.data.fingerprint"] = world_fingerprint(cfg.data.path)[:16]
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


__all__ = [
    "ParentWatch", "QuietFileHandler", "RunLifecycle", "StopFlag", "claim_tracked_run", "flag_params",
    "make_logger", "run_tags",
]
