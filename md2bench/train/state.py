"""The training state that makes resume exact: seeding and RNG capture, the data order, the schedule, the checkpoint.

- Seeding: ``seed_everything`` (torch CPU and CUDA, NumPy, ``random``) and ``seed_worker`` (loader workers).
- Data order: epoch e trains on ``epoch_permutation(seed, e, n)``; ``EpochSampler`` skips the batches already
  done, and ``EpochIndexed`` hands the epoch to the dataset (per-sample augmentation comes from
  (seed, epoch, index)).
- Schedule: ``make_scheduler`` and when it steps (``scheduler_epoch_start`` / ``scheduler_epoch_end``).
- The checkpoint dict (``checkpoint_payload``, format 1) and resuming from it (``load_resume``): model,
  optimiser and scheduler state, the ``Position``, the validation history and the global RNG states taken at
  the stop point.
"""

from __future__ import annotations

import random
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from md2bench.checkpoint import config_from_checkpoint, load_checkpoint
from md2bench.config import NON_SEMANTIC, Config

# Config keys a resumed checkpoint may differ in besides the non-semantic ones: the step budget.
RESUMABLE_DIFFERENCES = frozenset({"train.max_steps"})


# ============================================================================================ seeding, RNG
def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), NumPy's global RNG and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def seed_worker(worker_id: int) -> None:
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


# ============================================================================================ data order
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


class EpochIndexed(Dataset):
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


# ============================================================================================ schedule
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


# ============================================================================================ checkpoint
@dataclass
class Position:
    """Where training stands: ``epoch`` in progress, ``batch`` batches of it done, ``step`` steps in total."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


def checkpoint_payload(
    models: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    pos: Position,
    cfg: Config,
    run_id: str | None,
    val_history: list[dict[str, float]],
) -> dict[str, Any]:
    """The ``checkpoint.pt`` dict (format 1) of the state now, the global RNG states included."""
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


def check_resumable(stored: Config, cfg: Config, where: Path) -> None:
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


@dataclass
class ResumePoint:
    """What a checkpoint hands back besides the weights: position, history, RNG states, its MLflow run."""

    pos: Position = field(default_factory=Position)
    val_history: list[dict[str, float]] = field(default_factory=list)
    rng: Mapping[str, Any] | None = None
    run_id: str | None = None  # the MLflow run that wrote it
    same_key: bool = False  # written under this run key (not a checkpoint copied from another config)


def load_resume(
    path: Path,
    cfg: Config,
    models: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> ResumePoint:
    """Load ``path`` into the networks, optimiser and scheduler (after ``check_resumable``); the rest returned."""
    state = load_checkpoint(path, map_location="cpu")
    stored = config_from_checkpoint(state, where=str(path))
    check_resumable(stored, cfg, path)
    models.load_state_dict(state["models"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return ResumePoint(
        pos=Position(int(state["epoch"]), int(state["batch_in_epoch"]), int(state["step"])),
        val_history=list(state.get("val_history", [])),
        rng=state["rng"],
        run_id=state.get("mlflow_run_id") or None,
        same_key=stored.run_key == cfg.run_key,
    )


__all__ = [
    "EpochIndexed", "EpochSampler", "Position", "RESUMABLE_DIFFERENCES", "ResumePoint", "capture_rng_state",
    "check_resumable", "checkpoint_payload", "epoch_learning_rates", "epoch_permutation", "load_resume",
    "make_scheduler", "restore_rng_state", "scheduler_epoch_end", "scheduler_epoch_start", "seed_everything",
    "seed_worker",
]
