"""Throughput benchmark: training step, data loading, synthetic rendering.

What is measured (each the median of several timed repetitions after warm-up, so one slow step does not
dominate):

- ``train_images_per_s``: the full training step with the batch already in memory on the device — both
  networks forward, every warp and loss term, backward, Adam step — as ``batch_size / median step time``.
- ``reference_images_per_s`` (part ``reference``): the same step computed by ``reference.reference_loss``, the
  straightforward per-source, per-scale formulation the reference code uses, on the same machine, so the
  speed-up of the optimised step is measured rather than claimed.
- ``loader_images_per_s``: the training data loader reading the synthetic world from disk with augmentation
  (decode, resize where needed, per-sample jitter parameters, collation), with the config's worker count.
- ``render_frames_per_s``: the procedural world's renderer (left + right image, depth, mask per frame).
- ``concurrent``: total training images/s of K benchmark processes sharing the device, for K in the list:
  the measurement behind packing several runs per GPU.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch

from md2bench.config import Config
from md2bench.train.device import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(cfg: Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch that follows ``data.schema`` with random pixels, KITTI intrinsics and random jitter draws.

    Random images make the losses and gradients real (nothing is constant-folded); the step's cost does not
    depend on image content.
    """
    g = torch.Generator().manual_seed(seed)
    b, f, h, w = cfg.train.batch_size, len(cfg.frames), cfg.data.height, cfg.data.width
    K = torch.tensor([[0.58 * w, 0, 0.5 * w, 0], [0, 1.92 * h, 0.5 * h, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    stereo = torch.eye(4)
    stereo[0, 3] = -0.1
    color = torch.stack([torch.ones(b), torch.ones(b), torch.ones(b), torch.zeros(b)], 1)
    color[::2, :3] = 1.1  # half the batch jittered, as p = 0.5 would
    color[::2, 3] = 0.05
    return {
        "images": torch.randint(0, 256, (b, f, 3, h, w), dtype=torch.uint8, generator=g),
        "K": K.expand(b, 4, 4).clone(),
        "stereo_T": stereo.expand(b, 4, 4).clone(),
        "color_aug": color,
        "color_order": torch.arange(4).expand(b, 4).clone(),
        "flip": torch.zeros(b, dtype=torch.bool),
        "index": torch.arange(b),
    }


def _time_steps(step: Callable[[], None], device: torch.device, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def make_train_step(cfg: Config, formulation: str = "optimised") -> Callable[[], None]:
    """One full training step on an in-memory batch (models, optimiser and batch built once), as a closure.

    The optimised formulation is the trainer's own ``train_step`` with the networks prepared and the optimiser
    built as ``fit`` does (memory format, compilation, fused Adam, autocast), so the benchmark times what
    training runs. ``formulation="reference"`` computes the same loss with ``reference.reference_loss``.
    """
    from md2bench import method, reference
    from md2bench.models import build_models
    from md2bench.train.device import autocast_for, make_optimizer, prepare_models
    from md2bench.train.step import train_step

    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    models = prepare_models(build_models(cfg), cfg, device)
    models.train()
    optimiser = make_optimizer(models, cfg)
    batch = make_batch(cfg)

    def step() -> None:
        if formulation == "optimised":
            train_step(models, optimiser, batch, cfg, device, step=1)
            return
        optimiser.zero_grad(set_to_none=True)
        with autocast_for(device, cfg):  # same forward pass, the loss the reference's way (per source, scale)
            inputs = method.prepare_inputs(batch, cfg, device)
            loss = reference.reference_loss(method.forward(models, inputs, cfg), inputs, cfg)[0]
        loss.backward()
        optimiser.step()

    return step


def measure_train(cfg: Config, steps: int = 10, warmup: int = 3, formulation: str = "optimised") -> dict[str, Any]:
    """Images/s of the full training step with data in memory (see module docstring)."""
    device = resolve_device(cfg.train.device)
    step = make_train_step(cfg, formulation)
    times = _time_steps(step, device, steps, warmup)
    median = statistics.median(times)
    result = {"images_per_s": cfg.train.batch_size / median, "median_step_s": median, "steps": steps}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def measure_loader(cfg: Config, batches: int = 20) -> dict[str, Any]:
    """Images/s of the training data loader reading from disk with augmentation."""
    from md2bench.data.kitti import build_dataset

    dataset = build_dataset(cfg, "train", load_depth=False)  # as the trainer reads it: no ground truth
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=False,
    )
    it = iter(loader)
    next(it)  # warm-up: worker start-up is not throughput
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        n += batch["images"].shape[0]
    elapsed = time.perf_counter() - start
    return {"images_per_s": n / elapsed if elapsed > 0 else float("nan"), "images": n, "workers": cfg.data.num_workers}


def measure_render(cfg: Config) -> dict[str, Any]:
    """Frames/s of the synthetic world's renderer at the config's size."""
    from md2bench.data import synthetic

    fps = synthetic.render_benchmark(height=cfg.data.height, width=cfg.data.width)
    return {"frames_per_s": fps}


def measure_concurrent(cfg_toml: str, k: int, steps: int, warmup: int, device: str) -> dict[str, Any]:
    """Total training images/s of ``k`` benchmark processes started together on one device."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as fh:
        fh.write(cfg_toml)
        path = fh.name
    cmd = [sys.executable, "-m", "md2bench", "bench", path, f"train.device={device}", "--parts", "train",
           "--steps", str(steps), "--warmup", str(warmup), "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(k)]
    totals = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            return {"k": k, "error": err.strip().splitlines()[-1:] or ["failed"]}
        totals.append(json.loads(out.strip().splitlines()[-1])["train_images_per_s"])
    os.unlink(path)
    return {"k": k, "total_images_per_s": sum(totals), "per_run_images_per_s": totals}


PARTS = ("train", "loader", "render", "reference")


def run_benchmark(
    cfg: Config, steps: int = 10, warmup: int = 3, parts: list[str] | None = None, concurrent: list[int] | None = None
) -> dict[str, Any]:
    """Run the selected measurements; returns a flat JSON-ready dict. ``ValueError`` names an unknown part."""
    parts = parts or ["train", "loader", "render"]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown bench part(s) {', '.join(map(repr, unknown))}; choose from {', '.join(PARTS)}")
    device = resolve_device(cfg.train.device)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "height": cfg.data.height,
        "width": cfg.data.width,
        "batch_size": cfg.train.batch_size,
        "amp": cfg.train.amp if device.type == "cuda" or cfg.train.cpu_amp else "off (cpu)",
        "channels_last": cfg.train.channels_last,
        "compile": cfg.train.compile,
        "compile_loss": cfg.train.compile_loss,
        "config": cfg.flat(),
        "run_key": cfg.run_key,
    }
    if "train" in parts:
        r = measure_train(cfg, steps, warmup)
        result["train_images_per_s"] = r["images_per_s"]
        result["train_median_step_s"] = r["median_step_s"]
        if "peak_memory_gib" in r:
            result["train_peak_memory_gib"] = r["peak_memory_gib"]
    if "reference" in parts:
        r = measure_train(cfg, steps, warmup, formulation="reference")
        result["reference_images_per_s"] = r["images_per_s"]
        if "train_images_per_s" in result:
            result["speedup_vs_reference"] = result["train_images_per_s"] / r["images_per_s"]
    if "loader" in parts:
        r = measure_loader(cfg)
        result["loader_images_per_s"] = r["images_per_s"]
        result["loader_workers"] = r["workers"]
    if "render" in parts:
        result["render_frames_per_s"] = measure_render(cfg)["frames_per_s"]
    if concurrent:
        result["concurrent"] = [measure_concurrent(cfg.to_toml(), k, steps, warmup, str(device)) for k in concurrent]
    return result


def format_result(result: dict[str, Any]) -> str:
    """Human-readable summary lines."""
    lines = [f"device: {result['device']}  torch {result['torch']}  threads {result['threads']}",
             f"input {result['width']}x{result['height']}, batch {result['batch_size']}, amp {result['amp']}"]
    for key, label in (
        ("train_images_per_s", "training step (data in memory)"),
        ("reference_images_per_s", "reference formulation step"),
        ("speedup_vs_reference", "speed-up vs reference formulation"),
        ("loader_images_per_s", "data loader (disk + augmentation)"),
        ("render_frames_per_s", "synthetic renderer (frames/s)"),
        ("train_peak_memory_gib", "peak GPU memory (GiB)"),
    ):
        if key in result:
            lines.append(f"  {label:40s} {result[key]:10.2f}")
    for c in result.get("concurrent", []):
        if "error" in c:
            lines.append(f"  {c['k']} concurrent runs: failed ({c['error']})")
        else:
            lines.append(f"  {c['k']} concurrent runs: total {c['total_images_per_s']:.1f} images/s")
    return "\n".join(lines)
