"""Training: ``fit(cfg, tracker)`` runs one configuration from scratch or from its checkpoint to the end.

One run lives in ``<cfg.train.out_dir>/<cfg.run_key>/``:

- ``checkpoint.pt``: full resume state, written atomically (``md2bench.checkpoint``) at every epoch end, at
  the stop point (``train.max_steps`` reached, SIGTERM/SIGINT, pruning), and every ``CHECKPOINT_EVERY_S``
  seconds of training; never after a non-finite loss, so the last good state survives a divergence.
- ``config.toml``: the config as trained; ``train.log``: a plain-text log; ``.lock``: the concurrency guard;
  ``DONE``: a JSON marker (MLflow run id, test metrics, validation history) written when the run finished.
- ``mlflow_run.json``: the MLflow run id (with the store and experiment), written as soon as the run is claimed,
  before the first step: a rerun after a kill that came before the first checkpoint continues the same run.
- ``DIVERGED``: a JSON marker written when the run failed on non-finite numbers; a rerun with the same config
  says so and stops (``--no-resume`` starts over).

Run lifecycle (with a tracker): before training, the run claims its ``run_key`` in the whole MLflow store
(``MLflowTracker.claim_run_key``: a RUNNING run owned by this process with a heartbeat it refreshes), so a second
process, from any folder, finds it busy (exit 4). Every exit path after the claim ends the run with a true status
and ``md2bench.end_reason`` (``finished``, ``non-finite``, ``error``, ``interrupted``, ``parent-gone``,
``pruned``). A trainer started by the orchestrator (``$MD2BENCH_PARENT_PID``) stops itself like on SIGTERM when
that process dies. Checkpoints are written only when the weights, optimiser state and the epoch's validation are
finite.

Exactness of resume (on CPU, bit for bit; on GPU up to the non-deterministic ``grid_sample`` backward): the
data order of epoch e is a permutation drawn from a generator seeded by (seed, e), a resumed epoch skips the
batches already done, per-sample augmentation comes from (seed, epoch, index) inside the dataset, and the
checkpoint carries the global RNG states (torch CPU and CUDA, NumPy, Python) taken at the stop point.
Validation and test evaluation run under ``torch.random.fork_rng`` so they never move the training RNG.

Learning-rate schedule (``train.scheduler``): ``"paper"`` steps ``StepLR(lr_step_epoch, lr_gamma)`` at the end
of each epoch, so the decay comes after exactly ``lr_step_epoch`` epochs (15 + 5); ``"reference"`` steps it at
the start of each epoch before any optimiser step, as the reference code does, which on PyTorch >= 1.1 decays
one epoch early (14 + 6).

Metric names (MLflow and ``RunResult``): ``train/loss``, ``train/<diagnostic>`` (e.g.
``train/loss/photometric/s0``), ``train/lr``, ``train/images_per_s``, ``train/data_wait_fraction`` (share of the
window spent waiting for the loader: near 0 means the step, not the data, sets the pace), ``train/epoch`` every ``log_every``
steps; ``val/loss``, ``val/<diagnostic>``, ``val/abs_rel`` ... per epoch (step = global step); ``test/abs_rel``
..., ``test/moving/*``, ``test/static/*``, the synthetic world's region metrics ``test/occluded/*``,
``test/comoving/*``, ``test/low_texture/*``, ``test/ratio_mean``, ``test/ratio_std`` at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import platform
import random
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from md2bench.checkpoint import config_from_checkpoint, load_checkpoint, save_checkpoint
from md2bench.config import NON_SEMANTIC, Config
from md2bench.files import write_json_atomic
from md2bench.train.rundir import ProgressWriter

# The method, data, models and evaluation modules are imported inside ``fit``: the orchestrator and the CLI
# import this module for its exit codes and ``RunBusyError`` without paying for the whole stack.

# ----- exit codes of ``md2bench train`` (the orchestrator relies on these numbers) ----------------------------
EXIT_FINISHED = 0
EXIT_FAILED = 1  # non-finite loss, validation or weights, or an exception (disk full, store read-only ...)
EXIT_BLOCKED = 3  # ImageNet weights file missing (md2bench.models.encoder.WeightsNotFoundError)
EXIT_BUSY = 4  # another process holds the run's lock (RunBusyError)
EXIT_INTERRUPTED = 75  # SIGTERM/SIGINT: checkpoint written, resume later (EX_TEMPFAIL)

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.toml"
LOG_NAME = "train.log"
DONE_NAME = "DONE"
LOCK_NAME = ".lock"
RUN_ID_NAME = "mlflow_run.json"
DIVERGED_NAME = "DIVERGED"
PARENT_PID_ENV = "MD2BENCH_PARENT_PID"  # set by the orchestrator: the trainer stops when that process is gone
PARENT_POLL_S = 1.0
CHECKPOINT_EVERY_S = 600.0  # also checkpoint mid-epoch this often (pre-emption by SIGKILL loses at most this)
# Config keys a resumed checkpoint may differ in besides the non-semantic ones: the step budget.
RESUMABLE_DIFFERENCES = frozenset({"train.max_steps"})

Status = str  # "FINISHED" | "FAILED" | "KILLED" | "PRUNED"
EpochCallback = Callable[[int, Mapping[str, float]], bool]


class RunBusyError(RuntimeError):
    """Another process is training this run (it holds ``<run_dir>/.lock``)."""


class DivergenceError(RuntimeError):
    """Training produced NaN or infinite numbers (loss, validation or weights) at ``step``."""

    step: int = 0


class NonFiniteLossError(DivergenceError):
    """The loss became NaN or infinite; carries the step and the offending diagnostic terms."""

    def __init__(self, step: int, terms: Mapping[str, float], total: float) -> None:
        named = ", ".join(f"{k}={v}" for k, v in terms.items()) or f"total loss={total}"
        super().__init__(f"non-finite loss at step {step}: {named}")
        self.step = step
        self.terms = dict(terms)
        self.total = total


class NonFiniteValidationError(DivergenceError):
    """The epoch's validation metrics are NaN or infinite (the weights no longer give finite predictions)."""

    def __init__(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        named = ", ".join(f"{k}={v}" for k, v in list(values.items())[:8])
        super().__init__(f"non-finite validation after epoch {epoch} (step {step}): {named}")
        self.step = step
        self.values = dict(values)


class NonFiniteStateError(DivergenceError):
    """Weights or optimiser state hold NaN or infinite values; no checkpoint is written from them."""

    def __init__(self, step: int, names: list[str]) -> None:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        super().__init__(f"non-finite weights or optimiser state at step {step}: {shown}")
        self.step = step
        self.names = list(names)


@dataclass
class RunResult:
    """What ``fit`` returns.

    Attributes:
        status: ``"FINISHED"``, ``"FAILED"`` (non-finite loss), ``"KILLED"`` (SIGTERM/SIGINT; resumable) or
            ``"PRUNED"`` (``epoch_callback`` asked to stop; the MLflow run is KILLED with tag
            ``md2bench.pruned=true``).
        run_id: MLflow run id (None without a tracker).
        run_dir: the run folder.
        test_metrics: ``{"test/abs_rel": ..., ...}`` when finished, else empty.
        val_history: one dict per validation: ``{"epoch": e, "step": s, "val/loss": ..., "val/abs_rel": ...}``.
        steps: optimiser steps done in total.
        message: a human-readable summary (the failure reason for FAILED).
    """

    status: Status
    run_id: str | None
    run_dir: Path
    test_metrics: dict[str, float] = field(default_factory=dict)
    val_history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    message: str = ""

    @property
    def exit_code(self) -> int:
        """The ``md2bench train`` exit code for this result."""
        return {"FINISHED": EXIT_FINISHED, "FAILED": EXIT_FAILED, "KILLED": EXIT_INTERRUPTED}.get(
            self.status, EXIT_FINISHED
        )


# ============================================================================================ small pieces
def prepare_models(models: torch.nn.ModuleDict, cfg: Config, device: torch.device) -> torch.nn.ModuleDict:
    """Move the networks to ``device`` in the memory format and compilation the config asks for.

    On a CPU device with ``train.keep_freed_memory`` this also configures the process's allocator
    (:func:`md2bench.runtime.keep_freed_memory`).

    Shared by the trainer and the benchmark so the benchmark times what training runs. Neither the memory
    format nor compilation changes a state dict's keys or values.
    """
    if device.type == "cpu" and cfg.train.keep_freed_memory:
        from md2bench.runtime import keep_freed_memory

        keep_freed_memory()  # process-wide, idempotent: the CPU step's large tensors stop page-faulting
    models = models.to(device)
    if cfg.train.channels_last:  # CUDA (tensor cores) and CPU (oneDNN): 1.1-1.3x on this 2-core CPU
        models = models.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        for module in models.values():
            module.compile()  # in place: state-dict keys stay the same
    return models


def make_optimizer(models: torch.nn.ModuleDict, cfg: Config) -> torch.optim.Adam:
    """Adam over every network parameter, the fused implementation where torch has one for the device.

    Fused Adam computes the same update in one kernel per device (on this 2-core CPU 22 ms instead of 120 ms
    for the 27 M parameters of the default models); its state dict is the same as the loop implementation's.
    """
    params = list(models.parameters())
    fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=cfg.train.lr, fused=fused or None)


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without a GPU fails with a clear message."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device = {spec!r} but CUDA is not available; use train.device=cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), NumPy's global RNG and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: NumPy and ``random`` follow the worker's torch seed.

    The torch seed of a worker is ``base_seed + worker_id`` with ``base_seed`` drawn from the loader's own
    seeded generator, so worker seeds are a function of the run seed. (Augmentation does not depend on them:
    the dataset draws it from (seed, epoch, index).)
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    # A stop request is the main process's business: the orchestrator and Slurm SIGTERM the whole process group,
    # and torch's worker handler would let the worker die of it, which makes the main process fail with
    # "DataLoader worker ... is killed by signal: Terminated" instead of checkpointing (exit 1, not 75).
    # The main process shuts its workers down when it stops; a SIGKILL of the group still ends them.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The training order of epoch ``epoch``: a permutation of ``range(n)`` that depends only on (seed, epoch).

    Returns:
        int64 tensor of shape (n,).
    """
    gen = torch.Generator()
    # One generator per (seed, epoch); the odd multiplier spreads neighbouring seeds apart.
    gen.manual_seed((seed * 1_000_003 + epoch * 7919 + 12345) % 2**63)
    return torch.randperm(n, generator=gen)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for the full batches of one epoch, skipping the batches already done.

    Call ``set_epoch(epoch, skip_batches)`` before iterating. The epoch travels with each index so that
    dataset copies in (persistent) loader workers know which epoch's augmentation to draw.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.skip_batches = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // self.batch_size  # drop_last, as the reference

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = epoch
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_permutation(self.seed, self.epoch, self.num_items)
        start = self.skip_batches * self.batch_size
        stop = self.batches_per_epoch * self.batch_size
        for index in order[start:stop].tolist():
            yield self.epoch, index

    def __len__(self) -> int:
        return max(0, (self.batches_per_epoch - self.skip_batches) * self.batch_size)


class _EpochIndexed(Dataset):
    """Wraps a ``MonoDataset`` so an ``(epoch, index)`` key selects the epoch's augmentation, then the item."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        if epoch != self._epoch:
            self.base.set_epoch(epoch)
            self._epoch = epoch
        return self.base[index]


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.StepLR:
    """``StepLR(lr_step_epoch, lr_gamma)``; when it is stepped depends on ``cfg.train.scheduler``."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.train.lr_step_epoch, gamma=cfg.train.lr_gamma)


def scheduler_epoch_start(scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: Config) -> None:
    """Reference order: step at the start of every epoch, before the epoch's first optimiser step."""
    if cfg.train.scheduler == "reference":
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": deliberate here
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()


