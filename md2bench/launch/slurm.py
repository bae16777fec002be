"""The Slurm backend: the grid's ``RunSpec``s as one submitit job array, each task the same trainer command.

Each array task runs ``python -m md2bench train <run_dir>/launch-slurm.toml ... --resume`` (the command of
``md2bench.launch.command.train_command``) in the submitting directory, so:

- a task that Slurm pre-empts or times out gets SIGUSR2 from submitit's signal handling; ``TrainJob.checkpoint``
  then SIGTERMs the trainer (which writes its checkpoint and exits 75) and asks submitit to requeue the task,
  which resumes from that checkpoint;
- a failed trainer is retried inside the task ``retries`` times (again resuming from its checkpoint);
- exit 3 (ImageNet weights missing) and 4 (another process trains the run) end the task normally with the state
  ``blocked`` / ``busy`` in its result, so they do not show as failed jobs.

As with the local backend, the MLflow experiment and the parent run are created once, before submission.
A SQLite store on a shared file system is fragile with many writers on many nodes: prefer an MLflow server
(``--tracking-uri http://host:5000``) for real clusters. ``cluster="local"`` runs the array with submitit's
local executor (tests, a workstation).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

import submitit

from md2bench.grid import Grid
from md2bench.launch.command import absolute_uri, child_env, train_command, write_launch_config
from md2bench.launch.outcome import BLOCKED, BUSY, FAILED, FINISHED, SKIPPED, GridResult, RunOutcome
from md2bench.launch.plan import describe_plan, plan
from md2bench.tracking import Heartbeat, MLflowTracker, git_commit, resolve_uri
from md2bench.train.rundir import EXIT_BLOCKED, EXIT_BUSY, EXIT_FINISHED, STDOUT_NAME

STOP_GRACE_S = 60.0  # how long the trainer gets to checkpoint when the task is pre-empted


class TrainJob(submitit.helpers.Checkpointable):
    """One array task: run the trainer command (with retries); requeue on pre-emption.

    The callable is pickled by submitit; the running child process is not part of its state.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None

    def __call__(self, cmd: Sequence[str], env: Mapping[str, str], cwd: str, log_path: str, retries: int) -> dict:
        """Run ``cmd`` until it finishes, is blocked or busy, or fails ``retries + 1`` times.

        Returns:
            ``{"state": "finished" | "blocked" | "busy", "returncode": int, "attempts": int}``.

        Raises:
            RuntimeError: the trainer failed on every attempt (the job shows as failed); the message has the
                end of its log.
        """
        code = None
        for attempt in range(1, retries + 2):
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"\n===== md2bench slurm task {os.environ.get('SLURM_JOB_ID', 'local')} attempt {attempt}\n"
                          f"$ {' '.join(cmd)}\n")
                log.flush()
                self._proc = subprocess.Popen(
                    list(cmd), cwd=cwd, env=_merge_env(os.environ, env), stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                code = self._proc.wait()
                self._proc = None
            if code == EXIT_FINISHED:
                return {"state": FINISHED, "returncode": code, "attempts": attempt}
            if code == EXIT_BLOCKED:
                return {"state": BLOCKED, "returncode": code, "attempts": attempt, "message": _tail(log_path)}
            if code == EXIT_BUSY:
                return {"state": BUSY, "returncode": code, "attempts": attempt}
        raise RuntimeError(f"trainer failed (exit {code}) after {retries + 1} attempt(s); end of {log_path}:\n"
                           f"{_tail(log_path)}")

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Pre-emption or timeout: let the trainer checkpoint (SIGTERM → exit 75), then requeue this task."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return submitit.helpers.DelayedSubmission(TrainJob(), *args, **kwargs)

    def __getstate__(self) -> dict:
        return {"_proc": None}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self._proc = None


def _merge_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """``base`` updated with ``extra``; ``PYTHONPATH`` entries are prepended, not replaced."""
    env = dict(base)
    for key, value in extra.items():
        env[key] = value + os.pathsep + env[key] if key == "PYTHONPATH" and env.get(key) else value
    return env


def _tail(path: str, lines: int = 20) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def run_grid_slurm(
    grid: Grid,
    *,
    seeds: int | None = None,
    rows: Sequence[str] | None = None,
    tracking_uri: str | None = None,
    folder: str | Path = "slurm_logs",
    partition: str | None = None,
    time_min: int = 24 * 60,
    gpus_per_run: int = 1,
    cpus_per_run: int | None = None,
    mem_gb: float | None = None,
    retries: int = 1,
    array_parallelism: int | None = None,
    cluster: str | None = None,
    wait: bool = False,
    dry_run: bool = False,
    stream: TextIO | None = None,
    poll_s: float = 5.0,
) -> GridResult:
    """Submit the grid's unfinished runs as one job array (``executor.map_array``).

    Args:
        grid: the grid, with command-line overrides applied.
        seeds: how many seeds; None for the file's list.
        rows: only these rows; None for all.
        tracking_uri: the MLflow store every task writes to (a relative SQLite path is made absolute).
        folder: submitit's folder for job scripts, pickles and Slurm logs.
        partition: Slurm partition (``--partition``).
        time_min: time limit per task in minutes (``--time``); on timeout the task checkpoints and requeues.
        gpus_per_run: GPUs per task (0 trains on the CPU).
        cpus_per_run: CPU cores per task (default: 1 + the run's ``data.num_workers``).
        mem_gb: memory per task (``--mem``).
        retries: extra attempts of a failed trainer inside its task.
        array_parallelism: at most this many tasks at once (Slurm's ``%N``).
        cluster: submitit cluster: None auto-detects (Slurm where ``sbatch`` exists), ``"local"``, ``"debug"``.
        wait: wait for every task and report outcomes; False returns after submission.
        dry_run: print what would be submitted; submit nothing.
        stream: output stream (default stdout).
        poll_s: how often to poll the tasks while waiting.

    Returns:
        The outcomes: skipped runs, and when waiting the tasks' states (``queued`` while not waited for).
    """
    out = stream or sys.stdout
    specs = grid.expand(seeds, rows)
    uri = absolute_uri(resolve_uri(tracking_uri))
    if dry_run:
        items = plan(specs, None, grid.name)
        if items:
            out.write(describe_plan(items) + "\n")
        todo = sum(1 for i in items if i.action != "skip")
        out.write(f"would submit {todo} array task(s) ({gpus_per_run} GPU, {time_min} min each"
                  f"{', partition ' + partition if partition else ''}) to {cluster or 'slurm'}; store {uri}\n")
        return GridResult(grid.name, None, [RunOutcome(i.spec, SKIPPED if i.action == "skip" else "queued",
                                                       message=i.reason) for i in items])

    tracker = MLflowTracker(uri)
    tracker.experiment_id(grid.name)  # once, before any task opens the store
    items = plan(specs, tracker, grid.name)
    parent = tracker.start_run(
        experiment=grid.name,
        run_name=f"{grid.name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
        tags={"md2bench.grid": grid.name, "md2bench.kind": "grid", "md2bench.commit": git_commit(),
              "md2bench.backend": "slurm" if cluster in (None, "slurm") else str(cluster)},
    )
    parent.claim_tags()  # owner and heartbeat: a later invocation can tell a live submitter from a dead one
    outcomes: list[RunOutcome] = []
    todo: list[RunOutcome] = []
    for item in items:
        o = RunOutcome(item.spec)
        if item.action == "skip":
            o.state, o.message = SKIPPED, item.reason
            out.write(f"skip   {item.spec.run_name} ({item.spec.run_key}): {item.reason}\n")
        elif item.action == "busy":
            o.state, o.message = BUSY, item.reason
            out.write(f"busy   {item.spec.run_name} ({item.spec.run_key}): {item.reason}\n")
        else:
            todo.append(o)
        outcomes.append(o)

    jobs = _submit(todo, grid.name, uri, parent, folder, out, partition=partition, time_min=time_min,
                   gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run, mem_gb=mem_gb, retries=retries,
                   array_parallelism=array_parallelism, cluster=cluster) if todo else []
    if jobs:
        parent.log_params({"grid.jobs": ",".join(str(j.job_id) for j in jobs)[:6000], "grid.runs": len(specs)})
    out.flush()

    if not wait:
        parent.set_tags({"md2bench.note": "tasks submitted; each run reports its own status"})
        parent.end("FINISHED")
        out.write(f"submitted {len(jobs)} task(s); logs in {folder}; `md2bench run-ablation {grid.name} "
                  f"--backend slurm` again skips finished runs and resubmits the rest\n")
        return GridResult(grid.name, parent.run_id, outcomes)

    with Heartbeat(parent):
        while not all(job.done() for job in jobs):
            time.sleep(poll_s)
    _collect(todo, jobs, out)
    result = GridResult(grid.name, parent.run_id, outcomes)
    counts = result.counts()
    parent.log_metrics({f"grid/{s}": float(n) for s, n in counts.items()}, step=0)
    parent.end("FAILED" if FAILED in counts else "FINISHED")
    out.write(f"grid {grid.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "\n")
    out.flush()
    return result


def _submit(todo: Sequence[RunOutcome], experiment: str, uri: str, parent: Any, folder: str | Path, out: TextIO, *,
            partition: str | None, time_min: int, gpus_per_run: int, cpus_per_run: int | None,
            mem_gb: float | None, retries: int, array_parallelism: int | None, cluster: str | None) -> list[Any]:
    """Write each run's launch config and submit one array task per run (``TrainJob``); the submitit jobs."""
    device = "cpu" if gpus_per_run == 0 else "auto"
    cmds, envs, cwds, logs, tries = [], [], [], [], []
    for o in todo:
        path = write_launch_config(o.spec, device, "slurm")
        cmds.append(train_command(path, o.spec, uri, experiment, parent.run_id))
        # Slurm (or the local executor) decides the visible GPUs: only make md2bench importable.
        env = child_env(None, base={})
        envs.append({k: env[k] for k in ("PYTHONPATH", "PYTHONUNBUFFERED")})
        cwds.append(os.getcwd())
        logs.append(str((o.spec.run_dir / STDOUT_NAME).resolve()))
        tries.append(retries)
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {
        "name": f"md2bench-{experiment}",
        "timeout_min": int(time_min),
        "gpus_per_node": int(gpus_per_run),
        "cpus_per_task": int(cpus_per_run or 1 + max(o.spec.config.data.num_workers for o in todo)),
        "slurm_signal_delay_s": 120,
    }
    if mem_gb is not None:
        params["mem_gb"] = mem_gb
    if partition:
        params["slurm_partition"] = partition
    if array_parallelism:
        params["slurm_array_parallelism"] = int(array_parallelism)
    executor.update_parameters(**params)
    jobs = executor.map_array(TrainJob(), cmds, envs, cwds, logs, tries)
    for o, job in zip(todo, jobs):
        o.state, o.device, o.message = "submitted", f"job {job.job_id}", ""
        out.write(f"submit {o.spec.run_name} ({o.spec.run_key}) as job {job.job_id}\n")
    return list(jobs)


def _collect(todo: Sequence[RunOutcome], jobs: Sequence[Any], out: TextIO) -> None:
    """Fill each waited-for outcome from its finished task (state, exit code, attempts, message)."""
    for o, job in zip(todo, jobs):
        o.attempts = 1
        try:
            res = job.result()
            o.state, o.returncode = res["state"], res["returncode"]
            o.attempts = res.get("attempts", 1)
            o.message = res.get("message", "")
        except Exception as exc:  # the task raised (trainer failed on every attempt) or Slurm killed it
            o.state, o.message = FAILED, str(exc)
        out.write(f"{o.state:8s} {o.spec.run_name} ({o.spec.run_key})\n")


__all__ = ["TrainJob", "run_grid_slurm"]
