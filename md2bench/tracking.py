"""Tracking behind one narrow interface; MLflow is the only implementation.

The trainer, orchestrator, tuner and report never import MLflow: they use ``MLflowTracker`` (which holds an
``MlflowClient``, never MLflow's global "active run") and the ``TrackedRun`` handles it returns.

Store: ``resolve_uri(uri)`` picks, in order, an explicit URI, ``$MLFLOW_TRACKING_URI``, else the embedded
default ``sqlite:///mlruns.db`` in the working directory, with artifacts in ``./mlartifacts``. Nothing needs a
server. Grids and studies are parent runs; their runs carry ``mlflow.parentRunId`` (MLflow's nesting tag).

Naming (read by ``report`` and ``orchestrator``; see ARCHITECTURE.md): tags ``md2bench.run_key``,
``md2bench.row``, ``md2bench.grid``, ``md2bench.seed``, ``md2bench.commit``, ``md2bench.device``...; metrics
``train/*``, ``val/*`` (per epoch), ``test/*`` (final).

One store, many processes (a local SQLite store; a tracking server needs none of this):

- **First use under a lock.** ``MLflowTracker`` opens a SQLite store (creating and migrating its tables on first
  use) while holding ``<db>.lock`` beside the file (``mlruns.db.lock``, a ``filelock`` lock), so any number of
  processes may start at once on a store that does not exist yet. Every client call is retried with backoff
  while SQLite answers "database is locked" (its single writer makes that transient).
- **Claims.** A RUNNING run that carries ``md2bench.owner.*`` tags (host, boot id, pid, process start time) and a
  ``md2bench.heartbeat`` tag (unix time, refreshed every ``HEARTBEAT_S`` by ``Heartbeat``) is a claim: it is
  *live* while its process exists (same machine) or its heartbeat is younger than ``STALE_AFTER_S`` (another
  machine). ``claim_run_key`` claims a ``run_key`` store-wide under the store lock; ``reap_stale_runs`` ends
  RUNNING runs whose process is gone (KILLED, ``md2bench.end_reason = owner-gone``) and RUNNING runs of older
  versions without heartbeats that show no activity for ``STALE_AFTER_S`` (``zombie``).
- **Ends.** ``TrackedRun.end(status, reason)`` sets ``md2bench.end_reason`` (``END_REASONS``) with the status.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, TypeVar

from md2bench.errors import ActionableError, exception_chain

DEFAULT_URI = "sqlite:///mlruns.db"
DEFAULT_EXPERIMENT = "md2bench"
TAG = "md2bench."  # prefix of our own tags
PARENT_TAG = "mlflow.parentRunId"

STORE_LOCK_SUFFIX = ".lock"  # the cross-process lock beside a SQLite store: mlruns.db -> mlruns.db.lock
STORE_LOCK_TIMEOUT_S = 600.0  # waiting longer for the store lock than this is an error naming the lock file
LOCKED_RETRY_S = 120.0  # how long a client call is retried while SQLite says "database is locked"
HEARTBEAT_S = 30.0  # a claim's heartbeat refresh period
STALE_AFTER_S = 180.0  # a claim from another machine is stale when its heartbeat is older than this

RUN_KEY_TAG = TAG + "run_key"
HEARTBEAT_TAG = TAG + "heartbeat"  # unix time of the owner's last heartbeat
OWNER_HOST_TAG = TAG + "owner.host"
# MLflow 3's UI opens an experiment with this tag as model training (runs table with params and metrics), not as
# a GenAI app (traces overview).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
FLAG_TAG = TAG + "flag."  # md2bench.flag.<key> = true|false: a grid row's table flags (md2bench.grid.FLAG_KEYS)
OWNER_BOOT_TAG = TAG + "owner.boot"  # the machine's boot id: pids of an earlier boot are gone
OWNER_PID_TAG = TAG + "owner.pid"
OWNER_START_TAG = TAG + "owner.start"  # the process start time (clock ticks since boot): pid reuse shows
RUN_DIR_TAG = TAG + "run_dir"  # the run folder of the claim (absolute path on the owner's machine)
END_REASON_TAG = TAG + "end_reason"
END_NOTE_TAG = TAG + "end_note"  # one line of detail for owner-gone / zombie ends
FAILURE_TAG = TAG + "failure"

# Values of md2bench.end_reason.
END_FINISHED = "finished"  # FINISHED
END_ERROR = "error"  # FAILED: an exception (md2bench.failure says which)
END_NONFINITE = "non-finite"  # FAILED: loss, validation or weights became NaN/inf
END_INTERRUPTED = "interrupted"  # KILLED: SIGTERM/SIGINT, the checkpoint resumes it
END_PARENT_GONE = "parent-gone"  # KILLED: the orchestrator that started the trainer died; it stopped itself
END_PRUNED = "pruned"  # KILLED: the tuner pruned the trial
END_OWNER_GONE = "owner-gone"  # KILLED by a later invocation: the process holding the run is gone
END_ZOMBIE = "zombie"  # KILLED by a later invocation: RUNNING from a version without heartbeats, inactive
END_REASONS = (END_FINISHED, END_ERROR, END_NONFINITE, END_INTERRUPTED, END_PARENT_GONE, END_PRUNED,
               END_OWNER_GONE, END_ZOMBIE)
_DEFAULT_REASON = {"FINISHED": END_FINISHED, "FAILED": END_ERROR, "KILLED": END_INTERRUPTED}

_T = TypeVar("_T")


class StoreError(ActionableError, RuntimeError):
    """The MLflow store cannot be used as asked (read-only, unopenable, locked); the message says what to do."""


class ClaimBusyError(RuntimeError):
    """The run key is claimed by a live run of another process (any folder, any machine)."""


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI to use: explicit > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///mlruns.db`` (working dir)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and for in-memory databases)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def store_lock_path(uri: str) -> Path | None:
    """The cross-process lock file of a SQLite store: ``<db>.lock`` beside it (None for other stores)."""
    db = sqlite_path(uri)
    return db.with_name(db.name + STORE_LOCK_SUFFIX) if db is not None else None


def is_locked_error(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it chains) is SQLite's transient "database is locked"."""
    return any("database is locked" in str(e) or "database table is locked" in str(e) for e in exception_chain(exc))


