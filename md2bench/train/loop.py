"""The training loop of one run: ``fit(cfg, tracker)`` trains a configuration from scratch or its checkpoint to the end.

Beside it in ``md2bench.train``: ``rundir`` (the run-folder contract: file names, exit codes, lock, markers;
torch-free), ``state`` (seeding, RNG, data order, schedule, the checkpoint dict), ``device`` (device, autocast,
model preparation, optimiser), ``step`` (``train_step``, divergence errors), ``validate`` (``validate``, the epoch
picture) and ``lifecycle`` (log file, signals, parent watch, the MLflow run's claim and end).

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
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch.utils.data import DataLoader

from md2bench.checkpoint import save_checkpoint
from md2bench.config import Config
from md2bench.train import rundir
from md2bench.train.device import make_optimizer, prepare_models, resolve_device
from md2bench.train.lifecycle import ParentWatch, RunLifecycle, StopFlag, claim_tracked_run, make_logger
from md2bench.train.rundir import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, ProgressWriter, RunBusyError
from md2bench.train.state import (
    EpochIndexed,
    EpochSampler,
    Position,
    checkpoint_payload,
    load_resume,
    make_scheduler,
    restore_rng_state,
    scheduler_epoch_end,
    scheduler_epoch_start,
    seed_everything,
    seed_worker,
)
from md2bench.train.step import (
    DivergenceError,
    NonFiniteStateError,
    NonFiniteValidationError,
    nonfinite_state,
    nonfinite_values,
    train_step,
)
from md2bench.train.validate import epoch_figure, validate

if TYPE_CHECKING:
    from md2bench.tracking import Tracker

# The method, data, models and evaluation modules are imported inside the functions that use them.

CHECKPOINT_EVERY_S = 600.0  # also checkpoint mid-epoch this often (pre-emption by SIGKILL loses at most this)

Status = str  # "FINISHED" | "FAILED" | "KILLED" | "PRUNED"
EpochCallback = Callable[[int, Mapping[str, float]], bool]


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
        return {"FINISHED": rundir.EXIT_FINISHED, "FAILED": rundir.EXIT_FAILED,
                "KILLED": rundir.EXIT_INTERRUPTED}.get(self.status, rundir.EXIT_FINISHED)


def run_summary(result: RunResult) -> dict[str, Any]:
    """A JSON-friendly dict of a ``RunResult``."""
    out = asdict(result)
    out["run_dir"] = str(result.run_dir)
    return out


# ============================================================================================ fit
@dataclass(frozen=True)
class _Options:
    """``fit``'s keyword arguments, as the start-up and the loop need them."""

    experiment: str
    run_name: str | None
    tags: Mapping[str, Any] | None
    parent_run_id: str | None
    resume: bool
    epoch_callback: EpochCallback | None
    progress: bool