def scheduler_epoch_end(scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: Config) -> None:
    """Paper order: step at the end of every epoch, so the decay follows exactly ``lr_step_epoch`` epochs."""
    if cfg.train.scheduler == "paper":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()


def epoch_learning_rates(cfg: Config) -> list[float]:
    """The learning rate each epoch trains at, as ``fit`` schedules it (for tests and documentation)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=cfg.train.lr)
    scheduler = make_scheduler(optimizer, cfg)
    rates = []
    for _ in range(cfg.train.epochs):
        scheduler_epoch_start(scheduler, cfg)
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler_epoch_end(scheduler, cfg)
    return rates


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states: torch CPU, every CUDA device, NumPy (legacy global), Python ``random``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of ``capture_rng_state`` (CUDA states are restored where the devices exist)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = list(state.get("cuda", []))
    if cuda_states and torch.cuda.is_available():
        count = min(len(cuda_states), torch.cuda.device_count())
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states[:count]])
    np_state = state["numpy"]
    np.random.set_state(
        (np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"],
         np_state["cached_gaussian"])
    )
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


def nonfinite_terms(diagnostics: Mapping[str, Any]) -> dict[str, float]:
    """The diagnostics entries that are NaN or infinite, loss terms (``loss/...``) first."""
    bad: dict[str, float] = {}
    for key, value in diagnostics.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad[key] = float(value.detach().float().flatten()[~torch.isfinite(value.detach().float().flatten())][0])
        elif isinstance(value, float) and not math.isfinite(value):
            bad[key] = value
    return dict(sorted(bad.items(), key=lambda kv: (not kv[0].startswith("loss"), kv[0])))


def _scalar_diagnostics(diagnostics: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Scalar entries of the diagnostics as detached float tensors (no device sync)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in diagnostics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = value.detach().float().reshape(())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = torch.tensor(float(value))
    return out


def autocast_for(device: torch.device, cfg: Config) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``train.amp = "bf16"`` on CUDA, or on CPU with ``train.cpu_amp`` (fp16 is never used)."""
    enabled = cfg.train.amp == "bf16" and (device.type == "cuda" or (device.type == "cpu" and cfg.train.cpu_amp))
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def device_tag(device: torch.device) -> str:
    """The ``md2bench.device`` tag of a run on ``device`` (also the key of the orchestrator's measured rates)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ============================================================================================ step / validate
def train_step(
    models: torch.nn.ModuleDict,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, torch.Tensor],
    cfg: Config,
    device: torch.device,
    step: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step of the Monodepth2 loss (with the config of that step, ``cfg.at_step(step)``: no
    auto-masking during ``loss.automask_warmup_steps``).

    Args:
        step: the 1-based number of this step (named in the error on a non-finite loss).

    Returns:
        ``(total, diagnostics)``: the detached scalar loss and the scalar diagnostics.

    Raises:
        NonFiniteLossError: the loss is NaN or infinite; no optimiser step was taken.
    """
    from md2bench import method

    models.train()
    with autocast_for(device, cfg):
        total, diagnostics, _ = method.training_loss(models, batch, cfg.at_step(step), device)
    if not bool(torch.isfinite(total.detach()).item()):
        raise NonFiniteLossError(step, nonfinite_terms(diagnostics), float(total.detach()))
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return total.detach().float(), _scalar_diagnostics(diagnostics)


