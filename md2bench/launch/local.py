"""The local backend: ``run_grid`` skips finished runs, resumes interrupted ones and packs the rest onto this
machine's GPUs (or its CPU) as subprocesses; its scheduler loop, signal handling, children and their exits.

Every run is the same command, ``python -m md2bench train <config.toml> --tracking-uri U --experiment <grid>
--run-name <row>/seed<k> --tag ... --parent-run-id P --resume``, whichever backend starts it (this module's
local scheduler or ``md2bench.launch.slurm``). The trainer owns the run folder ``<train.out_dir>/<run_key>/``: it
locks ``.lock`` (a second process on the same run exits 4), checkpoints to ``checkpoint.pt``, resumes from it, and
writes ``DONE`` when finished, and ``progress.json``, the only source of the table's steps (the run-folder contract:
``md2bench.train.rundir``). Exit codes: 0 finished, 1 failed, 3 blocked (ImageNet weights missing), 4 busy,
75 interrupted (checkpoint written).

Order of work in ``run_grid``:

0. Runs of the grid's experiment left RUNNING by processes that are gone (a trainer or orchestrator killed with
   SIGKILL, or zombies of older versions without heartbeats) are marked KILLED (``md2bench.end_reason`` =
   ``owner-gone`` / ``zombie``); see ``MLflowTracker.reap_stale_runs``.
1. ``plan``: each ``RunSpec`` is ``skip`` (``DONE`` marker, or a FINISHED MLflow run with its
   ``md2bench.run_key`` in the grid's experiment), ``busy`` (a live claim on its key anywhere in the store: another
   orchestrator or trainer, from any folder or machine, trains it now), ``resume`` (``checkpoint.pt`` present) or
   ``train``. The trainer claims the key again, atomically, before its first step (exit 4 when it lost a race).
   The synthetic worlds the runs to start need are rendered here, once each (``md2bench.launch.worlds``), so the
   children do not each render the same world side by side.
2. The MLflow experiment (named after the grid) and one parent run (tags ``md2bench.grid``,
   ``md2bench.kind=grid``, ``md2bench.commit``, owner and heartbeat tags refreshed while the grid runs) are
   created once, before any worker starts. An interrupted grid's parent is continued when it holds the same
   selection of rows and seeds (params ``grid.rows``, ``grid.seeds``, ``grid.runs``); another selection gets a
   new parent. Params are write-once: a continued parent keeps its first values, and what this invocation
   changed (``grid.slots``, ``grid.retries``, ``grid.path``) goes to the tag ``md2bench.grid.resumed_with``.
3. Slots (``detect_slots``): K runs per GPU, each child pinned with ``CUDA_VISIBLE_DEVICES``; on a machine
   without GPUs, ``cpu_jobs`` CPU runs (``train.device = cpu``).
4. The scheduler loop starts children on free slots, shows a live table (redrawn in place on a TTY, plain lines
   otherwise), retries failed runs ``retries`` times (the trainer resumes from the last checkpoint), reports
   exit 3 as blocked and exit 4 as running elsewhere. Ctrl-C (or SIGTERM) SIGTERMs the children, which
   checkpoint and exit 75; their MLflow runs and the parent are marked KILLED.

Each child's stdout and stderr go to ``<run_dir>/stdout.log`` (appended, one header per attempt); the trainer
itself writes ``<run_dir>/train.log`` and logs to MLflow. Children run in their own sessions (a Ctrl-C in the
terminal reaches only the orchestrator) and get ``$MD2BENCH_PARENT_PID``: when the orchestrator dies, even by
SIGKILL, each child stops as on SIGTERM (checkpoint, MLflow run KILLED with reason ``parent-gone``, exit 75), and
the next invocation resumes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

from md2bench.grid import Grid, RunSpec
from md2bench.launch.command import absolute_uri, child_env, train_command, write_launch_config
from md2bench.launch.display import Display, final_summary, skip_line, summary_line, table_rows
from md2bench.launch.dryrun import dry_run_grid
from md2bench.launch.estimate import estimate_line, fmt_duration
from md2bench.launch.outcome import BLOCKED, BUSY, FAILED, FINISHED, KILLED, SKIPPED, GridResult, RunOutcome
from md2bench.launch.plan import PlanItem, plan
from md2bench.launch.slots import Slot, detect_slots
from md2bench.launch.worlds import prepare_worlds
from md2bench.tracking import END_INTERRUPTED, RUN_KEY_TAG, Heartbeat, MLflowTracker, git_commit, resolve_uri
from md2bench.train.rundir import (CHECKPOINT_NAME, EXIT_BLOCKED, EXIT_BUSY, EXIT_FINISHED, EXIT_INTERRUPTED,
                                   STDOUT_NAME, is_done, read_progress)


@dataclass
class _Active:
    """A running child: its outcome, slot, process, open ``stdout.log`` and launch config, and its last progress."""

    outcome: RunOutcome
    slot: Slot
    proc: subprocess.Popen
    log: Any
    config_path: Path
    started: float
    first_step: tuple[int, float] | None = None
    step: tuple[int, int | None] | None = None
    term_sent: float | None = None
    phase: str | None = None  # from progress.json: train / validate / evaluate / done
    images_per_s: float | None = None  # from progress.json: the child's rate over its last interval


@dataclass
class _StopFlag:
    """Set by the SIGINT/SIGTERM handlers: ``stop`` on the first signal, ``kill`` on the second."""

    stop: bool = False
    kill: bool = False
    signals: list[int] = field(default_factory=list)


def run_grid(
    grid: Grid,
    *,
    seeds: int | None = None,
    rows: Sequence[str] | None = None,
    gpus: str = "all",
    runs_per_gpu: int | None = None,
    cpu_jobs: int = 1,
    retries: int = 1,
    tracking_uri: str | None = None,
    dry_run: bool = False,
    stream: TextIO | None = None,
    live: bool | None = None,
    poll_s: float = 0.5,
    stop_grace_s: float = 120.0,
    on_start: Callable[[RunSpec, subprocess.Popen], None] | None = None,
) -> GridResult:
    """Run every (row, seed) of ``grid`` on this machine, skipping finished runs and resuming interrupted ones.

    Args:
        grid: the grid (``md2bench.grid.load_grid``), with any command-line overrides already applied.
        seeds: how many seeds (``Grid.seeds_for``); None for the file's list.
        rows: only these rows; None for all.
        gpus: ``"all"``, ``"none"`` or ``"0,1"``.
        runs_per_gpu: K runs packed per GPU; None measures free memory (1 if unknown).
        cpu_jobs: concurrent runs where there is no GPU.
        retries: extra attempts for a failed run (each resumes from its last checkpoint).
        tracking_uri: MLflow store (``tracking.resolve_uri``).
        dry_run: print the plan and a rough time estimate; start nothing, write nothing.
        stream: output stream (default stdout).
        live: redraw the table in place (None: when ``stream`` is a TTY).
        poll_s: scheduler poll interval.
        stop_grace_s: after Ctrl-C, how long children get to checkpoint before SIGKILL.
        on_start: called with each started child process (e.g. to watch or signal it).

    Returns:
        The outcome of every run and the parent MLflow run id (None for a dry run).
    """
    out = stream or sys.stdout
    specs = grid.expand(seeds, rows)
    uri = absolute_uri(resolve_uri(tracking_uri))

    if dry_run:
        return dry_run_grid(grid, specs, uri, gpus, runs_per_gpu, cpu_jobs, out)

    tracker = MLflowTracker(uri)
    tracker.require_writable()
    # Experiment and parent run are created here, once, before any child opens the store.
    tracker.experiment_id(grid.name)
    for claim in tracker.reap_stale_runs(grid.name):
        out.write(f"marked KILLED: {claim.describe()} was left RUNNING by a process that is gone\n")
    items = plan(specs, tracker, grid.name)
    todo = [i for i in items if i.action in ("train", "resume")]
    prepare_worlds([i.spec for i in todo], out, progress=sys.stderr.isatty())  # once here, not once per child
    slots = detect_slots(gpus, runs_per_gpu, cpu_jobs, [i.spec for i in todo], measure=bool(todo))
    tags = {"md2bench.grid": grid.name, "md2bench.kind": "grid", "md2bench.commit": git_commit(),
            "md2bench.backend": "local"}
    if items and all(i.action == "skip" for i in items):
        # Nothing to do: report the finished runs and leave the store as it is (no new, empty parent run).
        outcomes = []
        for item in items:
            outcomes.append(RunOutcome(item.spec, state=SKIPPED, message=item.reason))
            out.write(skip_line(item) + "\n")
        parents = tracker.find_runs(grid.name, tags={"md2bench.kind": "grid"})
        newest = max(parents, key=lambda r: r.info.start_time or 0).info.run_id if parents else None
        out.write(f"grid {grid.name}: all {len(items)} runs finished; nothing to train (no new MLflow parent run)\n")
        return GridResult(grid.name, newest, outcomes)
    selection = _selection_params(grid, specs, seeds)
    with tracker.store_lock():  # two orchestrators starting at once must not both continue the same parent
        previous, other = _unfinished_parent(tracker, grid.name, selection)
        if previous is not None:  # an interrupted grid: continue its parent run (its resumed children are in it)
            parent = tracker.resume_run(previous)
            parent.set_tags(tags)
            out.write(f"continuing the grid's unfinished MLflow parent run {previous}\n")
        else:
            if other is not None:
                out.write(f"the grid's unfinished MLflow parent run {other} holds another selection of runs; "
                          f"this one gets a new parent run (that one stays as it is)\n")
            parent = tracker.start_run(experiment=grid.name,
                                       run_name=f"{grid.name} {time.strftime('%Y-%m-%d %H:%M:%S')}", tags=tags)
        parent.claim_tags()
    heartbeat = Heartbeat(parent).start()
    try:
        return _run_parent(grid, specs, items, slots, parent, tracker, uri, out, seeds=seeds, retries=retries,
                           live=live, poll_s=poll_s, stop_grace_s=stop_grace_s, on_start=on_start)
    except BaseException:
        heartbeat.stop()
        with contextlib.suppress(Exception):
            parent.end("FAILED", "error")
        raise
    finally:
        heartbeat.stop()


def _selection_params(grid: Grid, specs: Sequence[RunSpec], seeds: int | None) -> dict[str, str]:
    """The parent run's params that say which runs it holds (the rows, seeds and count selected), as logged."""
    return {"grid.seeds": ",".join(str(s) for s in grid.seeds_for(seeds)),
            "grid.rows": ",".join(sorted({s.row for s in specs})),
            "grid.runs": str(len(specs))}