def fit(
    cfg: Config,
    tracker: Tracker | None = None,
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
        tracker: a ``md2bench.tracking.Tracker`` (``MLflowTracker``); None trains without MLflow (run folder only).
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
    opts = _Options(experiment, run_name, tags, parent_run_id, resume, epoch_callback, progress)
    run_dir = Path(cfg.train.out_dir) / cfg.run_key
    run_dir.mkdir(parents=True, exist_ok=True)
    with rundir.run_lock(run_dir):
        earlier = _earlier_result(run_dir) if resume else None
        if earlier is not None:
            return earlier
        if not resume:
            for name in (rundir.DONE_NAME, CHECKPOINT_NAME, rundir.RUN_ID_NAME, rundir.DIVERGED_NAME):
                (run_dir / name).unlink(missing_ok=True)
        logger, handler = make_logger(run_dir, cfg.run_key)
        # Installed before start-up (data, networks, MLflow), not just before the loop: a stop request that
        # arrives while the run starts is then an interruption (KILLED, exit 75), not a crash.
        stop = StopFlag()
        stop.install()
        life = RunLifecycle(logger)
        watch = ParentWatch(stop, logger).start()
        try:
            return _fit_locked(cfg, tracker, run_dir, logger, stop, life, opts)
        except Exception as exc:
            interrupted = _stopped_outside_loop(exc, run_dir, logger, stop, life, getattr(tracker, "uri", None))
            if interrupted is None:
                raise
            return interrupted
        except BaseException:  # a forced quit (second signal) or SystemExit: still a true end for the run
            life.end("KILLED", stop.reason)
            raise
        finally:
            life.end("FAILED", "error", "the trainer returned without ending its MLflow run")  # no-op if ended
            watch.close()
            stop.restore()
            logger.removeHandler(handler)
            handler.close()


def _stopped_outside_loop(exc: Exception, run_dir: Path, logger: logging.Logger, stop: StopFlag,
                          life: RunLifecycle, uri: str | None) -> RunResult | None:
    """An exception out of the run (start-up, or re-raised by the loop): the KILLED result when a stop request
    caused it (still an interruption), else None (``fit`` re-raises it) after ending the MLflow run FAILED."""
    from md2bench.errors import describe_failure

    if stop.signal is None:
        logger.exception("run failed: %s", exc)
        life.end("FAILED", "error", describe_failure(exc, uri))
        return None
    # Start-up broke because of the stop (e.g. SIGTERM reached a helper process): still an interruption.
    message = (f"interrupted by {stop.name} during start-up ({type(exc).__name__}: {exc}); "
               "run again to resume")
    logger.warning(message)
    life.end("KILLED", stop.reason)
    return RunResult("KILLED", life.run_id, run_dir, message=message)


def _earlier_result(run_dir: Path) -> RunResult | None:
    """The result of an earlier invocation that settles this one (finished, or diverged), else None."""
    if rundir.is_done(run_dir):
        return _done_result(run_dir)
    return _diverged_before(run_dir)


def _done_result(run_dir: Path) -> RunResult:
    """The FINISHED result recorded in the ``DONE`` marker."""
    data = rundir.read_done(run_dir)
    if data is None:
        raise RuntimeError(f"{run_dir / rundir.DONE_NAME} is not readable JSON; pass --no-resume (resume=False) "
                           "to train the run again")
    return RunResult(
        status="FINISHED",
        run_id=data.get("run_id"),
        run_dir=run_dir,
        test_metrics={k: float(v) for k, v in data.get("test_metrics", {}).items()},
        val_history=list(data.get("val_history", [])),
        steps=int(data.get("steps", 0)),
        message="already finished (DONE marker present); pass resume=False / --no-resume to train again",
    )


def _diverged_before(run_dir: Path) -> RunResult | None:
    """A FAILED result saying the run diverged before (``DIVERGED`` marker), or None when it did not."""
    data = rundir.read_diverged(run_dir)
    if data is None:
        return None
    ckpt = run_dir / CHECKPOINT_NAME
    kept = (f"its last finite checkpoint {ckpt} (step {data.get('checkpoint_step')}) would be resumed"
            if ckpt.is_file() else "no checkpoint of it exists")
    message = (f"this run diverged before ({data.get('error', 'non-finite values')}; MLflow run "
               f"{data.get('run_id') or '-'}) and {kept}: the same config would diverge the same way. Lower "
               f"train.lr (it was {data.get('lr')}) or change another setting (a changed config is a new run), or "
               "pass --no-resume (resume=False) to start this run over from step 0")
    return RunResult("FAILED", data.get("run_id") or None, run_dir, steps=int(data.get("step", 0)), message=message)


def resolve_data(cfg: Config) -> Config:
    """The config with ``data.path`` filled in (the synthetic world is rendered on first use)."""
    from md2bench.data.kitti import dataset_root

    root = dataset_root(cfg)  # renders the synthetic world into the cache when data.path is empty
    return cfg.override({"data.path": str(Path(root).resolve())})  # data.path is non-semantic: same run_key


# ============================================================================================ start-up
@dataclass
class _Training:
    """One run under way: what start-up built (fixed) and where the loop stands (mutable).

    The loop's functions share it instead of closures; ``pos``, ``val_history``, ``saved_step`` (the step of the
    checkpoint on disk, None when there is none), ``last_save`` and ``validated_at_step`` change as it trains.
    """

    cfg: Config
    device: torch.device
    run_dir: Path
    logger: logging.Logger
    stop: StopFlag
    life: RunLifecycle
    models: torch.nn.ModuleDict
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader
    scaling: tuple[Any, ...]
    total_steps: int
    pos: Position = field(default_factory=Position)
    val_history: list[dict[str, float]] = field(default_factory=list)
    rng_state: Mapping[str, Any] | None = None
    saved_step: int | None = None
    run: Any = None  # the MLflow run (None without a tracker)
    reporter: Any = None  # ProgressWriter, from the start of the loop
    bar: Any = None  # the tqdm bar, from the start of the loop
    last_save: float = 0.0
    validated_at_step: float = -1

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run is not None else None

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME


def _fit_locked(cfg: Config, tracker: Tracker | None, run_dir: Path, logger: logging.Logger, stop: StopFlag,
                life: RunLifecycle, opts: _Options) -> RunResult:
    """Start (or resume) the run, claim it in the store, then train it: ``fit`` under the run's lock."""
    t = _start(cfg, tracker, run_dir, logger, stop, life)
    previous_run_id, same_run = _resume(t, tracker)
    if stop.signal is not None:  # stopped during start-up: leave no MLflow run, keep any checkpoint as it is
        message = f"interrupted by {stop.name} during start-up (step {t.pos.step}); run again to resume"
        logger.warning(message)
        return RunResult("KILLED", None, run_dir, {}, t.val_history, t.pos.step, message)

    # ----- tracking: claim the run key in the store, persist the run id before the first step
    if tracker is not None:
        run, finished_id = claim_tracked_run(
            tracker, t.cfg, t.device, run_dir, logger, experiment=opts.experiment, run_name=opts.run_name,
            tags=opts.tags, parent_run_id=opts.parent_run_id, adopt_run_id=previous_run_id if same_run else None,
            resumed_from=previous_run_id, resume=opts.resume,
        )
        if run is None:
            return _finished_elsewhere(tracker, finished_id, run_dir, logger)
        life.attach(run)
        t.run = run
        rundir.write_run_id(run_dir, run.run_id, tracker.uri, run.experiment_id)
        run.log_text(t.cfg.to_toml(), CONFIG_NAME)
    t.cfg.save(run_dir / CONFIG_NAME)
    logger.info("run %s (%s) on %s; MLflow run %s; %d steps/epoch, %d steps planned",
                t.cfg.run_key, t.cfg.name, t.device, t.run_id, t.steps_per_epoch, t.total_steps)
    return _train(t, tracker, opts)


def _start(cfg: Config, tracker: Tracker | None, run_dir: Path, logger: logging.Logger, stop: StopFlag,
           life: RunLifecycle) -> _Training:
    """Check the store, seed, build the networks, optimiser, schedule and loaders (before any tracking, so a
    missing weights file leaves no run)."""
    from md2bench.evaluate import scaling_for

    device = resolve_device(cfg.train.device)
    if tracker is not None and hasattr(tracker, "require_writable"):
        tracker.require_writable()  # a read-only store fails here, before the data and networks are set up
        busy = tracker.live_claim(cfg.run_key)  # the same early: trained elsewhere right now
        if busy is not None:
            raise RunBusyError(f"run {cfg.run_key} is being trained elsewhere: {busy.describe()}; wait for it to "
                               "finish or stop that process")
    cfg = resolve_data(cfg)
    seed_everything(cfg.train.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    models, optimizer, scheduler = _build_networks(cfg, device, logger)
    sampler, train_loader, val_loader = _build_loaders(cfg, device)
    scaling = scaling_for(cfg, Path(cfg.data.path))
    planned = sampler.batches_per_epoch * cfg.train.epochs
    total_steps = min(planned, cfg.train.max_steps) if cfg.train.max_steps else planned
    return _Training(cfg, device, run_dir, logger, stop, life, models, optimizer, scheduler, sampler,
                     train_loader, val_loader, scaling, total_steps)


def _build_networks(cfg: Config, device: torch.device, logger: logging.Logger) -> tuple[Any, Any, Any]:
    """``(models, optimizer, scheduler)``: the networks (warm-started from ``model.init_from``) prepared for
    ``device``, their optimiser and its learning-rate schedule."""
    from md2bench.models import build_models

    built = build_models(cfg)
    if cfg.model.init_from:
        from md2bench.checkpoint import init_from_checkpoint

        warm = init_from_checkpoint(built, cfg.model.init_from)
        logger.info("networks %s start from %s (model.init_from)", ", ".join(warm), cfg.model.init_from)
    models = prepare_models(built, cfg, device)
    optimizer = make_optimizer(models, cfg)
    return models, optimizer, make_scheduler(optimizer, cfg)


def _build_loaders(cfg: Config, device: torch.device) -> tuple[EpochSampler, DataLoader, DataLoader]:
    """``(sampler, train_loader, val_loader)``; the training loader's order is the sampler's (seed, epoch)."""
    from md2bench.data.kitti import build_dataset

    # The training step never reads ground truth: decoding the synthetic world's depth and motion-mask PNGs
    # for every training item would add two decodes to the three images (the reference projects velodyne
    # points every step for logging, a known slowdown). Validation loads it for its metrics.
    train_set = build_dataset(cfg, "train", load_depth=False)
    val_set = build_dataset(cfg, "val")
    if hasattr(val_set, "set_epoch"):
        val_set.set_epoch(0)
    sampler = EpochSampler(len(train_set), cfg.train.batch_size, cfg.train.seed)
    if sampler.batches_per_epoch == 0:
        raise RuntimeError(
            f"the training split has {len(train_set)} items, fewer than train.batch_size = "
            f"{cfg.train.batch_size}; lower the batch size or use more data"
        )
    workers = cfg.data.num_workers
    loader_kwargs: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "worker_init_fn": seed_worker,
        "persistent_workers": workers > 0,
    }
    if workers > 0:
        loader_kwargs["prefetch_factor"] = 4
    train_loader = DataLoader(
        EpochIndexed(train_set), batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True,
        generator=torch.Generator().manual_seed(cfg.train.seed), **loader_kwargs,
    )
    val_loader = DataLoader(
        val_set, batch_size=cfg.train.batch_size, shuffle=False, drop_last=False,
        generator=torch.Generator().manual_seed(cfg.train.seed), **loader_kwargs,
    )
    return sampler, train_loader, val_loader


def _resume(t: _Training, tracker: Tracker | None) -> tuple[str | None, bool]:
    """Load the checkpoint into ``t`` if there is one; ``(previous MLflow run id, same run key)``.

    Without a checkpoint but with a tracker, the run id of ``mlflow_run.json``: a run killed before its first
    checkpoint continues the MLflow run it had started.
    """
    if t.ckpt_path.exists():
        point = load_resume(t.ckpt_path, t.cfg, t.models, t.optimizer, t.scheduler)
        t.pos, t.val_history, t.rng_state = point.pos, point.val_history, point.rng
        t.saved_step = t.pos.step
        t.logger.info("resuming %s at epoch %d, batch %d, step %d", t.ckpt_path, t.pos.epoch, t.pos.batch,
                      t.pos.step)
        return point.run_id, point.same_key
    if tracker is not None:
        previous_run_id = rundir.read_run_id(t.run_dir, tracker.uri)
        if previous_run_id:
            t.logger.info("no checkpoint; continuing MLflow run %s from step 0", previous_run_id)
        return previous_run_id, previous_run_id is not None
    return None, False


def _finished_elsewhere(tracker: Tracker | None, run_id: str | None, run_dir: Path,
                        logger: logging.Logger) -> RunResult:
    """The result for a key the store already holds FINISHED (trained from another folder or machine)."""
    metrics = {k: float(v) for k, v in tracker.get_run(run_id).data.metrics.items() if k.startswith("test/")}
    message = (f"already finished in MLflow run {run_id} (trained from another folder or machine); nothing to "
               "train. Pass --no-resume (resume=False) to train it again here")
    logger.info(message)
    return RunResult("FINISHED", run_id, run_dir, metrics, [], 0, message)


# ============================================================================================ the loop
def _train(t: _Training, tracker: Tracker | None, opts: _Options) -> RunResult:
    """Train from ``t.pos`` to the stop point and end the run; every outcome of the loop is handled here."""
    from tqdm.auto import tqdm

    batch_size = t.cfg.train.batch_size
    t.reporter = ProgressWriter(t.run_dir, t.total_steps, batch_size)  # progress.json: the grid bar's source
    t.reporter.update(t.pos.step, force=True)
    t.bar = tqdm(total=t.total_steps * batch_size, initial=t.pos.step * batch_size, unit="img",
                 unit_scale=True, dynamic_ncols=True, disable=not opts.progress, desc=t.cfg.name)
    t.last_save = time.monotonic()
    t.validated_at_step = t.val_history[-1]["step"] if t.val_history else -1
    try:
        if t.rng_state is not None:
            restore_rng_state(t.rng_state)  # last thing before the loop: nothing may draw from the RNG after it
        pruned = _epoch_loop(t, opts.epoch_callback)
        return _stop_point(t, pruned, opts.progress)
    except DivergenceError as exc:
        t.bar.close()
        return _diverged(t, exc)
    except BaseException as exc:
        t.bar.close()
        if t.stop.signal is not None and isinstance(exc, Exception):
            return _interrupted_mid_step(t, exc)
        from md2bench.errors import describe_failure

        if isinstance(exc, KeyboardInterrupt):
            t.logger.exception("run stopped without a checkpoint: %s", exc)
            t.life.end("KILLED", "interrupted")
        else:  # fit logs the traceback
            t.life.end("FAILED", "error", describe_failure(exc, getattr(tracker, "uri", None)))
        raise


@dataclass
class _Window:
    """The steps since the last ``train/...`` log: their summed diagnostics, wall time, loader wait, step time."""

    start: float = field(default_factory=time.monotonic)
    steps: int = 0
    data_wait: float = 0.0
    in_step: float = 0.0
    sums: dict[str, Any] = field(default_factory=dict)


def _epoch_loop(t: _Training, epoch_callback: EpochCallback | None) -> bool:
    """Train epoch after epoch until the last epoch, the step budget or a stop request; True when pruned."""
    window = _Window()
    while t.pos.epoch < t.cfg.train.epochs and t.pos.step < t.total_steps and t.stop.signal is None:
        if t.pos.batch == 0:
            scheduler_epoch_start(t.scheduler, t.cfg)
        window = _train_epoch(t, window)
        if t.pos.batch >= t.steps_per_epoch and _end_epoch(t, epoch_callback):  # the epoch is complete
            return True
    return False


def _train_epoch(t: _Training, window: _Window) -> _Window:
    """The rest of epoch ``t.pos.epoch`` (or up to the step budget or a stop request); the open log window."""
    cfg, pos = t.cfg, t.pos
    t.sampler.set_epoch(pos.epoch, pos.batch)
    t.train_loader.generator.manual_seed(cfg.train.seed * 1_000_003 + pos.epoch)  # worker seeds per epoch
    batches = iter(t.train_loader)
    while True:
        wait_start = time.monotonic()  # time blocked on the loader: is this run data-bound?
        batch = next(batches, None)
        if batch is None:
            break
        step_start = time.monotonic()
        window.data_wait += step_start - wait_start
        total, diagnostics = train_step(t.models, t.optimizer, batch, cfg, t.device, pos.step + 1)
        window.in_step += time.monotonic() - step_start
        pos.step += 1
        pos.batch += 1
        window.steps += 1
        for key, value in {"loss": total, **diagnostics}.items():
            window.sums[key] = window.sums.get(key, 0.0) + value
        t.bar.update(cfg.train.batch_size)
        t.reporter.update(pos.step)
        if pos.step % cfg.train.log_every == 0 or pos.step == t.total_steps:
            _log_window(t, window)
            window = _Window()
        if pos.step >= t.total_steps or t.stop.signal is not None:
            break
        if time.monotonic() - t.last_save > CHECKPOINT_EVERY_S:
            _save(t)
            t.last_save = time.monotonic()
    return window


def _log_window(t: _Training, window: _Window) -> None:
    """Log the window's mean diagnostics and rates (MLflow ``train/...``, the bar, ``train.log``)."""
    cfg, pos = t.cfg, t.pos
    elapsed = max(time.monotonic() - window.start, 1e-9)
    logged = {f"train/{k}": float(v) / window.steps for k, v in window.sums.items()}
    logged["train/lr"] = t.optimizer.param_groups[0]["lr"]
    logged["train/images_per_s"] = window.steps * cfg.train.batch_size / elapsed
    logged["train/data_wait_fraction"] = min(window.data_wait / elapsed, 1.0)
    # wall time outside the optimiser step (data wait, logging, checkpoints, validation): how far
    # the end-to-end rate is from the step rate `md2bench bench` measures
    logged["train/outside_step_fraction"] = min(max(1.0 - window.in_step / elapsed, 0.0), 1.0)
    logged["train/epoch"] = pos.epoch + pos.batch / t.steps_per_epoch
    if t.device.type == "cuda":
        logged["system/gpu_max_memory_gb"] = torch.cuda.max_memory_allocated(t.device) / 2**30
    if t.run is not None:
        t.run.log_metrics(logged, step=pos.step)
    t.bar.set_postfix(loss=f"{logged['train/loss']:.4f}", epoch=pos.epoch, refresh=False)
    t.logger.info("step %d epoch %d loss %.5f lr %.3g %.1f img/s", pos.step, pos.epoch,
                  logged["train/loss"], logged["train/lr"], logged["train/images_per_s"])


def _end_epoch(t: _Training, epoch_callback: EpochCallback | None) -> bool:
    """Close the complete epoch: schedule, validation, checkpoint, callback; True when the callback prunes."""
    done_epoch = t.pos.epoch
    scheduler_epoch_end(t.scheduler, t.cfg)
    t.pos.epoch += 1
    t.pos.batch = 0
    val_metrics = _validate_epoch(t, done_epoch)  # forked RNG: the checkpoint below is unaffected
    _require_finite(t, val_metrics, done_epoch)  # a diverged epoch never replaces the last good checkpoint
    t.validated_at_step = t.pos.step
    _save(t)
    t.last_save = time.monotonic()
    return bool(epoch_callback is not None and epoch_callback(done_epoch, val_metrics))


def _validate_epoch(t: _Training, epoch: int) -> dict[str, float]:
    """Validate now; record it in the history, MLflow (``val/...``), the epoch picture and ``train.log``."""
    cfg, pos = t.cfg, t.pos
    t.reporter.update(pos.step, "validate")
    out = validate(t.models, t.val_loader, cfg, t.device, cfg.train.val_batches, picture=cfg.train.image_log,
                   scaling=t.scaling[:2])
    entry = {"epoch": float(epoch), "step": float(pos.step), **out.metrics}
    t.val_history.append(entry)
    if t.run is not None:
        t.run.log_metrics({**out.metrics, "val/epoch": float(epoch)}, step=pos.step)
    if out.picture is not None:
        fig = epoch_figure(out.picture, f"{cfg.name} epoch {epoch} step {pos.step}")
        image_path = t.run_dir / "images" / f"epoch_{epoch}.png"
        image_path.parent.mkdir(exist_ok=True)
        fig.savefig(image_path)
        if t.run is not None:
            t.run.log_artifact(image_path, "images")
    t.logger.info("validation epoch %d step %d: %s", epoch, pos.step,
                  ", ".join(f"{k}={v:.4g}" for k, v in out.metrics.items()))
    return out.metrics


def _require_finite(t: _Training, metrics: Mapping[str, float], epoch: int) -> None:
    bad = nonfinite_values(metrics)
    if bad:
        raise NonFiniteValidationError(t.pos.step, epoch, bad)


# ============================================================================================ checkpoints
def _checkpoint_state(t: _Training) -> dict[str, Any]:
    """The checkpoint dict of the state now (``md2bench.train.state.checkpoint_payload``)."""
    return checkpoint_payload(t.models, t.optimizer, t.scheduler, t.pos, t.cfg, t.run_id, t.val_history)


def _save(t: _Training, state: Mapping[str, Any] | None = None) -> None:
    """Write the checkpoint (``state``, else the state now), only from finite weights and optimiser state."""
    bad = nonfinite_state(t.models, t.optimizer)
    if bad:
        raise NonFiniteStateError(t.pos.step, bad)
    save_checkpoint(t.ckpt_path, state if state is not None else _checkpoint_state(t))
    t.saved_step = t.pos.step


# ============================================================================================ the end
def _stop_point(t: _Training, pruned: bool, progress: bool) -> RunResult:
    """The loop stopped: checkpoint the stop point, then end the run as KILLED, PRUNED or FINISHED."""
    # the state is taken before a final validation, which cannot move it: forked RNG
    stop_state = _checkpoint_state(t)
    if t.stop.signal is None and not pruned and t.validated_at_step != t.pos.step:
        _require_finite(t, _validate_epoch(t, t.pos.epoch), t.pos.epoch)  # stopped mid-epoch by max_steps
    _save(t, stop_state)
    t.bar.close()
    if t.stop.signal is not None:
        message = f"interrupted by {t.stop.name} at step {t.pos.step}; checkpoint written, resume to continue"
        if t.stop.reason == "parent-gone":
            message += " (the orchestrator that started this run is gone)"
        t.logger.warning(message)
        t.life.end("KILLED", t.stop.reason)
        return RunResult("KILLED", t.run_id, t.run_dir, {}, t.val_history, t.pos.step, message)
    if pruned:
        message = f"pruned after epoch {t.pos.epoch - 1} (step {t.pos.step})"
        t.logger.info(message)
        if t.run is not None:
            t.run.set_tags({"md2bench.pruned": "true"})
        t.life.end("KILLED", "pruned")
        return RunResult("PRUNED", t.run_id, t.run_dir, {}, t.val_history, t.pos.step, message)
    return _finish(t, progress)


def _finish(t: _Training, progress: bool) -> RunResult:
    """Evaluate on the test split, log the last checkpoint (slim) and the log, write ``DONE``, end FINISHED."""
    cfg, pos = t.cfg, t.pos
    t.reporter.update(pos.step, "evaluate")
    test_metrics = _final_evaluation(t.models, cfg, t.device, t.run_dir, t.run, t.logger, pos.step, progress)
    t.reporter.update(pos.step, "done")
    if t.run is not None:
        slim = {k: v for k, v in _checkpoint_state(t).items() if k not in ("optimizer", "scheduler", "rng")}
        with tempfile.TemporaryDirectory() as tmp:
            last = save_checkpoint(Path(tmp) / "last.pt", slim)
            t.run.log_artifact(last, "checkpoints")
        t.run.log_artifact(t.run_dir / LOG_NAME)
    rundir.write_done(t.run_dir, {
        "run_id": t.run_id, "run_key": cfg.run_key, "name": cfg.name, "steps": pos.step,
        "test_metrics": test_metrics, "val_history": t.val_history, "finished_at": time.time(),
    })
    t.life.end("FINISHED", "finished")
    message = f"finished after {pos.step} steps: " + ", ".join(
        f"{k}={v:.4f}" for k, v in test_metrics.items() if k.count("/") == 1)
    t.logger.info(message)
    return RunResult("FINISHED", t.run_id, t.run_dir, test_metrics, t.val_history, pos.step, message)


def _diverged(t: _Training, exc: DivergenceError) -> RunResult:
    """Non-finite numbers: keep the last finite checkpoint, write ``DIVERGED``, end the run FAILED."""
    checkpoint = t.ckpt_path if t.saved_step is not None else None
    message = _divergence_message(exc, t.cfg, checkpoint, t.saved_step, t.steps_per_epoch)
    t.logger.error(message)
    with contextlib.suppress(OSError):
        rundir.write_diverged(t.run_dir, {
            "error": str(exc), "step": exc.step, "run_id": t.run_id, "lr": t.cfg.train.lr,
            "checkpoint_step": t.saved_step, "at": time.time()})
    t.life.end("FAILED", "non-finite", str(exc))
    return RunResult("FAILED", t.run_id, t.run_dir, {}, t.val_history, t.pos.step, message)


def _interrupted_mid_step(t: _Training, exc: Exception) -> RunResult:
    """The stop broke the step in flight (e.g. a loader worker killed by the same signal): the state in memory
    may be half-updated, so no checkpoint now; resume continues from the last one on disk."""
    message = (f"interrupted by {t.stop.name} at step {t.pos.step} ({type(exc).__name__}: {exc}); "
               "resume continues from the last checkpoint")
    t.logger.warning(message)
    t.life.end("KILLED", t.stop.reason)
    return RunResult("KILLED", t.run_id, t.run_dir, {}, t.val_history, t.pos.step, message)


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


__all__ = ["CHECKPOINT_EVERY_S", "EpochCallback", "RunResult", "fit", "resolve_data", "run_summary"]
