"""Run a grid: skip finished runs, resume interrupted ones, pack the rest onto GPUs (or the CPU) as subprocesses.

Every run is the same command, ``python -m md2bench train <config.toml> --tracking-uri U --experiment <grid>
--run-name <row>/seed<k> --tag ... --parent-run-id P --resume``, whichever backend starts it (this module's
local scheduler or ``md2bench.slurm``). The trainer owns the run folder ``<train.out_dir>/<run_key>/``: it locks
``.lock`` (a second process on the same run exits 4), checkpoints to ``checkpoint.pt``, resumes from it, and
writes ``DONE`` when finished. Exit codes: 0 finished, 1 failed, 3 blocked (ImageNet weights missing), 4 busy,
75 interrupted (checkpoint written).

Order of work in ``run_grid``:

0. Runs of the grid's experiment left RUNNING by processes that are gone (a trainer or orchestrator killed with
   SIGKILL, or zombies of older versions without heartbeats) are marked KILLED (``md2bench.end_reason`` =
   ``owner-gone`` / ``zombie``); see ``MLflowTracker.reap_stale_runs``.
1. ``plan``: each ``RunSpec`` is ``skip`` (``DONE`` marker, or a FINISHED MLflow run with its
   ``md2bench.run_key`` in the grid's experiment), ``busy`` (a live claim on its key anywhere in the store: another
   orchestrator or trainer, from any folder or machine, trains it now), ``resume`` (``checkpoint.pt`` present) or
   ``train``. The trainer claims the key again, atomically, before its first step (exit 4 when it lost a race).
2. The MLflow experiment (named after the grid) and one parent run (tags ``md2bench.grid``,
   ``md2bench.kind=grid``, ``md2bench.commit``, owner and heartbeat tags refreshed while the grid runs) are
   created once, before any worker starts.
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
import datetime as _dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

import numpy as np

from md2bench.config import KEY_DEFAULTS, Config
from md2bench.grid import Grid, RunSpec
from md2bench.files import write_text_atomic
from md2bench.train.rundir import read_progress as read_progress_file
from md2bench.tracking import (END_INTERRUPTED, FLAG_TAG, RUN_KEY_TAG, Claim, Heartbeat, MLflowTracker, git_commit,
                               resolve_uri)

# Trainer exit codes (md2bench.trainer).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BLOCKED = 3
EXIT_BUSY = 4
EXIT_INTERRUPTED = 75
PARENT_PID_ENV = "MD2BENCH_PARENT_PID"  # md2bench.trainer.PARENT_PID_ENV: children stop when this pid is gone

DONE_MARKER = "DONE"
CHECKPOINT = "checkpoint.pt"
STDOUT_LOG = "stdout.log"
TRAIN_LOG = "train.log"

# Final states of a run in a GridResult.
FINISHED, SKIPPED, FAILED, BLOCKED, BUSY, KILLED = "finished", "skipped", "failed", "blocked", "busy", "killed"

# Rough throughput for the dry-run estimate, in training images/s at 640×192 for one run alone on the device,
# scaled by (640·192 / pixels)^0.75 for other sizes (small inputs do not speed up in proportion: kernel launches
# and data loading dominate). GPU: an H100-class card in bf16 (our guess, not a measurement: `md2bench bench`
# measures it); CPU: a few cores. Packing K runs on one GPU is assumed to give 1.5× in total.
ROUGH_IMAGES_PER_S = {"cuda": 150.0, "cpu": 2.0}
_RATE_EXPONENT = 0.75
PACKING_GAIN = 1.5
STARTUP_S = 30.0  # per run: interpreter + torch import, model build, final evaluation (rough)
# GPU memory model (rough): the reference needs ~9 GB for M training at 640×192, batch 12, fp32 (its README):
# ~1.5 GB of context, weights and Adam state plus ~7.5 GB of activations, which scale with pixels × batch ×
# frames; bf16 autocast keeps roughly 60 % of them.
_MEM_FIXED_GB = 1.5
_MEM_ACT_GB_REF = 7.5
MAX_AUTO_RUNS_PER_GPU = 8


class OrchestratorError(RuntimeError):
    """A grid cannot be run as asked (bad --gpus, no slots ...); the message says what to change."""


# --------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class PlanItem:
    """What ``run_grid`` will do with one run.

    Attributes:
        spec: the run.
        action: ``"train"`` (from scratch), ``"resume"`` (checkpoint present), ``"skip"`` (already finished) or
            ``"busy"`` (a live claim on its run key: trained elsewhere right now).
        reason: why, e.g. ``"DONE marker"`` or ``"FINISHED MLflow run 1a2b..."``.
    """

    spec: RunSpec
    action: str
    reason: str = ""


def finished_run_keys(tracker: MLflowTracker | None, experiment: str) -> dict[str, str]:
    """``{run_key: mlflow run id}`` of FINISHED runs in ``experiment`` (empty when there is no store/experiment)."""
    if tracker is None:
        return {}
    out: dict[str, str] = {}
    for run in tracker.find_runs(experiment, statuses=["FINISHED"]):
        key = run.data.tags.get("md2bench.run_key")
        if key and key not in out:
            out[key] = run.info.run_id
    return out


def live_claims(tracker: MLflowTracker | None) -> dict[str, Claim]:
    """``{run_key: claim}`` of the live claims in the whole store (RUNNING runs whose process is alive or whose
    heartbeat is fresh); empty without a store."""
    if tracker is None:
        return {}
    now = time.time()
    claims: dict[str, Claim] = {}
    for claim in tracker.running_claims(None):
        if claim.run_key and claim.run_key not in claims and claim.is_live(now):
            claims[claim.run_key] = claim
    return claims


def plan(specs: Sequence[RunSpec], tracker: MLflowTracker | None = None, experiment: str | None = None) -> list[PlanItem]:
    """Decide skip / busy / resume / train for each run from its folder and the MLflow store.

    Args:
        specs: the runs (``Grid.expand``).
        tracker: the store to ask for FINISHED runs and live claims; None looks at run folders only.
        experiment: MLflow experiment to search (default: each spec's grid name).
    """
    finished: dict[str, dict[str, str]] = {}
    claims = live_claims(tracker)
    items: list[PlanItem] = []
    for spec in specs:
        exp = experiment or spec.grid
        if exp not in finished:
            finished[exp] = finished_run_keys(tracker, exp)
        run_dir = spec.run_dir
        if (run_dir / DONE_MARKER).is_file():
            items.append(PlanItem(spec, "skip", f"DONE marker in {run_dir}"))
        elif spec.run_key in finished[exp]:
            items.append(PlanItem(spec, "skip", f"FINISHED MLflow run {finished[exp][spec.run_key]}"))
        elif spec.run_key in claims:
            items.append(PlanItem(spec, "busy", f"being trained elsewhere: {claims[spec.run_key].describe()}"))
        elif (run_dir / CHECKPOINT).is_file():
            items.append(PlanItem(spec, "resume", f"checkpoint from {_mtime(run_dir / CHECKPOINT)}"))
        else:
            items.append(PlanItem(spec, "train", ""))
    return items


def _mtime(path: Path) -> str:
    return _dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


# --------------------------------------------------------------------------------------------- devices
@dataclass(frozen=True)
class Slot:
    """One place a run can execute.

    Attributes:
        label: ``"cuda:0"`` (physical GPU id) or ``"cpu"``.
        gpu: the ``CUDA_VISIBLE_DEVICES`` value for the child, or None on CPU.
        index: slot number (several slots share a GPU when K > 1).
    """

    label: str
    gpu: str | None
    index: int

    @property
    def device(self) -> str:
        """``train.device`` for a child in this slot (the child sees only its GPU, as ``cuda``)."""
        return "cuda" if self.gpu is not None else "cpu"


def visible_gpus(gpus: str = "all") -> list[str]:
    """Physical GPU ids to use: ``"all"`` (every visible GPU), ``"none"``/``"cpu"``, or ``"0,1"``.

    Indices in ``"0,1"`` count within an inherited ``CUDA_VISIBLE_DEVICES``, as CUDA itself does.
    """
    spec = gpus.strip().lower()
    if spec in ("none", "cpu", ""):
        return []
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = _cuda_device_count()
    physical = (
        [g.strip() for g in inherited.split(",") if g.strip()][:count] if inherited is not None else
        [str(i) for i in range(count)]
    )
    if spec == "all":
        return physical
    try:
        wanted = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError as exc:
        raise OrchestratorError(f"--gpus {gpus!r}: use 'all', 'none' or a list like '0,1'") from exc
    bad = [i for i in wanted if not 0 <= i < len(physical)]
    if bad:
        raise OrchestratorError(
            f"--gpus {gpus!r}: GPU(s) {bad} not present; this machine shows {len(physical)} GPU(s)"
        )
    return [physical[i] for i in wanted]


def _cuda_device_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken driver counts as no GPU; the children would fail the same way
        return 0


def free_gpu_memory_gb(gpus: Sequence[str]) -> dict[str, float]:
    """Free memory per physical GPU id, measured with ``torch.cuda.mem_get_info`` in a short subprocess.

    A subprocess, so the orchestrator holds no CUDA context (≈0.5 GB per GPU) for the whole grid. Empty when the
    measurement fails.
    """
    if not gpus:
        return {}
    code = (
        "import json, torch\n"
        "print(json.dumps([torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]))\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
        ).stdout.strip().splitlines()[-1]
        free = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {}
    return {g: float(b) / 2**30 for g, b in zip(gpus, free)}


def estimate_run_memory_gb(cfg: Config) -> float:
    """Rough peak GPU memory of one training run (GB), from the reference's 9 GB at 640×192×12, 3 frames, fp32."""
    pixels = cfg.data.height * cfg.data.width * cfg.train.batch_size * len(cfg.frames)
    act = _MEM_ACT_GB_REF * pixels / (192 * 640 * 12 * 3)
    if cfg.train.amp == "bf16":
        act *= 0.6
    if cfg.model.num_layers == 50:
        act *= 2.5
    if cfg.loss.predictive_mask:
        act *= 1.2
    return _MEM_FIXED_GB + act


def auto_runs_per_gpu(
    specs: Sequence[RunSpec], gpus: Sequence[str], free_gb: Mapping[str, float], cpu_count: int | None = None
) -> int:
    """K runs per GPU: what fits in 85 % of the least free memory, what the CPU cores can feed, at most 8.

    CPU bound: each run uses one process plus ``data.num_workers`` loader workers; K × GPUs × that must not
    exceed the cores. Returns 1 when the free memory is unknown.
    """
    if not gpus or not specs:
        return 1
    if not free_gb or any(g not in free_gb for g in gpus):
        return 1
    need = max(estimate_run_memory_gb(s.config) for s in specs)
    by_memory = int(0.85 * min(free_gb[g] for g in gpus) // need)
    cores = cpu_count or os.cpu_count() or 1
    per_run = 1 + max(s.config.data.num_workers for s in specs)
    by_cpu = cores // (per_run * len(gpus))
    return max(1, min(by_memory, by_cpu, MAX_AUTO_RUNS_PER_GPU))


def detect_slots(
    gpus: str = "all",
    runs_per_gpu: int | None = None,
    cpu_jobs: int = 1,
    specs: Sequence[RunSpec] = (),
    measure: bool = True,
) -> list[Slot]:
    """The execution slots: K per selected GPU, or ``cpu_jobs`` CPU slots when there is none.

    Args:
        gpus: ``"all"``, ``"none"`` or ``"0,1"`` (see ``visible_gpus``).
        runs_per_gpu: K; None picks it from measured free memory and ``estimate_run_memory_gb`` (1 if unknown).
        cpu_jobs: concurrent runs when there is no GPU.
        specs: the runs (for the memory estimate).
        measure: measure free GPU memory when K is None (False: K = 1).
    """
    ids = visible_gpus(gpus)
    if not ids:
        if cpu_jobs < 1:
            raise OrchestratorError(f"--cpu-jobs must be >= 1, got {cpu_jobs}")
        return [Slot("cpu", None, i) for i in range(cpu_jobs)]
    if runs_per_gpu is None:
        free = free_gpu_memory_gb(ids) if measure else {}
        runs_per_gpu = auto_runs_per_gpu(specs, ids, free)
    if runs_per_gpu < 1:
        raise OrchestratorError(f"--runs-per-gpu must be >= 1, got {runs_per_gpu}")
    # Interleave (gpu0, gpu1, gpu0, gpu1, ...) so a partly filled grid spreads over all GPUs.
    return [Slot(f"cuda:{g}", g, k * len(ids) + i) for k in range(runs_per_gpu) for i, g in enumerate(ids)]


# --------------------------------------------------------------------------------------------- commands
def package_root() -> Path:
    """The folder holding the ``md2bench`` package (put on the children's PYTHONPATH)."""
    return Path(__file__).resolve().parent.parent


def absolute_uri(uri: str) -> str:
    """A ``sqlite:///relative.db`` URI made absolute against the working directory (others unchanged)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((Path.cwd() / uri[len(prefix):]).resolve())
    return uri


def run_tags(spec: RunSpec) -> dict[str, str]:
    """The md2bench tags the orchestrator passes to every run (the trainer adds device, commit ...)."""
    return {
        "md2bench.run_key": spec.run_key,
        "md2bench.row": spec.row,
        "md2bench.label": spec.label,
        "md2bench.grid": spec.grid,
        "md2bench.seed": str(spec.seed),
        # the report's ✓/✗ columns, so that MLflow's compare view can colour and filter by them
        **{f"{FLAG_TAG}{key}": str(bool(value)).lower() for key, value in spec.flags.items()},
    }


def train_command(
    config_path: Path, spec: RunSpec, tracking_uri: str, experiment: str, parent_run_id: str | None
) -> list[str]:
    """The trainer command line for one run (always ``--resume``: the trainer resumes when a checkpoint exists)."""
    cmd = [
        sys.executable, "-m", "md2bench", "train", str(config_path),
        "--tracking-uri", tracking_uri, "--experiment", experiment, "--run-name", spec.run_name, "--no-progress",
    ]
    for key, value in run_tags(spec).items():
        cmd += ["--tag", f"{key}={value}"]
    if parent_run_id:
        cmd += ["--parent-run-id", parent_run_id]
    return cmd + ["--resume"]


def child_env(gpu: str | None, threads: int | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a child: pinned GPU (or none visible), md2bench importable, unbuffered output."""
    env = dict(os.environ if base is None else base)
    env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""
    root = str(package_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env[PARENT_PID_ENV] = str(os.getpid())  # the child stops itself when this process is gone
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, threads))
    return env


def write_launch_config(spec: RunSpec, device: str, tag: str) -> Path:
    """Write the run's config (with ``train.device``) to ``<run_dir>/launch-<tag>.toml`` atomically."""
    cfg = spec.config.override({"train.device": device})
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(run_dir / f"launch-{tag}.toml", cfg.to_toml())


# --------------------------------------------------------------------------------------------- progress
_STEP = re.compile(r"\bstep\s*[=:]?\s*(\d+)(?:\s*/\s*(\d+))?", re.IGNORECASE)
_PLANNED = re.compile(r"(\d+)\s+steps\s+planned", re.IGNORECASE)


def read_progress(run_dir: Path, max_bytes: int = 1 << 20) -> tuple[int, int | None] | None:
    """The latest ``(step, total or None)`` in the trainer's ``train.log`` (else the child's ``stdout.log``).

    Reads the trainer's lines ``"... N steps planned"`` (total) and ``"step N epoch E loss ..."`` (progress); a
    ``step N/T`` form is understood too. Only the last ``max_bytes`` of the file are read.
    """
    for name in (TRAIN_LOG, STDOUT_LOG):
        path = run_dir / name
        try:
            with path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        step: int | None = None
        total: int | None = None
        for line in reversed(text.splitlines()):
            if total is None:
                planned = _PLANNED.search(line)
                if planned:
                    total = int(planned.group(1))
                    continue
            if step is None:
                m = _STEP.search(line)
                if m and "steps planned" not in line:
                    step = int(m.group(1))
                    if m.group(2):
                        total = int(m.group(2))
            if step is not None and total is not None:
                break
        if step is not None or total is not None:
            return (step or 0), total
    return None


def total_steps(cfg: Config, train_size: int | None) -> int | None:
    """Optimiser steps of a run: ``epochs × (train_size // batch)``, capped by ``max_steps``; None if unknown."""
    per_epoch = (train_size // cfg.train.batch_size) if train_size else None
    full = cfg.train.epochs * per_epoch if per_epoch else None
    if cfg.train.max_steps:
        return min(cfg.train.max_steps, full) if full else cfg.train.max_steps
    return full


def train_size(cfg: Config) -> int | None:
    """Number of training samples of the config's split (KITTI: lines of the shipped list; synthetic: the world
    preset's size when ``md2bench.data.synthetic`` can tell; else None)."""
    if cfg.data.dataset == "kitti":
        path = package_root() / "md2bench" / "data" / "splits" / cfg.data.split / "train_files.txt"
        try:
            return sum(1 for line in path.read_text().splitlines() if line.strip())
        except OSError:
            return None
    try:
        from md2bench.data import synthetic

        size_fn = getattr(synthetic, "train_size", None)
        if callable(size_fn):
            return int(size_fn(cfg))
    except Exception:  # the synthetic module's size is a nice-to-have for an estimate
        return None
    return None


# What a run's end-to-end speed depends on (besides the machine): the measured-rate lookup matches on these.
RATE_PARAMS = ("data.height", "data.width", "train.batch_size", "model.num_layers", "data.mode", "model.pose_net",
               "model.pose_source", "train.cpu_amp", "train.amp")
# Runs logged before an option existed lack its param: read it as the value it implicitly had (config.KEY_DEFAULTS).
_PARAM_DEFAULTS = {k: str(v) for k, v in KEY_DEFAULTS.items()}


def rate_key(params: Mapping[str, Any], device: str) -> tuple[str, ...]:
    """The lookup key of a run's speed: its device tag and the ``RATE_PARAMS`` as logged (strings)."""
    return (device, *(str(params.get(k, _PARAM_DEFAULTS.get(k, ""))) for k in RATE_PARAMS))


def spec_rate_key(cfg: Config, device: str) -> tuple[str, ...]:
    flat = cfg.flat()
    return rate_key({k: flat[k] for k in RATE_PARAMS}, device)


def this_device_tag(kind: str) -> str:
    """The ``md2bench.device`` tag a run started here would carry on ``kind`` (``cpu`` or ``cuda``, GPU 0)."""
    import torch

    from md2bench.trainer import device_tag

    return device_tag(torch.device("cuda:0" if kind == "cuda" else "cpu"))


def measured_rates(tracker: MLflowTracker | None) -> dict[tuple[str, ...], tuple[float, int]]:
    """End-to-end images/s of the finished runs in the store, by ``rate_key``: (median, number of runs).

    A run's rate is its training images (``train.max_steps`` × ``train.batch_size``) over its MLflow wall time
    (start-up, validation, checkpoints and the final evaluation included), measured with whatever else shared the
    device at the time (e.g. the other runs of a grid). Runs without a step budget are not used; a run that was
    interrupted and resumed counts its downtime too (the median keeps one such run from moving the estimate).
    """
    if tracker is None:
        return {}
    by_key: dict[tuple[str, ...], list[float]] = {}
    try:
        runs = tracker.find_runs(None, statuses=["FINISHED"])
    except Exception:  # an estimate must never stop a grid
        return {}
    for run in runs:
        params, info = run.data.params, run.info
        device = run.data.tags.get("md2bench.device", "")
        try:
            images = int(params["train.max_steps"]) * int(params["train.batch_size"])
            seconds = (info.end_time - info.start_time) / 1000.0
        except (KeyError, TypeError, ValueError):
            continue
        if images <= 0 or seconds <= 0 or not device:
            continue
        by_key.setdefault(rate_key(params, device), []).append(images / seconds)
    return {k: (float(np.median(v)), len(v)) for k, v in by_key.items()}


def estimate_seconds(specs: Sequence[RunSpec], slots: Sequence[Slot],
                     rates: Mapping[tuple[str, ...], tuple[float, int]] | None = None,
                     device: str = "") -> tuple[float, float]:
    """Wall time of a grid on ``slots``: (total images, seconds).

    A run whose shape has a measured end-to-end rate on this device (``measured_rates``; ``device`` is this
    machine's tag) counts ``images / rate`` seconds, start-up and evaluation included, and the slots share the runs
    evenly: ``sum / len(slots)`` (the rates were measured with the device shared the same way, e.g. a grid's
    parallel runs). Other runs use ``ROUGH_IMAGES_PER_S`` (±2× at best) plus ``STARTUP_S`` per wave.
    """
    if not specs or not slots:
        return 0.0, 0.0
    measured_images = measured_s = 0.0
    rest = []
    for spec in specs:
        key = spec_rate_key(spec.config, device)
        if rates and key in rates:
            images = (total_steps(spec.config, train_size(spec.config)) or 0) * spec.config.train.batch_size
            measured_images += images
            measured_s += images / rates[key][0]
        else:
            rest.append(spec)
    rest_images, rest_s = _rough_seconds(rest, slots)
    return measured_images + rest_images, measured_s / len(slots) + rest_s


def _rough_seconds(specs: Sequence[RunSpec], slots: Sequence[Slot]) -> tuple[float, float]:
    """The constant-rate estimate (``ROUGH_IMAGES_PER_S``): (images, seconds)."""
    if not specs or not slots:
        return 0.0, 0.0
    kind = "cuda" if slots[0].gpu is not None else "cpu"
    devices = len({s.label for s in slots}) if kind == "cuda" else 1
    parallel = len(slots)
    total_images = 0.0
    device_seconds = 0.0
    for spec in specs:
        cfg = spec.config
        steps = total_steps(cfg, train_size(cfg)) or 0
        images = steps * cfg.train.batch_size
        rate = ROUGH_IMAGES_PER_S[kind] * ((192 * 640) / (cfg.data.height * cfg.data.width)) ** _RATE_EXPONENT
        if cfg.model.num_layers == 50:
            rate /= 2.0
        total_images += images
        device_seconds += images / rate
    per_device_gain = PACKING_GAIN if kind == "cuda" and parallel > devices else 1.0
    if kind == "cpu":
        per_device_gain = 1.0  # CPU runs share the same cores: no gain from more jobs
        devices = 1
    train_s = device_seconds / (devices * per_device_gain)
    waves = -(-len(specs) // parallel)
    return total_images, train_s + waves * STARTUP_S


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


# --------------------------------------------------------------------------------------------- results
@dataclass
class RunOutcome:
    """What happened to one run.

    Attributes:
        spec: the run.
        state: ``finished``, ``skipped``, ``failed``, ``blocked``, ``busy`` (running elsewhere), ``killed`` or
            ``queued`` (never started: the grid was interrupted first).
        attempts: how many times a trainer was started.
        returncode: the last trainer exit code (None if never started).
        message: the reason (skip reason, the trainer's blocking message, the last log lines of a failure).
        device: the slot's label of the last attempt.
        resumed: the first attempt of this invocation started from an existing checkpoint.
    """

    spec: RunSpec
    state: str = "queued"
    attempts: int = 0
    returncode: int | None = None
    message: str = ""
    device: str = ""
    resumed: bool = False


@dataclass
class GridResult:
    """The outcome of one ``run_grid`` invocation."""

    grid: str
    parent_run_id: str | None
    outcomes: list[RunOutcome]
    interrupted: bool = False

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.state] = out.get(o.state, 0) + 1
        return out

    def by_state(self, state: str) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.state == state]

    @property
    def exit_code(self) -> int:
        """0 all finished/skipped/running elsewhere; 130 interrupted; 1 any failed; 3 only blocked ones left."""
        if self.interrupted:
            return 130
        states = {o.state for o in self.outcomes}
        if FAILED in states or "queued" in states:
            return 1
        if BLOCKED in states:
            return 3
        return 0


# --------------------------------------------------------------------------------------------- display
class Display:
    """The live table: redrawn in place on a TTY, one plain line per event otherwise.

    Args:
        stream: where to write (default stdout).
        live: redraw in place; None decides from ``stream.isatty()``.
        heartbeat_s: on a non-TTY, a progress line for every running run this often.
    """

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, heartbeat_s: float = 60.0) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.heartbeat_s = heartbeat_s
        self._drawn = 0
        self._last_beat = time.monotonic()

    def event(self, text: str) -> None:
        """A state change; on a TTY it appears above the table."""
        stamp = time.strftime("%H:%M:%S")
        if self.live:
            self._clear()
        self.stream.write(f"[{stamp}] {text}\n")
        self.stream.flush()
        self._drawn = 0

    def table(self, rows: Sequence[tuple[str, ...]], summary: str, force_beat: bool = False) -> None:
        """Redraw the table (TTY) or, every ``heartbeat_s``, print the running rows (non-TTY)."""
        if self.live:
            self._clear()
            height = shutil.get_terminal_size((120, 40)).lines
            shown = list(rows)
            if len(shown) + 3 > height:  # keep the table on screen: the most interesting rows first
                shown = sorted(shown, key=lambda r: _STATE_ORDER.get(r[3].split(" ")[0], 9))[: max(1, height - 4)]
                summary += f"  ({len(rows) - len(shown)} more rows not shown)"
            lines = _format_table(shown) + [summary]
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
            self._drawn = len(lines)
            return
        now = time.monotonic()
        if force_beat or now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            running = [r for r in rows if r[3].startswith("running")]
            for r in running:
                self.stream.write(f"[{time.strftime('%H:%M:%S')}]   {r[0]} ({r[1]}) {r[3]} {r[4]} {r[5]}\n")
            self.stream.write(f"[{time.strftime('%H:%M:%S')}] {summary}\n")
            self.stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0