def _unfinished_parent(
    tracker: MLflowTracker, grid_name: str, selection: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """``(to continue, passed over)``: the newest local parent run of the grid when it did not finish (KILLED by
    Ctrl-C, FAILED, or RUNNING with its orchestrator gone: ``reap_stale_runs`` has marked those KILLED) and held
    the same ``selection`` of runs; an unfinished parent of another selection (``--row``, ``--seeds``) is passed
    over — its params cannot change (MLflow params are write-once) and its children stay under it — and named
    second. ``(None, None)`` for a finished grid, or one whose parent is still RUNNING under a live orchestrator."""
    parents = tracker.find_runs(grid_name, tags={"md2bench.kind": "grid"})
    parents = [p for p in parents if p.data.tags.get("md2bench.backend", "local") == "local"]
    if not parents:
        return None, None
    newest = max(parents, key=lambda r: r.info.start_time or 0)
    if newest.info.status not in ("KILLED", "FAILED"):
        return None, None
    logged = newest.data.params
    if any(key in logged and logged[key] != value for key, value in selection.items()):
        return None, newest.info.run_id
    return newest.info.run_id, None


def _log_parent_params(parent: Any, params: Mapping[str, Any]) -> None:
    """Log the grid's params on its parent run. A continued parent keeps the values it was first given (MLflow
    params are write-once); those this invocation changed (``--cpu-jobs``, ``--retries``, the grid file's path)
    go to the tag ``md2bench.grid.resumed_with`` as ``key=value; ...``, the latest invocation's."""
    logged = parent.logged_params()
    values = {key: str(value)[:6000] for key, value in params.items()}
    parent.log_params({key: value for key, value in values.items() if key not in logged})
    changed = [f"{key}={value}" for key, value in values.items() if key in logged and logged[key] != value]
    if changed:
        parent.set_tags({"md2bench.grid.resumed_with": "; ".join(changed)})


def _run_parent(
    grid: Grid,
    specs: Sequence[RunSpec],
    items: Sequence[PlanItem],
    slots: Sequence[Slot],
    parent: Any,
    tracker: MLflowTracker,
    uri: str,
    out: TextIO,
    *,
    seeds: int | None,
    retries: int,
    live: bool | None,
    poll_s: float,
    stop_grace_s: float,
    on_start: Callable[[RunSpec, subprocess.Popen], None] | None,
) -> GridResult:
    """The body of ``run_grid`` under its parent run: schedule, reap, display, end the parent."""
    _log_parent_params(
        parent,
        {
            "grid.path": str(grid.path or ""),
            **_selection_params(grid, specs, seeds),
            "grid.slots": ",".join(s.label for s in slots),
            "grid.retries": retries,
        },
    )

    display = Display(out, live)
    outcomes, queue = _outcomes(items, display)
    display.event(
        f"grid {grid.name}: {len(specs)} runs, {len(queue)} to train, {len(specs) - len(queue)} skipped or busy; "
        f"slots: {', '.join(s.label for s in slots)}; MLflow parent run {parent.run_id} at {uri}"
    )
    if queue:
        display.event(estimate_line([o.spec for o in queue], slots, tracker))

    flag = _StopFlag()
    _schedule(queue, outcomes, slots, flag, grid.name, parent.run_id, tracker, uri, display, retries=retries,
              poll_s=poll_s, stop_grace_s=stop_grace_s, on_start=on_start)

    result = GridResult(grid.name, parent.run_id, list(outcomes.values()), interrupted=flag.stop)
    counts = result.counts()
    parent.log_metrics({f"grid/{state}": float(n) for state, n in counts.items()}, step=0)
    if flag.stop:
        parent.end("KILLED", END_INTERRUPTED)
    else:
        parent.end("FAILED" if FAILED in counts else "FINISHED")
    display.event(final_summary(result))
    return result


def _outcomes(items: Sequence[PlanItem], display: Display) -> tuple[dict[str, RunOutcome], list[RunOutcome]]:
    """One outcome per planned run (skipped and busy ones settled and announced) and the queue of the rest."""
    outcomes: dict[str, RunOutcome] = {}
    queue: list[RunOutcome] = []
    for item in items:
        outcome = RunOutcome(item.spec)
        outcomes[item.spec.run_key] = outcome
        if item.action == "skip":
            outcome.state, outcome.message = SKIPPED, item.reason
            display.event(skip_line(item))
        elif item.action == "busy":
            outcome.state, outcome.message = BUSY, item.reason
            display.event(f"busy   {item.spec.run_name} ({item.spec.run_key}): {item.reason}; not started here")
        else:
            outcome.resumed = item.action == "resume"
            queue.append(outcome)
    return outcomes, queue


def _schedule(
    queue: list[RunOutcome],
    outcomes: Mapping[str, RunOutcome],
    slots: Sequence[Slot],
    flag: _StopFlag,
    experiment: str,
    parent_id: str,
    tracker: MLflowTracker,
    uri: str,
    display: Display,
    *,
    retries: int,
    poll_s: float,
    stop_grace_s: float,
    on_start: Callable[[RunSpec, subprocess.Popen], None] | None,
) -> None:
    """Start queued runs on free slots, reap and retry finished children, redraw the table; until the queue and
    the slots are empty, or a stop signal's children have all exited."""
    threads = max(1, (os.cpu_count() or 1) // max(1, len(slots)))
    previous = _install_handlers(flag)
    active: dict[int, _Active] = {}  # slot index -> running child
    free_slots = list(slots)
    try:
        while queue or active:
            if flag.stop:
                _stop_children(active, flag, stop_grace_s)
            # Start children on free slots.
            while queue and free_slots and not flag.stop:
                outcome = queue.pop(0)
                slot = free_slots.pop(0)
                active[slot.index] = _launch(outcome, slot, uri, experiment, parent_id, threads, display)
                if on_start is not None:
                    on_start(outcome.spec, active[slot.index].proc)
            # Reap finished children.
            for index in list(active):
                a = active[index]
                code = a.proc.poll()
                if code is None:
                    _update_progress(a)
                    continue
                del active[index]
                free_slots.append(a.slot)
                free_slots.sort(key=lambda s: s.index)
                a.log.close()
                a.config_path.unlink(missing_ok=True)
                retry = _finish(a, code, flag.stop, retries, tracker, experiment, display)
                if retry:
                    queue.append(a.outcome)
            if flag.stop and not active:
                break
            display.table(table_rows(outcomes, active), summary_line(outcomes, active))
            time.sleep(poll_s)
    except BaseException:
        for a in active.values():  # an exception in the loop: do not leave children behind
            _terminate(a.proc, signal.SIGKILL)
            a.log.close()
            with contextlib.suppress(Exception):
                _mark_killed(tracker, experiment, a.outcome.spec, "error")
        raise
    finally:
        _restore_handlers(previous)
    display.table(table_rows(outcomes, active), summary_line(outcomes, active), force_beat=True)


def _launch(
    outcome: RunOutcome, slot: Slot, uri: str, experiment: str, parent_id: str, threads: int, display: Display
) -> _Active:
    spec = outcome.spec
    config_path = write_launch_config(spec, slot.device, f"{os.getpid()}-{slot.index}")
    cmd = train_command(config_path, spec, uri, experiment, parent_id)
    log = (spec.run_dir / STDOUT_NAME).open("a", encoding="utf-8")
    outcome.attempts += 1
    log.write(
        f"\n===== md2bench run-ablation {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {outcome.attempts} "
        f"on {slot.label} (pid {os.getpid()})\n$ {' '.join(cmd)}\n"
    )
    log.flush()
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(slot.gpu, threads), start_new_session=True,
    )
    outcome.state, outcome.device = "running", slot.label
    what = "resume" if (spec.run_dir / CHECKPOINT_NAME).is_file() else "start "
    display.event(f"{what} {spec.run_name} ({spec.run_key}) on {slot.label}, attempt {outcome.attempts}")
    return _Active(outcome, slot, proc, log, config_path, time.monotonic())


def _update_progress(a: _Active) -> None:
    """The child's progress from its ``progress.json`` (``md2bench.train.rundir.ProgressWriter``), when this attempt
    wrote it; a file left by an earlier attempt (older than this child) is not read as its progress."""
    progress = read_progress(a.outcome.spec.run_dir)
    started_wall = time.time() - (time.monotonic() - a.started)
    if progress is None or progress.time < started_wall:
        return
    a.step = (progress.step, progress.total)
    a.phase, a.images_per_s = progress.phase, progress.images_per_s
    if a.first_step is None:
        a.first_step = (progress.step, time.monotonic())


def _finish(
    a: _Active, code: int, stopping: bool, retries: int, tracker: MLflowTracker, experiment: str, display: Display
) -> bool:
    """Record a child's exit; True when the run should be queued again."""
    o, spec = a.outcome, a.outcome.spec
    o.returncode = code
    if code == EXIT_FINISHED or (stopping and is_done(spec.run_dir)):
        # (a stop that lands after the trainer wrote DONE, while it prints its summary, finished the run)
        o.state, o.message = FINISHED, ""
        display.event(f"done   {spec.run_name} ({spec.run_key}) in {fmt_duration(time.monotonic() - a.started)}")
        return False
    if code == EXIT_BLOCKED:
        o.state, o.message = BLOCKED, _log_tail(spec.run_dir, 20)
        display.event(f"blocked {spec.run_name} ({spec.run_key}):\n{_indent(o.message)}")
        return False
    if code == EXIT_BUSY:
        o.state = BUSY
        o.message = "another process is training this run (its folder lock or its claim in the MLflow store is held)"
        display.event(f"busy   {spec.run_name} ({spec.run_key}): running elsewhere, not started here")
        return False
    if stopping:
        o.state = KILLED
        if code == EXIT_INTERRUPTED:
            o.message = "interrupted; its checkpoint resumes it next time"
        elif code < 0:  # the signal arrived before the trainer could catch it (interpreter start-up)
            o.message = f"stopped by {_signal_name(-code)} during start-up; the next invocation resumes it"
        else:
            o.message = f"stopped (exit {code}); the next invocation resumes it from its last checkpoint"
        _mark_killed(tracker, experiment, spec)
        display.event(f"killed {spec.run_name} ({spec.run_key}): {o.message}")
        return False
    o.message = _log_tail(spec.run_dir, 20)
    what = "interrupted by a signal" if code == EXIT_INTERRUPTED or code < 0 else f"failed (exit {code})"
    if o.attempts <= retries:
        o.state = "queued"
        display.event(
            f"retry  {spec.run_name} ({spec.run_key}) {what}; retrying from its last checkpoint "
            f"({o.attempts}/{retries + 1} attempts used); log: {spec.run_dir / STDOUT_NAME}"
        )
        return True
    o.state = FAILED
    display.event(f"FAILED {spec.run_name} ({spec.run_key}) {what}; log: {spec.run_dir / STDOUT_NAME}\n"
                  f"{_indent(o.message)}")
    return False


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _mark_killed(tracker: MLflowTracker, experiment: str, spec: RunSpec, reason: str = END_INTERRUPTED) -> None:
    """Mark the run's still-RUNNING MLflow runs KILLED once their process is gone (the trainer may already have
    done so); a live claim of another process on the same key is left alone."""
    try:
        now = time.time()
        for claim in tracker.running_claims(experiment, {RUN_KEY_TAG: spec.run_key}):
            if not claim.is_live(now):
                tracker.mark_dead(claim, now, reason)
    except Exception as exc:  # the store is best effort here: the run folder is the source of truth
        print(f"warning: could not mark {spec.run_name} KILLED in MLflow: {exc}", file=sys.stderr)


def _stop_children(active: Mapping[int, _Active], flag: _StopFlag, grace_s: float) -> None:
    now = time.monotonic()
    for a in active.values():
        if a.proc.poll() is not None:
            continue
        if a.term_sent is None:
            _terminate(a.proc, signal.SIGTERM)
            a.term_sent = now
        elif flag.kill or now - a.term_sent > grace_s:
            _terminate(a.proc, signal.SIGKILL)


def _terminate(proc: subprocess.Popen, sig: int) -> None:
    """Signal the child's process group (the trainer and its loader workers)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _install_handlers(flag: _StopFlag) -> dict[int, Any]:
    def handler(signum: int, frame: Any) -> None:
        if flag.stop:
            flag.kill = True
        flag.stop = True
        flag.signals.append(signum)

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: no handlers (the caller owns signals)
            pass
    return previous


def _restore_handlers(previous: Mapping[int, Any]) -> None:
    for sig, h in previous.items():
        signal.signal(sig, h)


def _log_tail(run_dir: Path, lines: int) -> str:
    try:
        text = (run_dir / STDOUT_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    last = text.rsplit("\n===== md2bench run-ablation", 1)[-1]
    return "\n".join(last.strip().splitlines()[1:][-lines:])


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
