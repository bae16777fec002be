"""The qualitative picture grid: each row's checkpoint (``find_checkpoint``), its predicted disparity on the same
test images, coloured as the reference's ``test_simple.py`` does, beside the input and the GT.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from md2bench.report.collect import ReportRow
from md2bench.report.figures import new_figure, save_figure
from md2bench.tracking import MLflowTracker


def find_checkpoint(tracker: MLflowTracker, run: Mapping[str, Any], scratch: Path) -> Path | None:
    """A run's checkpoint: the local run folder (``<train.out_dir>/<run_key>/checkpoint.pt``) when it exists,
    else the MLflow artifact ``checkpoints/last.pt`` downloaded into ``scratch``; None when neither exists."""
    if run.get("out_dir") and run.get("run_key"):
        local = Path(run["out_dir"]) / run["run_key"] / "checkpoint.pt"
        if local.is_file():
            return local
    try:
        return tracker.download_artifact(run["run_id"], "checkpoints/last.pt", scratch / run["run_id"])
    except Exception:  # noqa: BLE001 - MLflow raises several types for a missing artifact
        return None


def _colour_disparity(disp: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """H×W disparity → H×W×3 magma image, mapped from its minimum to its 95th percentile as the reference's
    ``test_simple.py`` does; pixels outside ``valid`` are black."""
    from matplotlib import colormaps

    values = disp[valid] if valid is not None else disp.ravel()
    if values.size == 0:
        return np.zeros((*disp.shape, 3))
    low, top = float(values.min()), float(np.percentile(values, 95))
    image = colormaps["magma"](np.clip((disp - low) / max(top - low, 1e-12), 0, 1))[..., :3]
    if valid is not None:
        image[~valid] = 0.0
    return image


def plot_qualitative(
    tracker: MLflowTracker, selected: pd.DataFrame, rows: Sequence[ReportRow], out_dir: Path,
    num_images: int = 3, device: str = "cpu",
) -> tuple[list[Path], list[str]]:
    """The same test images for every row: columns input, each row's predicted disparity, GT inverse depth.

    Each row uses its finished run with the smallest seed. Rows whose checkpoint cannot be found are left out
    (and named in the returned notes).

    Returns:
        ``([qualitative.png, qualitative.pdf] or [], notes)``.
    """
    import torch

    from md2bench.checkpoint import load_for_inference
    from md2bench.data.kitti import build_dataset
    from md2bench.method import predict_disparity

    notes: list[str] = []
    columns: list[tuple[str, list[np.ndarray]]] = []
    inputs: list[np.ndarray] | None = None
    gts: list[np.ndarray | None] = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            mine = selected[selected["row"] == row.name].sort_values("seed")
            if mine.empty:
                continue
            run = mine.iloc[0].to_dict()
            ckpt = find_checkpoint(tracker, run, Path(tmp))
            if ckpt is None:
                notes.append(f"qualitative: no checkpoint for row {row.name!r} (run {run['run_id']})")
                continue
            cfg, models = load_for_inference(ckpt, device)
            dataset = build_dataset(cfg, "test", seed=0)
            picks = np.unique(np.linspace(0, len(dataset) - 1, num_images).round().astype(int))
            preds = []
            row_inputs, row_gts = [], []
            with torch.no_grad():
                for i in picks:
                    sample = dataset[int(i)]
                    image = sample["images"][0].float().div(255.0)  # 3×H×W in [0, 1]
                    disp = predict_disparity(models, image[None].to(device), cfg)[0, 0].cpu().numpy()
                    preds.append(_colour_disparity(disp))
                    row_inputs.append(image.permute(1, 2, 0).numpy())
                    gt = sample.get("depth_gt")
                    row_gts.append(gt[0].numpy() if gt is not None else None)
            if inputs is None:
                inputs, gts = row_inputs, row_gts
            columns.append((row.label, preds))
    if not columns or inputs is None:
        notes.append("qualitative: no row had a checkpoint; figure skipped")
        return [], notes
    show_gt = any(g is not None for g in gts)
    ncols = 1 + len(columns) + int(show_gt)
    fig = new_figure(2.4 * ncols, 0.9 * len(inputs) + 0.6)
    axes = fig.subplots(len(inputs), ncols, squeeze=False)
    for r, image in enumerate(inputs):
        panels: list[tuple[str, np.ndarray | None]] = [("input", image)]
        panels += [(label, preds[r]) for label, preds in columns]
        if show_gt:
            gt = gts[r]
            panels.append(("GT (inverse depth)", None if gt is None else _colour_disparity(
                np.where(gt > 0, 1.0 / np.maximum(gt, 1e-3), 0.0), gt > 0)))
        for c, (title, panel) in enumerate(panels):
            ax = axes[r, c]
            if panel is not None:
                ax.imshow(panel)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=7)
    return save_figure(fig, out_dir, "qualitative"), notes