_HEADER = ("run", "run_key", "device", "state", "step", "eta")
_STATE_ORDER = {"running": 0, "stopping": 0, "queued": 1, FAILED: 2, BLOCKED: 3, BUSY: 4, KILLED: 5, FINISHED: 6,
                SKIPPED: 7}


def _format_table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    all_rows = [_HEADER, *rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(_HEADER))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in all_rows]


# --------------------------------------------------------------------------------------------- local run
@dataclass
class _Active:
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
        return _dry_run(grid, specs, uri, gpus, runs_per_gpu, cpu_jobs, out)

    tracker = MLflowTracker(uri)
    tracker.require_writable()
    # Experiment and parent run are created here, once, before any child opens the store.
    tracker.experiment_id(grid.name)
    for claim in tracker.reap_stale_runs(grid.name):
        out.write(f"marked KILLED: {claim.describe()} was left RUNNING by a process that is gone\n")
    items = plan(specs, tracker, grid.name)
    todo = [i for i in items if i.action in ("train", "resume")]
    slots = detect_slots(gpus, runs_per_gpu, cpu_jobs, [i.spec for i in todo], measure=bool(todo))
    tags = {"md2bench.grid": grid.name, "md2bench.kind": "grid", "md2bench.commit": git_commit(),
            "md2bench.backend": "local"}
    if items and all(i.action == "skip" for i in items):
        # Nothing to do: report the finished runs and leave the store as it is (no new, empty parent run).
        outcomes = []
        for item in items:
            outcomes.append(RunOutcome(item.spec, state=SKIPPED, message=item.reason))
            out.write(_skip_line(item) + "\n")
        parents = tracker.find_runs(grid.name, tags={"md2bench.kind": "grid"})
        newest = max(parents, key=lambda r: r.info.start_time or 0).info.run_id if parents else None
        out.write(f"grid {grid.name}: all {len(items)} runs finished; nothing to train (no new MLflow parent run)\n")
        return GridResult(grid.name, newest, outcomes)
    with tracker.store_lock():  # two orchestrators starting at once must not both continue the same parent
        previous = _unfinished_parent(tracker, grid.name)
        if previous is not None:  # an interrupted grid: continue its parent run (its resumed children are in it)
            parent = tracker.resume_run(previous)
            parent.set_tags(tags)
            out.write(f"continuing the grid's unfinished MLflow parent run {previous}\n")
        else:
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