@dataclass
class ValidationOutput:
    """Mean validation metrics (``val/...``) and the first batch's pictures for the epoch figure."""

    metrics: dict[str, float]
    picture: dict[str, np.ndarray] | None


def _per_image_depth_errors(
    disp: torch.Tensor, depth_gt: torch.Tensor, median_scaling: bool, scale_factor: float
) -> list[dict[str, float]]:
    """Depth errors of a batch, per image: the validation protocol of ``md2bench.evaluate`` (no crop,
    1e-3 < GT < 80, the model's scaling), at the loader's GT resolution.

    Args:
        disp: B×1×H×W scaled disparity.
        depth_gt: B×1×Hg×Wg metres, 0 = no depth.
        median_scaling: per-image median scaling (monocular models).
        scale_factor: fixed factor (stereo-trained models).

    Returns:
        One dict of ``METRIC_NAMES`` per image with valid GT.
    """
    from md2bench import metrics

    protocol = metrics.EvalProtocol("none", metrics.MIN_DEPTH, metrics.MAX_DEPTH)
    disp_up = torch.nn.functional.interpolate(disp.float(), size=depth_gt.shape[-2:], mode="bilinear",
                                              align_corners=False)
    pred = (1.0 / disp_up).double().cpu().numpy()
    gt = depth_gt.double().cpu().numpy()
    rows = []
    for b in range(pred.shape[0]):
        try:
            errors = metrics.evaluate_image(gt[b, 0], pred[b, 0], protocol, median_scaling, scale_factor)
        except ValueError:  # no valid GT pixel in this image
            continue
        rows.append({k: float(errors[k]) for k in metrics.METRIC_NAMES})
    return rows


def _pose_errors(outputs: Any, pose_gt: torch.Tensor, cfg: Config) -> dict[str, np.ndarray]:
    """Errors of the predicted camera motion of every temporal source against the exact one (``pose_gt``,
    B×F×4×4 metres; the scale-free ``t_cos`` and ``rot_deg`` do not care about units, ``ate`` is in metres
    after the least-squares scale)."""
    pred, true = [], []
    for i, frame in enumerate(cfg.source_ids):
        if frame != "s":
            pred.append(outputs.T_src_tgt[:, i].detach().double().cpu().numpy())
            true.append(pose_gt[:, cfg.frames.index(frame)].double().cpu().numpy())
    from md2bench.metrics import relative_pose_errors

    return relative_pose_errors(np.concatenate(pred), np.concatenate(true))


