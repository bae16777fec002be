"""The grid's wall-time estimate: run lengths in steps (``total_steps``, ``train_size``), measured end-to-end rates
of finished runs in the store (``RATE_PARAMS``, ``rate_key``, ``measured_rates``), the rough constant-rate fallback,
``estimate_seconds``, the printed ``estimate_line``, and the duration format (``fmt_duration``) the table uses too."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from md2bench.config import KEY_DEFAULTS, Config
from md2bench.grid import RunSpec
from md2bench.launch.command import package_root
from md2bench.launch.slots import Slot
from md2bench.tracking import MLflowTracker

# Rough throughput for the dry-run estimate, in training images/s at 640×192 for one run alone on the device,
# scaled by (640·192 / pixels)^0.75 for other sizes (small inputs do not speed up in proportion: kernel launches
# and data loading dominate). GPU: an H100-class card in bf16 (our guess, not a measurement: `md2bench bench`
# measures it); CPU: a few cores. Packing K runs on one GPU is assumed to give 1.5× in total.
ROUGH_IMAGES_PER_S = {"cuda": 150.0, "cpu": 2.0}
_RATE_EXPONENT = 0.75
PACKING_GAIN = 1.5
STARTUP_S = 30.0  # per run: interpreter + torch import, model build, final evaluation (rough)


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

    from md2bench.train.device import device_tag

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


def fmt_duration(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``2h07m``; ``?`` for None, NaN or a negative time."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def estimate_line(todo: Sequence[RunSpec], slots: Sequence[Slot], tracker: MLflowTracker | None) -> str:
    """One line: the grid's estimated wall time on this machine, saying how much of it was measured."""
    if not todo or not slots:
        return "estimate: nothing to train"
    kind = "cuda" if slots[0].gpu is not None else "cpu"
    device = this_device_tag(kind)
    rates = measured_rates(tracker)
    images, seconds = estimate_seconds(todo, slots, rates, device)
    hits = [rates[spec_rate_key(s.config, device)] for s in todo if spec_rate_key(s.config, device) in rates]
    head = (f"estimate: about {fmt_duration(seconds)} of wall time on {len(slots)} slot(s) "
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