def retry_locked(call: Callable[[], _T], budget_s: float = LOCKED_RETRY_S, rng: random.Random | None = None) -> _T:
    """``call()``, retried with jittered exponential backoff (50 ms .. 2 s) while it fails with "database is locked".

    A private ``random.Random`` draws the jitter: the global generators belong to the training run.
    """
    rng = rng or random.Random()
    deadline = time.monotonic() + budget_s
    delay = 0.05
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_locked_error(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay * (0.5 + rng.random()))
        delay = min(delay * 2.0, 2.0)


class _LockRetryingClient:
    """An ``MlflowClient`` whose every method is retried on SQLite's "database is locked" (see ``retry_locked``)."""

    def __init__(self, client: Any, budget_s: float = LOCKED_RETRY_S) -> None:
        self._client = client
        self._budget_s = budget_s
        self._rng = random.Random()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retry_locked(lambda: attr(*args, **kwargs), self._budget_s, self._rng)

        return call


def describe_store_error(exc: BaseException, uri: str) -> str | None:
    """One line naming the store and the cause for the failures a user can fix; None for anything else.

    Recognised (SQLite's own messages): a read-only store, a full disk, a file that cannot be opened as the
    database, and a store still locked after ``LOCKED_RETRY_S``. File-system errors of artifacts and run folders
    are ``md2bench.errors.describe_os_error``'s.
    """
    where = str(sqlite_path(uri) or uri)
    chain = list(exception_chain(exc))
    text = " | ".join(str(e) for e in chain).lower()
    if "readonly database" in text:
        return (f"MLflow store {where} is read-only (attempt to write a readonly database): make the file and its "
                "folder writable, or point --tracking-uri (or $MLFLOW_TRACKING_URI) at a writable store")
    if "database or disk is full" in text:
        return (f"no space left on device: MLflow store {where} could not be written; free space on that disk or "
                "point --tracking-uri at a store on another one")
    if "unable to open database file" in text or "file is not a database" in text:
        return (f"MLflow store {where} cannot be opened as a SQLite database ({chain[-1]}); check the path and its "
                "folder's permissions, or move the file aside to start a new store")
    if is_locked_error(exc):
        return (f"MLflow store {where} stayed locked for {LOCKED_RETRY_S:.0f}s (database is locked): another "
                "process holds a long write; retry, or use a tracking server for many concurrent writers")
    return None