def _unfinished_parent(tracker: MLflowTracker, grid_name: str) -> str | None:
    """The newest local parent run of the grid when it did not finish (KILLED by Ctrl-C, FAILED, or RUNNING
    with its orchestrator gone: ``reap_stale_runs`` has marked those KILLED); None otherwise (a finished grid, or
    one whose parent is still RUNNING under a live orchestrator)."""
    parents = tracker.find_runs(grid_name, tags={"md2bench.kind": "grid"})
    parents = [p for p in parents if p.data.tags.get("md2bench.backend", "local") == "local"]
    if not parents:
        return None
    newest = max(parents, key=lambda r: r.info.start_time or 0)
    return newest.info.run_id if newest.info.status in ("KILLED", "FAILED") else None


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
    parent.log_params(
        {
            "grid.path": str(grid.path or ""),
            "grid.seeds": ",".join(str(s) for s in grid.seeds_for(seeds)),
            "grid.rows": ",".join(sorted({s.row for s in specs})),
            "grid.runs": len(specs),
            "grid.slots": ",".join(s.label for s in slots),
            "grid.retries": retries,
        }
    )

    display = Display(out, live)
    outcomes: dict[str, RunOutcome] = {}
    queue: list[RunOutcome] = []
    for item in items:
        outcome = RunOutcome(item.spec)
        outcomes[item.spec.run_key] = outcome
        if item.action == "skip":
            outcome.state, outcome.message = SKIPPED, item.reason
            display.event(_skip_line(item))
        elif item.action == "busy":
            outcome.state, outcome.message = BUSY, item.reason
            display.event(f"busy   {item.spec.run_name} ({item.spec.run_key}): {item.reason}; not started here")
        else:
            outcome.resumed = item.action == "resume"
            queue.append(outcome)
    display.event(
        f"grid {grid.name}: {len(specs)} runs, {len(queue)} to train, {len(specs) - len(queue)} skipped or busy; "
        f"slots: {', '.join(s.label for s in slots)}; MLflow parent run {parent.run_id} at {uri}"
    )
    if queue:
        display.event(estimate_line([o.spec for o in queue], slots, tracker))

    threads = max(1, (os.cpu_count() or 1) // max(1, len(slots)))
    flag = _StopFlag()
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
                active[slot.index] = _launch(outcome, slot, uri, grid.name, parent.run_id, threads, display)
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
                retry = _finish(a, code, flag.stop, retries, tracker, grid.name, display)
                if retry:
                    queue.append(a.outcome)
            if flag.stop and not active:
                break
            display.table(_table_rows(outcomes, active), _summary(outcomes, active, queue))
            time.sleep(poll_s)
    except BaseException:
        for a in active.values():  # an exception in the loop: do not leave children behind
            _terminate(a.proc, signal.SIGKILL)
            a.log.close()
            with contextlib.suppress(Exception):
                _mark_killed(tracker, grid.name, a.outcome.spec, "error")
        raise
    finally:
        _restore_handlers(previous)
    display.table(_table_rows(outcomes, active), _summary(outcomes, active, queue), force_beat=True)

    result = GridResult(grid.name, parent.run_id, list(outcomes.values()), interrupted=flag.stop)
    counts = result.counts()
    parent.log_metrics({f"grid/{state}": float(n) for state, n in counts.items()}, step=0)
    if flag.stop:
        parent.end("KILLED", END_INTERRUPTED)
    else:
        parent.end("FAILED" if FAILED in counts else "FINISHED")
    display.event(_final_summary(result))
    return result


def _launch(
    outcome: RunOutcome, slot: Slot, uri: str, experiment: str, parent_id: str, threads: int, display: Display
) -> _Active:
    spec = outcome.spec
    config_path = write_launch_config(spec, slot.device, f"{os.getpid()}-{slot.index}")
    cmd = train_command(config_path, spec, uri, experiment, parent_id)
    log = (spec.run_dir / STDOUT_LOG).open("a", encoding="utf-8")
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
    what = "resume" if (spec.run_dir / CHECKPOINT).is_file() else "start "
    display.event(f"{what} {spec.run_name} ({spec.run_key}) on {slot.label}, attempt {outcome.attempts}")
    return _Active(outcome, slot, proc, log, config_path, time.monotonic())


def _update_progress(a: _Active) -> None:
    """The child's progress: its structured ``progress.json`` (written by this attempt), else its log lines."""
    structured = read_progress_file(a.outcome.spec.run_dir)
    started_wall = time.time() - (time.monotonic() - a.started)
    if structured is not None and structured.time >= started_wall:
        progress: tuple[int, int | None] | None = (structured.step, structured.total)
        a.phase, a.images_per_s = structured.phase, structured.images_per_s
    else:
        progress = read_progress(a.outcome.spec.run_dir)
    if progress is None:
        return
    a.step = progress
    if a.first_step is None:
        a.first_step = (progress[0], time.monotonic())


def _finish(
    a: _Active, code: int, stopping: bool, retries: int, tracker: MLflowTracker, experiment: str, display: Display
) -> bool:
    """Record a child's exit; True when the run should be queued again."""
    o, spec = a.outcome, a.outcome.spec
    o.returncode = code
    if code == EXIT_OK or (stopping and (spec.run_dir / DONE_MARKER).is_file()):
        # (a stop that lands after the trainer wrote DONE, while it prints its summary, finished the run)
        o.state, o.message = FINISHED, ""
        display.event(f"done   {spec.run_name} ({spec.run_key}) in {_fmt_duration(time.monotonic() - a.started)}")
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
            f"({o.attempts}/{retries + 1} attempts used); log: {spec.run_dir / STDOUT_LOG}"
        )
        return True
    o.state = FAILED
    display.event(f"FAILED {spec.run_name} ({spec.run_key}) {what}; log: {spec.run_dir / STDOUT_LOG}\n"
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
        text = (run_dir / STDOUT_LOG).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    last = text.rsplit("\n===== md2bench run-ablation", 1)[-1]
    return "\n".join(last.strip().splitlines()[1:][-lines:])


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _table_rows(outcomes: Mapping[str, RunOutcome], active: Mapping[int, _Active]) -> list[tuple[str, ...]]:
    running = {a.outcome.spec.run_key: a for a in active.values()}
    rows = []
    for key, o in outcomes.items():
        step, eta = "", ""
        a = running.get(key)
        state = o.state
        if a is not None:
            state = "running" if a.term_sent is None else "stopping"
            if a.term_sent is None and a.phase in ("validate", "evaluate"):
                state = "validating" if a.phase == "validate" else "evaluating (test)"
            if a.step is not None:
                cur, total = a.step
                step = f"{cur}/{total}" if total else str(cur)
                rate = _steps_per_s(a)
                if total and rate:
                    eta = _fmt_duration((total - cur) / rate)
        elif state == "queued" and o.attempts:
            state = f"queued (retry {o.attempts})"
        rows.append((o.spec.run_name, key, o.device or "-", state, step, eta))
    return rows


def _steps_per_s(a: _Active) -> float | None:
    """A running child's step rate since this invocation first read its progress; None before it moved."""
    if a.step is None or a.first_step is None or a.step[0] <= a.first_step[0]:
        return None
    return (a.step[0] - a.first_step[0]) / max(time.monotonic() - a.first_step[1], 1e-9)


def _skip_line(item: PlanItem) -> str:
    return f"skip   {item.spec.run_name} ({item.spec.run_key}): {item.reason}"


def _summary(outcomes: Mapping[str, RunOutcome], active: Mapping[int, _Active], queue: Sequence[RunOutcome]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o.state] = counts.get(o.state, 0) + 1
    parts = [f"{n} {state}" for state, n in sorted(counts.items())]
    progress = grid_progress(outcomes, active)
    return "total: " + ", ".join(parts) + (f"; {progress}" if progress else "")


def grid_progress(outcomes: Mapping[str, RunOutcome], active: Mapping[int, _Active]) -> str:
    """The whole grid's progress in optimiser steps, e.g. ``grid 1,200/4,200 steps (29%), ~25m left``.

    Finished and skipped runs count in full, running ones at their last reported step, the others at 0 (a
    queued run's checkpoint is not read here). The time left divides the remaining steps by the summed rate of
    the running runs (their steps since this invocation started them), so it assumes the slots stay busy. Empty
    when a run's length is not known in steps (``train.max_steps = 0``).
    """
    running = {a.outcome.spec.run_key: a for a in active.values()}
    done = total = 0
    rate = 0.0
    for key, o in outcomes.items():
        steps = o.spec.config.train.max_steps
        a = running.get(key)
        if a is not None and a.step is not None and a.step[1]:
            steps = a.step[1]
        if not steps:
            return ""
        total += steps
        if o.state in (FINISHED, SKIPPED):
            done += steps
        elif a is not None and a.step is not None:
            done += min(a.step[0], steps)
            rate += _steps_per_s(a) or 0.0
    if not total:
        return ""
    images = [a.images_per_s for a in active.values() if a.images_per_s is not None and a.phase == "train"]
    now = f", {sum(images):.1f} img/s now" if images else ""
    left = f", ~{_fmt_duration((total - done) / rate)} left" if rate > 0 and done < total else ""
    return f"grid {done:,}/{total:,} steps ({100 * done // total}%){now}{left}"


def _final_summary(result: GridResult) -> str:
    counts = result.counts()
    lines = [f"grid {result.grid}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
             + ("  (interrupted: run the same command again to resume)" if result.interrupted else "")]
    for o in result.by_state(BLOCKED):
        lines.append(f"  blocked: {o.spec.run_name} — needs ImageNet weights (see its message above)")
    for o in result.by_state(FAILED):
        lines.append(f"  failed:  {o.spec.run_name} after {o.attempts} attempt(s); log {o.spec.run_dir / STDOUT_LOG}")
    for o in result.by_state(BUSY):
        lines.append(f"  running elsewhere: {o.spec.run_name}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- dry run
def _dry_run(
    grid: Grid, specs: Sequence[RunSpec], uri: str, gpus: str, runs_per_gpu: int | None, cpu_jobs: int, out: TextIO
) -> GridResult:
    tracker = _existing_store(uri)
    items = plan(specs, tracker, grid.name)
    todo = [i.spec for i in items if i.action in ("train", "resume")]
    slots = detect_slots(gpus, runs_per_gpu, cpu_jobs, todo, measure=False)
    out.write(f"grid {grid.name} ({grid.path}): {len(grid.rows)} rows × {len(grid.seeds_for(None))} seeds listed; "
              f"{len(specs)} runs selected\n")
    out.write(f"store: {uri}{'' if tracker is not None else ' (not created yet)'}\n")
    out.write(f"slots: {', '.join(s.label for s in slots)}"
              + (" (K=1 per GPU without measuring; pass --runs-per-gpu or run for real to measure)\n"
                 if runs_per_gpu is None and slots and slots[0].gpu is not None else "\n"))
    rows = []
    for n, item in enumerate(items):
        spec = item.spec
        device = "-" if item.action in ("skip", "busy") else slots[n % len(slots)].label
        blocked = _weights_missing(spec.config)
        note = item.reason or ("will be blocked: ImageNet weights missing" if blocked else "")
        rows.append((spec.row, str(spec.seed), spec.run_key, device, item.action, note))
    header = ("row", "seed", "run_key", "device", "action", "note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    actions = {a: sum(1 for i in items if i.action == a) for a in ("train", "resume", "skip", "busy")}
    out.write(f"{actions['train']} to train, {actions['resume']} to resume, {actions['skip']} to skip"
              + (f", {actions['busy']} busy elsewhere" if actions["busy"] else "") + "\n")
    out.write(estimate_line(todo, slots, tracker) + "\n")
    out.flush()
    states = {"skip": SKIPPED, "busy": BUSY}
    outcomes = [RunOutcome(i.spec, states.get(i.action, "queued"), message=i.reason) for i in items]
    return GridResult(grid.name, None, outcomes)


def estimate_line(todo: Sequence[RunSpec], slots: Sequence[Slot], tracker: MLflowTracker | None) -> str:
    """One line: the grid's estimated wall time on this machine, saying how much of it was measured."""
    if not todo or not slots:
        return "estimate: nothing to train"
    kind = "cuda" if slots[0].gpu is not None else "cpu"
    device = this_device_tag(kind)
    rates = measured_rates(tracker)
    images, seconds = estimate_seconds(todo, slots, rates, device)
    hits = [rates[spec_rate_key(s.config, device)] for s in todo if spec_rate_key(s.config, device) in rates]
    head = (f"estimate: about {_fmt_duration(seconds)} of wall time on {len(slots)} slot(s) "
            f"({seconds * len(slots) / 3600:.1f} slot-hours; {images:,.0f} training images); ")
    if len(hits) == len(todo):
        rate = float(np.median([r for r, _ in hits]))
        return head + (f"measured: every run's shape has finished runs on this device ({device}) in the store, "
                       f"median {rate:.1f} images/s per run end to end (start-up and evaluation included); resumed "
                       "runs are counted in full")
    rough = (f"~{ROUGH_IMAGES_PER_S[kind]:.0f} images/s per device at 640×192 (scaled by pixels^-0.75) and "
             f"{STARTUP_S:.0f}s start-up + evaluation per run")
    if hits:
        return head + (f"{len(hits)} of {len(todo)} runs from measured rates on this device, the rest rough "
                       f"({rough}); ±2× at best")
    return head + (f"rough (no finished run of this shape on this device ({device}) in the store yet): {rough}; "
                   "±2× at best; the estimate becomes a measurement once one run has finished")


def _existing_store(uri: str) -> MLflowTracker | None:
    """A tracker on an existing store; None for a SQLite file that does not exist (a dry run creates nothing)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file():
        return None
    try:
        return MLflowTracker(uri)
    except Exception:
        return None


def _weights_missing(cfg: Config) -> bool:
    if cfg.model.pretrained != "imagenet":
        return False
    try:
        from md2bench.models.encoder import hub_cache_path

        path = Path(cfg.model.weights_path).expanduser() if cfg.model.weights_path else hub_cache_path(cfg.model.num_layers)
        return not path.is_file()
    except Exception:
        return False


def describe_plan(items: Iterable[PlanItem]) -> str:
    """One line per planned run: ``row/seedK  run_key  action  reason``."""
    return "\n".join(f"{i.spec.run_name}  {i.spec.run_key}  {i.action}  {i.reason}".rstrip() for i in items)