@torch.no_grad()
def validate(
    models: torch.nn.ModuleDict,
    loader: DataLoader,
    cfg: Config,
    device: torch.device,
    max_batches: int = 0,
    picture: bool = False,
    scaling: tuple[bool, float] = (True, 1.0),
) -> ValidationOutput:
    """Validation losses (and depth metrics where the batch has ``depth_gt``) in eval mode, no gradients.

    Runs under a forked RNG seeded from the run seed, so it is repeatable and leaves the training RNG alone.

    Args:
        max_batches: stop after this many batches (0: the whole loader).
        picture: also return the first image's input, disparity, GT depth and error for the epoch figure.
        scaling: ``(median_scaling, scale_factor)`` of the depth metrics (``md2bench.evaluate.scaling_for``).
    """
    from md2bench import method
    from md2bench.metrics import POSE_METRIC_NAMES

    was_training = models.training
    models.eval()
    sums: dict[str, float] = {}
    loss_batches = 0
    depth_rows: list[dict[str, float]] = []
    pose_rows: list[dict[str, np.ndarray]] = []
    pic: dict[str, np.ndarray] | None = None
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.train.seed + 1)
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            with autocast_for(device, cfg):
                total, diagnostics, outputs = method.training_loss(models, batch, cfg, device)
            if "pose_gt" in batch and cfg.needs_pose_net:
                pose_rows.append(_pose_errors(outputs, batch["pose_gt"], cfg))
            scalars = {"loss": total.detach().float(), **_scalar_diagnostics(diagnostics)}
            for key, value in scalars.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            loss_batches += 1
            if "depth_gt" in batch or (picture and pic is None):
                images = batch["images"][:, 0].to(device).float() / 255.0
                with autocast_for(device, cfg):
                    disp = method.predict_disparity(models, images, cfg).float()
                if "depth_gt" in batch:
                    depth_rows += _per_image_depth_errors(disp, batch["depth_gt"], *scaling)
                if picture and pic is None:
                    pic = _picture_arrays(images[0], disp[0], batch.get("depth_gt"))
    metrics_out = {f"val/{k}": v / loss_batches for k, v in sums.items()} if loss_batches else {}
    if depth_rows:
        for key in depth_rows[0]:
            metrics_out[f"val/{key}"] = float(np.mean([row[key] for row in depth_rows]))
    for key in POSE_METRIC_NAMES if pose_rows else ():
        values = np.concatenate([row[key] for row in pose_rows])
        metrics_out[f"val/pose/{key}"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    models.train(was_training)
    return ValidationOutput(metrics_out, pic)


def _picture_arrays(image: torch.Tensor, disp: torch.Tensor, depth_gt: torch.Tensor | None) -> dict[str, np.ndarray]:
    """Arrays for the epoch figure: input H×W×3, disparity H×W, and (when GT exists) GT depth and abs-rel error.

    Args:
        image: 3×H×W in [0, 1]. disp: 1×H×W scaled disparity. depth_gt: B×1×Hg×Wg or None (first image used).
    """
    out = {"input": image.permute(1, 2, 0).float().cpu().numpy(), "disparity": disp[0].float().cpu().numpy()}
    if depth_gt is not None:
        gt = depth_gt[0, 0].float()
        disp_up = torch.nn.functional.interpolate(disp[None].float().cpu(), size=gt.shape, mode="bilinear",
                                                  align_corners=False)[0, 0]
        pred = 1.0 / disp_up.clamp_min(1e-8)
        valid = gt > 0
        if int(valid.sum()):
            pred = pred * (gt[valid].median() / pred[valid].median())
        error = torch.where(valid, (pred - gt).abs() / gt.clamp_min(1e-6), torch.zeros_like(gt))
        out["depth_gt"] = gt.cpu().numpy()
        out["abs_rel_error"] = error.cpu().numpy()
    return out


def _epoch_figure(arrays: Mapping[str, np.ndarray], title: str) -> Any:
    """A matplotlib figure (Agg canvas, no pyplot state) with one panel per array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(arrays)
    fig = Figure(figsize=(4.0 * len(names), 2.2), dpi=100)
    FigureCanvasAgg(fig)
    cmaps = {"disparity": "magma", "depth_gt": "magma_r", "abs_rel_error": "viridis"}
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        data = arrays[name]
        if name == "input":
            ax.imshow(np.clip(data, 0.0, 1.0))
        elif name == "abs_rel_error":
            ax.imshow(data, cmap=cmaps[name], vmin=0.0, vmax=0.5)
        elif name == "depth_gt":
            positive = data[data > 0]
            ax.imshow(np.where(data > 0, data, np.nan), cmap=cmaps[name], vmin=0.0,
                      vmax=float(np.percentile(positive, 95)) if positive.size else 1.0)
        else:
            lo, hi = np.percentile(data, [5, 95])  # spread the (often narrow) disparity range over the map
            ax.imshow(data, cmap=cmaps.get(name, "magma"), vmin=float(lo), vmax=float(max(hi, lo + 1e-6)))
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ============================================================================================ run folder
@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
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


class _QuietFileHandler(logging.FileHandler):
    """A file handler that drops a record it cannot write (a full disk) instead of printing a traceback."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass


def _make_logger(run_dir: Path, run_key: str) -> tuple[logging.Logger, logging.Handler]:
    logger = logging.getLogger(f"md2bench.trainer.{run_key}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = _QuietFileHandler(run_dir / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler


def _read_done(run_dir: Path) -> RunResult:
    data = json.loads((run_dir / DONE_NAME).read_text())
    return RunResult(
        status="FINISHED",
        run_id=data.get("run_id"),
        run_dir=run_dir,
        test_metrics={k: float(v) for k, v in data.get("test_metrics", {}).items()},
        val_history=list(data.get("val_history", [])),
        steps=int(data.get("steps", 0)),
        message="already finished (DONE marker present); pass resume=False / --no-resume to train again",
    )


def _write_run_id(run_dir: Path, run_id: str, tracking_uri: str, experiment_id: str) -> None:
    """Persist the MLflow run id in ``<run_dir>/mlflow_run.json`` (before the first step)."""
    write_json_atomic(run_dir / RUN_ID_NAME, {"run_id": run_id, "tracking_uri": tracking_uri,
                                               "experiment_id": experiment_id, "written_at": time.time()})


def _read_run_id(run_dir: Path, tracking_uri: str) -> str | None:
    """The run id in ``mlflow_run.json`` when it was written for the same store; None otherwise."""
    try:
        data = json.loads((run_dir / RUN_ID_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tracking_uri") != tracking_uri:
        return None
    return str(data.get("run_id") or "") or None


def _diverged_before(run_dir: Path) -> RunResult | None:
    """A FAILED result saying the run diverged before (``DIVERGED`` marker), or None when it did not."""
    try:
        data = json.loads((run_dir / DIVERGED_NAME).read_text())
    except (OSError, ValueError):
        return None
    ckpt = run_dir / CHECKPOINT_NAME
    kept = (f"its last finite checkpoint {ckpt} (step {data.get('checkpoint_step')}) would be resumed"
            if ckpt.is_file() else "no checkpoint of it exists")
    message = (f"this run diverged before ({data.get('error', 'non-finite values')}; MLflow run "
               f"{data.get('run_id') or '-'}) and {kept}: the same config would diverge the same way. Lower "
               f"train.lr (it was {data.get('lr')}) or change another setting (a changed config is a new run), or "
               "pass --no-resume (resume=False) to start this run over from step 0")
    return RunResult("FAILED", data.get("run_id") or None, run_dir, steps=int(data.get("step", 0)), message=message)


def _nonfinite_state(models: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of parameters, buffers and optimiser-state tensors holding NaN or infinite values."""
    bad = [name for name, t in [*models.named_parameters(), *models.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    for index, (param, state) in enumerate(optimizer.state.items()):
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(f"optimizer.state[{index}].{key}")
    return bad


def _nonfinite_values(metrics: Mapping[str, float]) -> dict[str, float]:
    """The entries of ``metrics`` that are NaN or infinite."""
    return {k: float(v) for k, v in metrics.items() if not math.isfinite(float(v))}


def _check_resumable(stored: Config, cfg: Config, where: Path) -> None:
    """A checkpoint may be resumed with the same semantic config, the step budget aside."""
    a, b = stored.flat(), cfg.flat()
    ignore = NON_SEMANTIC | RESUMABLE_DIFFERENCES
    diff = sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))
    if diff:
        details = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff)
        raise RuntimeError(
            f"{where} was written by a different configuration ({details}); resume=False (--no-resume) "
            "starts the run again"
        )


def _resolve_data(cfg: Config) -> Config:
    """The config with ``data.path`` filled in (the synthetic world is rendered on first use)."""
    from md2bench.data.kitti import dataset_root

    root = dataset_root(cfg)  # renders the synthetic world into the cache when data.path is empty
    return cfg.override({"data.path": str(Path(root).resolve())})  # data.path is non-semantic: same run_key


class _StopFlag:
    """Set by SIGTERM/SIGINT (or by ``_ParentWatch``); a second signal raises ``KeyboardInterrupt`` (force quit).

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


class _ParentWatch:
    """Stops the run (as SIGTERM would) when the orchestrator that started it is gone.

    The orchestrator starts each trainer in its own session (so Ctrl-C in a terminal reaches only the
    orchestrator) and names itself in ``$MD2BENCH_PARENT_PID``; when it dies, even by SIGKILL, this process is
    re-parented and the watch asks for a stop: checkpoint, MLflow run KILLED with reason ``parent-gone``, exit 75.
    """

    def __init__(self, stop: _StopFlag, logger: logging.Logger, poll_s: float = PARENT_POLL_S) -> None:
        text = os.environ.get(PARENT_PID_ENV, "")
        self.parent = int(text) if text.isdigit() else None
        self.stop_flag = stop
        self.logger = logger
        self.poll_s = poll_s
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def parent_gone(self) -> bool:
        return self.parent is not None and os.getppid() != self.parent

    def start(self) -> "_ParentWatch":
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


class _RunLifecycle:
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
                self.run.set_tags({"md2bench.failure": failure[:5000]})
            self.run.end(status, reason)
        except Exception as exc:  # e.g. the store's disk is full: the next invocation marks the run instead
            self.logger.warning("could not mark MLflow run %s %s: %s", self.run.run_id, status, exc)


# ============================================================================================ fit
@dataclass
class _Position:
    """Where training stands: ``epoch`` in progress, ``batch`` batches of it done, ``step`` steps in total."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


def fit(
    cfg: Config,
    tracker: Any = None,
    *,
    experiment: str = "md2bench",
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    resume: bool = True,
    epoch_callback: EpochCallback | None = None,
    progress: bool = True,
) -> RunResult:
    """Train ``cfg`` to the end (or to ``train.max_steps``), validate each epoch, evaluate on the test split.

    Args:
        cfg: the run's configuration.
        tracker: an ``md2bench.tracking.MLflowTracker``; None trains without MLflow (run folder only).
        experiment: MLflow experiment name.
        run_name: MLflow run name (default ``cfg.name``), e.g. ``"baseline/seed0"``.
        tags: extra MLflow tags (e.g. ``{"md2bench.grid": "synth-ablation"}``).
        parent_run_id: nest the run under this MLflow run (grids, studies).
        resume: continue from ``checkpoint.pt`` if present and return a finished run's result without
            training when its ``DONE`` marker exists; False starts over.
        epoch_callback: ``callback(epoch, val_metrics) -> bool`` after each epoch's validation (keys
            ``val/...``); True stops the run as PRUNED.
        progress: show a tqdm bar (images/s, ETA).

    Returns:
        A ``RunResult``; FAILED for non-finite numbers (only finite checkpoints are ever written; the message
        names the one that exists, if any) and for a rerun of such a run (``DIVERGED`` marker; ``resume=False``
        starts over); KILLED after SIGTERM/SIGINT (checkpoint written; resume continues exactly); FINISHED
        without training when the store already holds a FINISHED run of this key in ``experiment`` (resume only).

    Raises:
        RunBusyError: another process is training this run (its folder lock, or a live claim in the store).
        md2bench.models.encoder.WeightsNotFoundError: ImageNet weights are requested but not on disk.
        md2bench.tracking.StoreError: the MLflow store cannot be written (read-only ...).
        md2bench.checkpoint.CheckpointWriteError: a checkpoint could not be written (disk full ...).
    """
    from md2bench.errors import describe_failure

    run_dir = Path(cfg.train.out_dir) / cfg.run_key
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_lock(run_dir):
        if resume and (run_dir / DONE_NAME).exists():
            return _read_done(run_dir)
        diverged = _diverged_before(run_dir) if resume else None
        if diverged is not None:
            return diverged
        if not resume:
            for name in (DONE_NAME, CHECKPOINT_NAME, RUN_ID_NAME, DIVERGED_NAME):
                (run_dir / name).unlink(missing_ok=True)
        logger, handler = _make_logger(run_dir, cfg.run_key)
        # Installed before start-up (data, networks, MLflow), not just before the loop: a stop request that
        # arrives while the run starts is then an interruption (KILLED, exit 75), not a crash.
        stop = _StopFlag()
        stop.install()
        life = _RunLifecycle(logger)
        watch = _ParentWatch(stop, logger).start()
        uri = getattr(tracker, "uri", None)
        try:
            return _fit_locked(
                cfg, tracker, run_dir, logger, stop, life, experiment=experiment, run_name=run_name, tags=tags,
                parent_run_id=parent_run_id, resume=resume, epoch_callback=epoch_callback, progress=progress,
            )
        except Exception as exc:
            if stop.signal is None:
                logger.exception("run failed: %s", exc)
                life.end("FAILED", "error", describe_failure(exc, uri))
                raise
            # Start-up broke because of the stop (e.g. SIGTERM reached a helper process): still an interruption.
            message = (f"interrupted by {stop.name} during start-up ({type(exc).__name__}: {exc}); "
                       "run again to resume")
            logger.warning(message)
            life.end("KILLED", stop.reason)
            return RunResult("KILLED", life.run_id, run_dir, message=message)
        except BaseException:  # a forced quit (second signal) or SystemExit: still a true end for the run
            life.end("KILLED", stop.reason)
            raise
        finally:
            life.end("FAILED", "error", "the trainer returned without ending its MLflow run")  # no-op if ended
            watch.close()
            stop.restore()
            logger.removeHandler(handler)
            handler.close()


def _fit_locked(
    cfg: Config,
    tracker: Any,
    run_dir: Path,
    logger: logging.Logger,
    stop: _StopFlag,
    life: _RunLifecycle,
    *,
    experiment: str,
    run_name: str | None,
    tags: Mapping[str, Any] | None,
    parent_run_id: str | None,
    resume: bool,
    epoch_callback: EpochCallback | None,
    progress: bool,
) -> RunResult:
    from tqdm.auto import tqdm

    from md2bench.data.kitti import build_dataset
    from md2bench.evaluate import scaling_for
    from md2bench.models import build_models

    device = resolve_device(cfg.train.device)
    if tracker is not None and hasattr(tracker, "require_writable"):
        tracker.require_writable()  # a read-only store fails here, before the data and networks are set up
        busy = tracker.live_claim(cfg.run_key)  # the same early: trained elsewhere right now
        if busy is not None:
            raise RunBusyError(f"run {cfg.run_key} is being trained elsewhere: {busy.describe()}; wait for it to "
                               "finish or stop that process")
    cfg = _resolve_data(cfg)
    seed_everything(cfg.train.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels

    # ----- networks, optimiser, schedule (built before any tracking, so a missing weights file leaves no run)
    built = build_models(cfg)
    if cfg.model.init_from:
        from md2bench.checkpoint import init_from_checkpoint

        warm = init_from_checkpoint(built, cfg.model.init_from)
        logger.info("networks %s start from %s (model.init_from)", ", ".join(warm), cfg.model.init_from)
    models = prepare_models(built, cfg, device)
    optimizer = make_optimizer(models, cfg)
    scheduler = make_scheduler(optimizer, cfg)

    # ----- data
    # The training step never reads ground truth: decoding the synthetic world's depth and motion-mask PNGs
    # for every training item would add two decodes to the three images (the reference projects velodyne
    # points every step for logging, a known slowdown). Validation loads it for its metrics.
    train_set = build_dataset(cfg, "train", load_depth=False)
    val_set = build_dataset(cfg, "val")
    if hasattr(val_set, "set_epoch"):
        val_set.set_epoch(0)
    sampler = EpochSampler(len(train_set), cfg.train.batch_size, cfg.train.seed)
    steps_per_epoch = sampler.batches_per_epoch
    if steps_per_epoch == 0:
        raise RuntimeError(
            f"the training split has {len(train_set)} items, fewer than train.batch_size = "
            f"{cfg.train.batch_size}; lower the batch size or use more data"
        )
    workers = cfg.data.num_workers
    loader_kwargs: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "worker_init_fn": _seed_worker,
        "persistent_workers": workers > 0,
    }
    if workers > 0:
        loader_kwargs["prefetch_factor"] = 4
    train_loader = DataLoader(
        _EpochIndexed(train_set), batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True,
        generator=torch.Generator().manual_seed(cfg.train.seed), **loader_kwargs,
    )
    val_loader = DataLoader(
        val_set, batch_size=cfg.train.batch_size, shuffle=False, drop_last=False,
        generator=torch.Generator().manual_seed(cfg.train.seed), **loader_kwargs,
    )
    scaling = scaling_for(cfg, Path(cfg.data.path))
    planned = steps_per_epoch * cfg.train.epochs
    total_steps = min(planned, cfg.train.max_steps) if cfg.train.max_steps else planned

    # ----- resume state
    pos = _Position()
    val_history: list[dict[str, float]] = []
    rng_state: Mapping[str, Any] | None = None
    previous_run_id: str | None = None
    same_run = False
    ckpt_path = run_dir / CHECKPOINT_NAME
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location="cpu")
        stored = config_from_checkpoint(state, where=str(ckpt_path))
        _check_resumable(stored, cfg, ckpt_path)
        models.load_state_dict(state["models"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        pos = _Position(int(state["epoch"]), int(state["batch_in_epoch"]), int(state["step"]))
        val_history = list(state.get("val_history", []))
        rng_state = state["rng"]
        previous_run_id = state.get("mlflow_run_id") or None
        same_run = stored.run_key == cfg.run_key
        logger.info("resuming %s at epoch %d, batch %d, step %d", ckpt_path, pos.epoch, pos.batch, pos.step)
    elif tracker is not None:  # killed before its first checkpoint: continue the MLflow run it had started
        previous_run_id = _read_run_id(run_dir, tracker.uri)
        same_run = previous_run_id is not None
        if previous_run_id:
            logger.info("no checkpoint; continuing MLflow run %s from step 0", previous_run_id)
    saved_step: int | None = pos.step if ckpt_path.exists() else None  # the checkpoint on disk, if any

    if stop.signal is not None:  # stopped during start-up: leave no MLflow run, keep any checkpoint as it is
        message = f"interrupted by {stop.name} during start-up (step {pos.step}); run again to resume"
        logger.warning(message)
        return RunResult("KILLED", None, run_dir, {}, val_history, pos.step, message)

    # ----- tracking: claim the run key in the store, persist the run id before the first step
    run = None
    if tracker is not None:
        run, finished_id = _claim_tracked_run(
            tracker, cfg, device, run_dir, logger, experiment=experiment, run_name=run_name, tags=tags,
            parent_run_id=parent_run_id, adopt_run_id=previous_run_id if same_run else None,
            resumed_from=previous_run_id, resume=resume,
        )
        if run is None:
            return _finished_elsewhere(tracker, finished_id, run_dir, logger)
        life.attach(run)
        _write_run_id(run_dir, run.run_id, tracker.uri, run.experiment_id)
        run.log_text(cfg.to_toml(), CONFIG_NAME)
    run_id = run.run_id if run is not None else None
    cfg.save(run_dir / CONFIG_NAME)
    logger.info("run %s (%s) on %s; MLflow run %s; %d steps/epoch, %d steps planned",
                cfg.run_key, cfg.name, device, run_id, steps_per_epoch, total_steps)

    def checkpoint_state() -> dict[str, Any]:
        return {
            "format": 1,
            "models": models.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": pos.epoch,
            "batch_in_epoch": pos.batch,
            "step": pos.step,
            "rng": capture_rng_state(),
            "config": cfg.to_dict(),
            "run_key": cfg.run_key,
            "mlflow_run_id": run_id or "",
            "val_history": list(val_history),
            "torch_version": str(torch.__version__),
            "saved_at": time.time(),
        }

    def save_now(state: Mapping[str, Any] | None = None) -> None:
        """Write the checkpoint, only from finite weights and optimiser state."""
        nonlocal saved_step
        bad = _nonfinite_state(models, optimizer)
        if bad:
            raise NonFiniteStateError(pos.step, bad)
        save_checkpoint(ckpt_path, state if state is not None else checkpoint_state())
        saved_step = pos.step

    def require_finite(metrics: Mapping[str, float], epoch: int) -> None:
        bad = _nonfinite_values(metrics)
        if bad:
            raise NonFiniteValidationError(pos.step, epoch, bad)

    def run_validation(epoch: int) -> dict[str, float]:
        reporter.update(pos.step, "validate")
        out = validate(models, val_loader, cfg, device, cfg.train.val_batches, picture=cfg.train.image_log,
                       scaling=scaling[:2])
        entry = {"epoch": float(epoch), "step": float(pos.step), **out.metrics}
        val_history.append(entry)
        if run is not None:
            run.log_metrics({**out.metrics, "val/epoch": float(epoch)}, step=pos.step)
        if out.picture is not None:
            fig = _epoch_figure(out.picture, f"{cfg.name} epoch {epoch} step {pos.step}")
            image_path = run_dir / "images" / f"epoch_{epoch}.png"
            image_path.parent.mkdir(exist_ok=True)
            fig.savefig(image_path)
            if run is not None:
                run.log_artifact(image_path, "images")
        logger.info("validation epoch %d step %d: %s", epoch, pos.step,
                    ", ".join(f"{k}={v:.4g}" for k, v in out.metrics.items()))
        return out.metrics

    reporter = ProgressWriter(run_dir, total_steps, cfg.train.batch_size)  # progress.json: the grid bar's source
    reporter.update(pos.step, force=True)
    bar = tqdm(total=total_steps * cfg.train.batch_size, initial=pos.step * cfg.train.batch_size, unit="img",
               unit_scale=True, dynamic_ncols=True, disable=not progress, desc=cfg.name)
    pruned = False
    last_save = time.monotonic()
    validated_at_step = val_history[-1]["step"] if val_history else -1
    try:
        if rng_state is not None:
            restore_rng_state(rng_state)  # last thing before the loop: nothing may draw from the RNG after it
        window_start, window_steps, data_wait, in_step = time.monotonic(), 0, 0.0, 0.0
        sums: dict[str, torch.Tensor] = {}
        while pos.epoch < cfg.train.epochs and pos.step < total_steps and stop.signal is None:
            if pos.batch == 0:
                scheduler_epoch_start(scheduler, cfg)
            sampler.set_epoch(pos.epoch, pos.batch)
            train_loader.generator.manual_seed(cfg.train.seed * 1_000_003 + pos.epoch)  # worker seeds per epoch
            batches = iter(train_loader)
            while True:
                wait_start = time.monotonic()  # time blocked on the loader: is this run data-bound?
                batch = next(batches, None)
                if batch is None:
                    break
                step_start = time.monotonic()
                data_wait += step_start - wait_start
                total, diagnostics = train_step(models, optimizer, batch, cfg, device, pos.step + 1)
                in_step += time.monotonic() - step_start
                pos.step += 1
                pos.batch += 1
                window_steps += 1
                for key, value in {"loss": total, **diagnostics}.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.update(cfg.train.batch_size)
                reporter.update(pos.step)
                if pos.step % cfg.train.log_every == 0 or pos.step == total_steps:
                    elapsed = max(time.monotonic() - window_start, 1e-9)
                    logged = {f"train/{k}": float(v) / window_steps for k, v in sums.items()}
                    logged["train/lr"] = optimizer.param_groups[0]["lr"]
                    logged["train/images_per_s"] = window_steps * cfg.train.batch_size / elapsed
                    logged["train/data_wait_fraction"] = min(data_wait / elapsed, 1.0)
                    # wall time outside the optimiser step (data wait, logging, checkpoints, validation): how far
                    # the end-to-end rate is from the step rate `md2bench bench` measures
                    logged["train/outside_step_fraction"] = min(max(1.0 - in_step / elapsed, 0.0), 1.0)
                    logged["train/epoch"] = pos.epoch + pos.batch / steps_per_epoch
                    if device.type == "cuda":
                        logged["system/gpu_max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                    if run is not None:
                        run.log_metrics(logged, step=pos.step)
                    bar.set_postfix(loss=f"{logged['train/loss']:.4f}", epoch=pos.epoch, refresh=False)
                    logger.info("step %d epoch %d loss %.5f lr %.3g %.1f img/s", pos.step, pos.epoch,
                                logged["train/loss"], logged["train/lr"], logged["train/images_per_s"])
                    sums, window_start, window_steps, data_wait, in_step = {}, time.monotonic(), 0, 0.0, 0.0
                if pos.step >= total_steps or stop.signal is not None:
                    break
                if time.monotonic() - last_save > CHECKPOINT_EVERY_S:
                    save_now()
                    last_save = time.monotonic()
            if pos.batch >= steps_per_epoch:  # the epoch is complete
                done_epoch = pos.epoch
                scheduler_epoch_end(scheduler, cfg)
                pos.epoch += 1
                pos.batch = 0
                val_metrics = run_validation(done_epoch)  # forked RNG: the checkpoint below is unaffected
                require_finite(val_metrics, done_epoch)  # a diverged epoch never replaces the last good checkpoint
                validated_at_step = pos.step
                save_now()
                last_save = time.monotonic()
                if epoch_callback is not None and epoch_callback(done_epoch, val_metrics):
                    pruned = True
                    break
        # ----- the stop point (the state is taken before a final validation, which cannot move it: forked RNG)
        stop_state = checkpoint_state()
        if stop.signal is None and not pruned and validated_at_step != pos.step:
            require_finite(run_validation(pos.epoch), pos.epoch)  # stopped mid-epoch by max_steps: validate here
        save_now(stop_state)
        bar.close()
        if stop.signal is not None:
            message = f"interrupted by {stop.name} at step {pos.step}; checkpoint written, resume to continue"
            if stop.reason == "parent-gone":
                message += " (the orchestrator that started this run is gone)"
            logger.warning(message)
            life.end("KILLED", stop.reason)
            return RunResult("KILLED", run_id, run_dir, {}, val_history, pos.step, message)
        if pruned:
            message = f"pruned after epoch {pos.epoch - 1} (step {pos.step})"
            logger.info(message)
            if run is not None:
                run.set_tags({"md2bench.pruned": "true"})
            life.end("KILLED", "pruned")
            return RunResult("PRUNED", run_id, run_dir, {}, val_history, pos.step, message)
        reporter.update(pos.step, "evaluate")
        test_metrics = _final_evaluation(models, cfg, device, run_dir, run, logger, pos.step, progress)
        reporter.update(pos.step, "done")
        if run is not None:
            slim = {k: v for k, v in checkpoint_state().items() if k not in ("optimizer", "scheduler", "rng")}
            with tempfile.TemporaryDirectory() as tmp:
                last = save_checkpoint(Path(tmp) / "last.pt", slim)
                run.log_artifact(last, "checkpoints")
            run.log_artifact(run_dir / LOG_NAME)
        write_json_atomic(run_dir / DONE_NAME, {
            "run_id": run_id, "run_key": cfg.run_key, "name": cfg.name, "steps": pos.step,
            "test_metrics": test_metrics, "val_history": val_history, "finished_at": time.time(),
        })
        life.end("FINISHED", "finished")
        message = f"finished after {pos.step} steps: " + ", ".join(
            f"{k}={v:.4f}" for k, v in test_metrics.items() if k.count("/") == 1)
        logger.info(message)
        return RunResult("FINISHED", run_id, run_dir, test_metrics, val_history, pos.step, message)
    except DivergenceError as exc:
        bar.close()
        message = _divergence_message(exc, cfg, ckpt_path if saved_step is not None else None, saved_step,
                                      steps_per_epoch)
        logger.error(message)
        with contextlib.suppress(OSError):
            write_json_atomic(run_dir / DIVERGED_NAME, {
                "error": str(exc), "step": exc.step, "run_id": run_id, "lr": cfg.train.lr,
                "checkpoint_step": saved_step, "at": time.time()})
        life.end("FAILED", "non-finite", str(exc))
        return RunResult("FAILED", run_id, run_dir, {}, val_history, pos.step, message)
    except BaseException as exc:
        bar.close()
        if stop.signal is not None and isinstance(exc, Exception):
            # The stop broke the step in flight (e.g. a loader worker killed by the same signal): the state in
            # memory may be half-updated, so no checkpoint now; resume continues from the last one on disk.
            message = (f"interrupted by {stop.name} at step {pos.step} ({type(exc).__name__}: {exc}); "
                       "resume continues from the last checkpoint")
            logger.warning(message)
            life.end("KILLED", stop.reason)
            return RunResult("KILLED", run_id, run_dir, {}, val_history, pos.step, message)
        from md2bench.errors import describe_failure

        if isinstance(exc, KeyboardInterrupt):
            logger.exception("run stopped without a checkpoint: %s", exc)
            life.end("KILLED", "interrupted")
        else:  # fit logs the traceback
            life.end("FAILED", "error", describe_failure(exc, getattr(tracker, "uri", None)))
        raise


def _claim_tracked_run(
    tracker: Any,
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

    run_tags = _run_tags(cfg, device, tags)

    def new_run() -> Any:
        if adopt_run_id:
            logger.warning("could not re-open MLflow run %s; starting a new run", adopt_run_id)
        fresh_tags = {**run_tags, **({"md2bench.resumed_from": resumed_from} if resumed_from else {})}
        run = tracker.start_run(experiment, run_name=run_name or cfg.name, tags=fresh_tags,
                                parent_run_id=parent_run_id)
        run.log_params({**cfg.flat(), **flag_params(run_tags)})
        return run

    try:
        run, finished_id = tracker.claim_run_key(cfg.run_key, experiment=experiment, adopt_run_id=adopt_run_id,
                                                 new_run=new_run, run_dir=run_dir, skip_if_finished=resume)
    except ClaimBusyError as exc:
        raise RunBusyError(str(exc)) from exc
    if run is not None and run.run_id == adopt_run_id:
        run.set_tags(run_tags)
        if not tracker.get_run(run.run_id).data.params:  # killed between creating the run and logging its params
            run.log_params({**cfg.flat(), **flag_params(run_tags)})
    return run, finished_id


def flag_params(tags: Mapping[str, str]) -> dict[str, str]:
    """A grid row's table flags, passed as ``md2bench.flag.<key>`` tags, as ``flag.<key>`` params too (the MLflow
    compare view and parallel-coordinates plot offer params, not tags)."""
    from md2bench.tracking import FLAG_TAG

    return {f"flag.{k[len(FLAG_TAG):]}": v for k, v in tags.items() if k.startswith(FLAG_TAG)}


def _finished_elsewhere(tracker: Any, run_id: str | None, run_dir: Path, logger: logging.Logger) -> RunResult:
    """The result for a key the store already holds FINISHED (trained from another folder or machine)."""
    metrics = {k: float(v) for k, v in tracker.get_run(run_id).data.metrics.items() if k.startswith("test/")}
    message = (f"already finished in MLflow run {run_id} (trained from another folder or machine); nothing to "
               "train. Pass --no-resume (resume=False) to train it again here")
    logger.info(message)
    return RunResult("FINISHED", run_id, run_dir, metrics, [], 0, message)


def _divergence_message(exc: DivergenceError, cfg: Config, checkpoint: Path | None, saved_step: int | None,
                        steps_per_epoch: int) -> str:
    """What diverged, which checkpoint really exists (or that none does), and what to change."""
    change = (f"lower train.lr (now {cfg.train.lr:g}) or change another setting (a changed config is a new run; "
              "rerunning this one repeats the divergence)")
    if checkpoint is not None and checkpoint.is_file():
        return (f"{exc}; the last finite checkpoint {checkpoint} (step {saved_step}) was kept and nothing after "
                f"it was written; {change}, or start over with --no-resume")
    return (f"{exc}; no checkpoint exists (the first is written at the end of epoch 0, step {steps_per_epoch}, "
            f"and only from finite values); {change}")


def _run_tags(cfg: Config, device: torch.device, extra: Mapping[str, Any] | None) -> dict[str, str]:
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
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


def _final_evaluation(
    models: torch.nn.ModuleDict,
    cfg: Config,
    device: torch.device,
    run_dir: Path,
    run: Any,
    logger: logging.Logger,
    step: int,
    progress: bool,
) -> dict[str, float]:
    """``evaluate_depth`` on the test split; logs ``test/*``, the eval tags and ``eval/per_image.csv``."""
    from md2bench.evaluate import evaluate_depth

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        result = evaluate_depth(models, cfg, split=None, post_process=False, device=device, progress=progress,
                                num_workers=min(cfg.data.num_workers, 4))
    test_metrics = {f"test/{k}": float(v) for k, v in result.mean.items()}
    test_metrics["test/ratio_mean"] = float(result.ratio_mean)
    test_metrics["test/ratio_std"] = float(result.ratio_std)
    csv_path = run_dir / "eval" / "per_image.csv"
    csv_path.parent.mkdir(exist_ok=True)
    result.per_image.to_csv(csv_path, index=False)
    settings = dict(getattr(result, "settings", None) or {})
    logger.info("test (%s): %s", settings, ", ".join(f"{k}={v:.4f}" for k, v in test_metrics.items()))
    if run is not None:
        run.log_metrics(test_metrics, step=step)
        run.log_artifact(csv_path, "eval")
    return test_metrics


def run_summary(result: RunResult) -> dict[str, Any]:
    """A JSON-friendly dict of a ``RunResult``."""
    out = asdict(result)
    out["run_dir"] = str(result.run_dir)
    return out


__all__ = [
    "EXIT_BLOCKED", "EXIT_BUSY", "EXIT_FAILED", "EXIT_FINISHED", "EXIT_INTERRUPTED", "EpochSampler",
    "NonFiniteLossError", "RunBusyError", "RunResult", "capture_rng_state", "epoch_learning_rates",
    "epoch_permutation", "fit", "make_scheduler", "resolve_device", "restore_rng_state", "run_summary",
    "scheduler_epoch_end", "scheduler_epoch_start", "seed_everything", "train_step", "validate",
]