def _artifact_root(uri: str) -> str | None:
    """Local artifact folder beside a SQLite store (``<db dir>/mlartifacts``); None lets a server decide."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.resolve().parent / "mlartifacts").as_uri()
    return None


def git_commit(cwd: str | Path | None = None) -> str:
    """The current git commit (with ``-dirty`` when the tree has changes), or ``unknown`` outside a checkout.

    ``$MD2BENCH_COMMIT`` takes precedence: set it where the code runs from a copy without ``.git`` (a cluster
    staging folder, a remote GPU machine), so runs still carry the commit that produced them.
    """
    if os.environ.get("MD2BENCH_COMMIT"):
        return os.environ["MD2BENCH_COMMIT"]
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------------------------- owners and claims
def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def boot_id() -> str:
    """This machine's boot id (Linux), or ``""`` where there is none."""
    return _read_text("/proc/sys/kernel/random/boot_id")


def process_start(pid: int) -> str:
    """Start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), ``""`` if unknown."""
    stat = _read_text(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def _process_exists(pid: int) -> bool:
    """Whether ``pid`` exists on this machine and is not a zombie (an exited, unreaped child)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _read_text(f"/proc/{pid}/stat").rpartition(")")[2].split()
    return not (fields and fields[0] in ("Z", "X"))


@dataclass(frozen=True)
class Owner:
    """The process that holds a claim.

    Attributes:
        host: ``socket.gethostname()``.
        boot: the machine's boot id (``""`` off Linux).
        pid: process id.
        start: process start time (``process_start``; ``""`` off Linux).
    """

    host: str
    boot: str
    pid: int
    start: str

    @classmethod
    def current(cls) -> "Owner":
        """This process."""
        pid = os.getpid()
        return cls(socket.gethostname(), boot_id(), pid, process_start(pid))

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "Owner | None":
        """The owner recorded on a run, None for runs without owner tags (older md2bench versions)."""
        if OWNER_PID_TAG not in tags or OWNER_HOST_TAG not in tags:
            return None
        try:
            pid = int(tags[OWNER_PID_TAG])
        except ValueError:
            return None
        return cls(tags[OWNER_HOST_TAG], tags.get(OWNER_BOOT_TAG, ""), pid, tags.get(OWNER_START_TAG, ""))

    def tags(self) -> dict[str, str]:
        return {OWNER_HOST_TAG: self.host, OWNER_BOOT_TAG: self.boot, OWNER_PID_TAG: str(self.pid),
                OWNER_START_TAG: self.start}

    def alive(self) -> bool | None:
        """True / False on this machine; None when the owner runs on another machine (ask the heartbeat)."""
        if self.host != socket.gethostname():
            return None
        here = boot_id()
        if self.boot and here and self.boot != here:
            return False  # the machine rebooted since: the process is gone
        if not _process_exists(self.pid):
            return False
        start = process_start(self.pid)
        return not (self.start and start and start != self.start)  # a different process reusing the pid

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


@dataclass(frozen=True)
class Claim:
    """A RUNNING run seen as a claim on its run key.

    Attributes:
        run_id, experiment_id: the MLflow run.
        run_key: its ``md2bench.run_key`` tag (``""`` for runs without one, e.g. grid parents).
        owner: the process recorded on it (None: an older md2bench that records none).
        heartbeat: unix time of its last heartbeat (None when it has none).
        last_activity: unix time of the latest sign of life (heartbeat, else the run's start or last metric).
        run_dir: the claim's run folder on its owner's machine (``""`` if unknown).
    """

    run_id: str
    experiment_id: str
    run_key: str
    owner: Owner | None
    heartbeat: float | None
    last_activity: float
    run_dir: str = ""

    def is_live(self, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> bool:
        """Live while its process exists (this machine) or, elsewhere, while its last sign of life is recent."""
        now = time.time() if now is None else now
        alive = self.owner.alive() if self.owner is not None else None
        if alive is not None:
            return alive
        return now - self.last_activity < stale_after_s

    def describe(self, now: float | None = None) -> str:
        """``MLflow run <id> (pid 12 on host, heartbeat 8s ago, folder ...)``."""
        now = time.time() if now is None else now
        who = self.owner.describe() if self.owner is not None else "an md2bench without heartbeats"
        beat = f"heartbeat {now - self.heartbeat:.0f}s ago" if self.heartbeat is not None else (
            f"last activity {now - self.last_activity:.0f}s ago")
        folder = f", folder {self.run_dir}" if self.run_dir else ""
        return f"MLflow run {self.run_id} ({who}, {beat}{folder})"


def _float_tag(tags: Mapping[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return None


@dataclass
class TrackedRun:
    """A handle on one MLflow run: every write names this run explicitly."""

    client: Any
    run_id: str
    experiment_id: str

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values stringified; MLflow takes at most 100 per batch call)."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    def logged_params(self) -> dict[str, str]:
        """The params this run holds now (as strings; MLflow params are write-once)."""
        return dict(self.client.get_run(self.run_id).data.params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step``; non-finite values are skipped (MLflow rejects NaN in some stores)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500], synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        if items:
            self.client.log_batch(self.run_id, tags=items, synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED`` with ``md2bench.end_reason`` (``END_REASONS``;
        default: ``finished`` / ``error`` / ``interrupted`` by status)."""
        self.client.set_tag(self.run_id, END_REASON_TAG, reason or _DEFAULT_REASON.get(status, status.lower()))
        self.client.set_terminated(self.run_id, status)

    def claim_tags(self, owner: Owner | None = None, run_dir: str | Path | None = None) -> None:
        """Record this process as the run's owner with a fresh heartbeat (and the run folder, if given)."""
        tags = {**(owner or Owner.current()).tags(), HEARTBEAT_TAG: f"{time.time():.3f}"}
        if run_dir is not None:
            tags[RUN_DIR_TAG] = str(Path(run_dir).resolve())
        self.set_tags(tags)

    def beat(self) -> None:
        """Refresh the heartbeat tag."""
        self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.3f}")

    def artifact_uri(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri


class Tracker(Protocol):
    """What md2bench asks of a tracking store: the trainer (``fit``), orchestrator, tuner and report take a
    ``Tracker``; ``MLflowTracker`` is the implementation. Nothing outside this module touches MLflow's client."""

    uri: str

    def require_writable(self) -> None: ...
    def store_lock(self, timeout_s: float = STORE_LOCK_TIMEOUT_S) -> contextlib.AbstractContextManager[None]: ...
    def experiment_id(self, name: str = DEFAULT_EXPERIMENT, create: bool = True) -> str | None: ...
    def experiment_names(self) -> list[str]: ...
    def start_run(self, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                  tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None) -> TrackedRun: ...
    def resume_run(self, run_id: str) -> TrackedRun: ...
    def run(self, run_id: str) -> TrackedRun: ...
    def get_run(self, run_id: str) -> Any: ...
    def find_runs(self, experiment: str | Iterable[str] | None = None, tags: Mapping[str, Any] | None = None,
                  statuses: Iterable[str] | None = None, parent_run_id: str | None = None,
                  max_results: int = 5000) -> list[Any]: ...
    def live_claim(self, run_key: str, now: float | None = None) -> Claim | None: ...
    def reap_stale_runs(self, experiment: str | Iterable[str] | None = None, tags: Mapping[str, Any] | None = None,
                        keep: Iterable[str] = (), now: float | None = None) -> list[Claim]: ...
    def claim_run_key(self, run_key: str, *, experiment: str, adopt_run_id: str | None,
                      new_run: Callable[[], TrackedRun], run_dir: str | Path | None = None,
                      skip_if_finished: bool = True) -> tuple[TrackedRun | None, str | None]: ...
    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]: ...
    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path: ...


class MLflowTracker:
    """The MLflow implementation of md2bench's tracking interface (``Tracker``).

    Args:
        uri: tracking URI (see ``resolve_uri``).
    """

    def __init__(self, uri: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = resolve_uri(uri)
        self.read_only = False
        self._lock: Any = None
        db = sqlite_path(self.uri)
        if db is None:  # a tracking server or another database: MLflow's own client, unchanged
            self.client = MlflowClient(tracking_uri=self.uri)
            return
        self._open_sqlite(db, MlflowClient)

    # ------------------------------------------------------------------ the SQLite store
    def _open_sqlite(self, db: Path, client_cls: Any) -> None:
        """Create / migrate / open the store under its lock file; a read-only store opens for reading."""
        folder = db.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of MLflow store {db}: {exc.strerror or exc}; create it or "
                             "point --tracking-uri at another store") from exc
        writable = os.access(folder, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))
        if not writable and not db.exists():
            raise StoreError(f"cannot create MLflow store {db}: its folder is read-only; make {folder} writable or "
                             "point --tracking-uri at another store")
        self.read_only = not writable
        try:
            with self.store_lock():  # MlflowClient creates / migrates the tables when it is constructed
                self.client = _LockRetryingClient(retry_locked(lambda: client_cls(tracking_uri=self.uri)))
                self.client.search_experiments(max_results=1)
        except StoreError:
            raise
        except Exception as exc:
            message = describe_store_error(exc, self.uri)
            if message is None:
                raise
            raise StoreError(message) from exc

    @contextlib.contextmanager
    def store_lock(self, timeout_s: float = STORE_LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the store's cross-process lock (``<db>.lock``); a no-op for servers and read-only stores.

        Reentrant within a process. Held only for short critical sections: first use, claiming a run key,
        marking dead runs.
        """
        path = store_lock_path(self.uri)
        if path is None or self.read_only:
            yield
            return
        if self._lock is None:
            from filelock import FileLock

            # One lock object per file in a process (is_singleton): nested use re-enters instead of deadlocking.
            self._lock = FileLock(str(path.resolve()), timeout=timeout_s, is_singleton=True)
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=timeout_s)
        except Timeout as exc:
            raise StoreError(f"waited {timeout_s:.0f}s for the MLflow store lock {path}: another md2bench process "
                             "holds it; if none is running, delete that file") from exc
        except OSError as exc:
            raise StoreError(f"cannot create the MLflow store lock {path}: {exc.strerror or exc}; make its folder "
                             "writable") from exc
        try:
            yield
        finally:
            self._lock.release()

    def require_writable(self) -> None:
        """Raise ``StoreError`` (one line: the path, the cause, what to do) when the store cannot be written."""
        if self.read_only:
            raise StoreError(describe_store_error(RuntimeError("attempt to write a readonly database"), self.uri)
                             or f"MLflow store {self.uri} is read-only")

    # ------------------------------------------------------------------ experiments and runs
    def experiment_id(self, name: str = DEFAULT_EXPERIMENT, create: bool = True) -> str | None:
        """Id of experiment ``name``, created (with a local artifact root for SQLite) when missing."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        if not create:
            return None
        try:
            return self.client.create_experiment(name, artifact_location=_artifact_root(self.uri),
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # another process created it between our read and write
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def start_run(
        self,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> TrackedRun:
        """Create a new RUNNING run, nested under ``parent_run_id`` when given."""
        exp_id = self.experiment_id(experiment)
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        return TrackedRun(self.client, run.info.run_id, exp_id)

    def resume_run(self, run_id: str) -> TrackedRun:
        """Re-open an existing run (status back to RUNNING) to continue logging into it."""
        run = self.client.get_run(run_id)
        self.client.update_run(run_id, status="RUNNING")
        return TrackedRun(self.client, run_id, run.info.experiment_id)

    def run(self, run_id: str) -> TrackedRun:
        """A handle on an existing run, to write into it without changing its status."""
        return TrackedRun(self.client, run_id, self.client.get_run(run_id).info.experiment_id)

    def get_run(self, run_id: str) -> Any:
        return self.client.get_run(run_id)

    def experiment_names(self) -> list[str]:
        """The names of the store's experiments, sorted."""
        return sorted(e.name for e in self.client.search_experiments())

    def find_runs(
        self,
        experiment: str | Iterable[str] | None = None,
        tags: Mapping[str, Any] | None = None,
        statuses: Iterable[str] | None = None,
        parent_run_id: str | None = None,
        max_results: int = 5000,
    ) -> list[Any]:
        """Runs (MLflow ``Run`` objects, newest first) matching tag equalities and statuses.

        Args:
            experiment: experiment name(s); None searches every experiment.
            tags: ``{"md2bench.run_key": "abc..."}`` equalities.
            statuses: keep only these statuses (RUNNING, FINISHED, FAILED, KILLED, SCHEDULED).
            parent_run_id: keep only runs nested under this run.
        """
        if experiment is None:
            exp_ids = [e.experiment_id for e in self.client.search_experiments()]
        else:
            names = [experiment] if isinstance(experiment, str) else list(experiment)
            exp_ids = [i for i in (self.experiment_id(n, create=False) for n in names) if i is not None]
        if not exp_ids:
            return []
        clauses = [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
        if parent_run_id:
            clauses.append(f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
        runs = self.client.search_runs(
            exp_ids, filter_string=" and ".join(clauses), max_results=max_results, order_by=["attributes.start_time DESC"]
        )
        if statuses is not None:
            wanted = set(statuses)
            runs = [r for r in runs if r.info.status in wanted]
        return list(runs)

    # ------------------------------------------------------------------ claims
    def _claim_of(self, run: Any) -> Claim:
        tags = run.data.tags
        heartbeat = _float_tag(tags, HEARTBEAT_TAG)
        owner = Owner.from_tags(tags)
        last = heartbeat if heartbeat is not None else self._last_activity(run)
        return Claim(run.info.run_id, run.info.experiment_id, tags.get(RUN_KEY_TAG, ""), owner, heartbeat, last,
                     tags.get(RUN_DIR_TAG, ""))

    def _last_activity(self, run: Any) -> float:
        """Latest sign of life of a run without heartbeats: its start, or its last training / validation loss."""
        last = (run.info.start_time or 0) / 1000.0
        for key in ("train/loss", "val/loss"):
            if key in run.data.metrics:
                for metric in self.client.get_metric_history(run.info.run_id, key)[-1:]:
                    last = max(last, metric.timestamp / 1000.0)
        return last

    def running_claims(self, experiment: str | Iterable[str] | None = None,
                       tags: Mapping[str, Any] | None = None) -> list[Claim]:
        """RUNNING runs matching ``tags`` (``experiment`` None: every experiment of the store) as claims."""
        return [self._claim_of(r) for r in self.find_runs(experiment, tags=tags, statuses=["RUNNING"])]

    def live_claim(self, run_key: str, now: float | None = None) -> Claim | None:
        """A live claim of another process on ``run_key`` anywhere in the store, or None (a cheap early check;
        ``claim_run_key`` is the atomic one)."""
        now = time.time() if now is None else now
        me = Owner.current()
        for claim in self.running_claims(None, {RUN_KEY_TAG: run_key}):
            if claim.owner != me and claim.is_live(now):
                return claim
        return None

    def mark_dead(self, claim: Claim, now: float | None = None, reason: str | None = None) -> str:
        """End a dead claim KILLED with ``reason`` (default ``owner-gone``, or ``zombie`` for a run without owner
        tags); returns the reason."""
        now = time.time() if now is None else now
        reason = reason or (END_ZOMBIE if claim.owner is None else END_OWNER_GONE)
        note = (f"RUNNING but its process is gone: {claim.describe(now)}; marked KILLED by "
                f"{Owner.current().describe()} at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}")
        self.client.set_tag(claim.run_id, END_NOTE_TAG, note[:5000])
        self.client.set_tag(claim.run_id, END_REASON_TAG, reason)
        self.client.set_terminated(claim.run_id, "KILLED")
        return reason

    def reap_stale_runs(self, experiment: str | Iterable[str] | None = None, tags: Mapping[str, Any] | None = None,
                        keep: Iterable[str] = (), now: float | None = None) -> list[Claim]:
        """Mark KILLED every RUNNING run (matching ``tags``) whose process is gone; the claims it marked.

        Args:
            experiment: where to look (None: the whole store).
            tags: only runs with these tags.
            keep: run ids to leave alone (a run the caller is about to adopt).
        """
        if self.read_only:
            return []
        now = time.time() if now is None else now
        kept = set(keep)
        marked: list[Claim] = []
        with self.store_lock():
            for claim in self.running_claims(experiment, tags):
                if claim.run_id in kept or claim.is_live(now):
                    continue
                self.mark_dead(claim, now)
                marked.append(claim)
        return marked

    def claim_run_key(
        self,
        run_key: str,
        *,
        experiment: str,
        adopt_run_id: str | None,
        new_run: Callable[[], TrackedRun],
        run_dir: str | Path | None = None,
        skip_if_finished: bool = True,
    ) -> tuple[TrackedRun | None, str | None]:
        """Claim ``run_key`` in the whole store, atomically (under the store lock).

        Live RUNNING runs with this key (another process, any folder, any machine) make the claim fail; dead ones
        are marked KILLED (``mark_dead``), except ``adopt_run_id``, which is re-opened and continued. With
        ``skip_if_finished``, a FINISHED run with this key in ``experiment`` (other than ``adopt_run_id``) means
        the work is done: nothing is claimed.

        Args:
            run_key: the run's ``md2bench.run_key``.
            experiment: the experiment of the run.
            adopt_run_id: the run this run folder continues (from its checkpoint or run-id file), if any.
            new_run: creates the run when there is nothing to adopt (``start_run`` + params).
            run_dir: recorded as ``md2bench.run_dir``.
            skip_if_finished: see above.

        Returns:
            ``(run, None)``: the claimed run (RUNNING, owned by this process, fresh heartbeat); or ``(None,
            finished_run_id)`` when the key is already finished.

        Raises:
            ClaimBusyError: a live run of another process holds the key (the message names it).
        """
        now = time.time()
        me = Owner.current()
        with self.store_lock():
            for claim in self.running_claims(None, {RUN_KEY_TAG: run_key}):
                if claim.owner == me:  # left RUNNING by an earlier fit of this very process: not a live claim
                    if claim.run_id != adopt_run_id:
                        self.mark_dead(claim, now)
                    continue
                if claim.is_live(now):
                    raise ClaimBusyError(
                        f"run {run_key} is being trained elsewhere: {claim.describe(now)}; wait for it to finish "
                        f"or stop that process (a claim with a heartbeat older than {STALE_AFTER_S:.0f}s, or whose "
                        "process is gone, is taken over by the next run)")
                if claim.run_id != adopt_run_id:
                    self.mark_dead(claim, now)
            if skip_if_finished:
                for run in self.find_runs(experiment, tags={RUN_KEY_TAG: run_key}, statuses=["FINISHED"]):
                    if run.info.run_id != adopt_run_id:
                        return None, run.info.run_id
            run = None
            if adopt_run_id:
                try:
                    run = self.resume_run(adopt_run_id)
                except Exception:  # the run is gone or lives in another store: start a new one
                    run = None
            if run is None:
                run = new_run()
            run.claim_tags(me, run_dir)
        return run, None

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one metric, in step order."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path:
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))


def quiet_store_logs() -> None:
    """Silence MLflow's own logging of database errors (a traceback per failed statement) and table set-up.

    md2bench reports a store failure in one line (``describe_store_error``); the command line calls this
    unless ``--debug`` is given.
    """
    import logging

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


class Heartbeat:
    """Refreshes a run's ``md2bench.heartbeat`` every ``interval_s`` from a daemon thread.

    A failed refresh (store busy, disk full) is skipped: the next one tries again, and a claim only goes stale
    after ``STALE_AFTER_S``.

    Args:
        run: the claimed run.
        interval_s: refresh period.
    """

    def __init__(self, run: TrackedRun, interval_s: float = HEARTBEAT_S) -> None:
        self.run = run
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Heartbeat":
        self._thread = threading.Thread(target=self._loop, name="md2bench-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):
                self.run.beat()

    def stop(self) -> None:
        """Stop refreshing (waits for a refresh in flight)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
