"""The no-learning floors on a hand-made world whose numbers can be worked out by hand.

World (one drive, 6 frames of 32×64, KITTI raw layout): train = frames 1, 2 (their neighbours exist), val =
frame 3, test = frames 4, 5. GT depth of row r (k = r + 1 = 1..32):

    frame 1 (train): k metres in every column
    frame 2 (train): 2k metres in the left half, 100 m in the right half (beyond the 80 m the synth protocol
                     scores: left out of the prior like pixels without GT)
    frame 3 (val):   2k metres in the left half
    frame 4 (test):  2k metres everywhere
    frame 5 (test):  10 metres everywhere
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from md2bench.config import Config
from md2bench.floors import FloorUnavailable, evaluate_floor, evaluate_floors, row_prior

DATE = "2000_01_01"
DRIVE = f"{DATE}/{DATE}_drive_0001_sync"
H, W = 32, 64
K = np.arange(1, H + 1, dtype=np.float64)[:, None]  # k = row + 1


def _gt(frame: int) -> np.ndarray | None:
    left = np.zeros((H, W))
    left[:, : W // 2] = 1.0
    return {1: K * np.ones((1, W)), 2: 2 * K * left + 100 * (1 - left), 3: 2 * K * left, 4: 2 * K * np.ones((1, W)),
            5: np.full((H, W), 10.0)}.get(frame)


def _write_world(root: Path, train_gt: bool = True, val_gt: bool = True) -> Path:
    drive = root / DRIVE
    for sub in ("image_02/data", "proj_depth/groundtruth/image_02"):
        (drive / sub).mkdir(parents=True, exist_ok=True)
    for frame in range(6):
        name = f"{frame:010d}.png"
        Image.fromarray(np.full((H, W, 3), 40 * frame, np.uint8)).save(drive / "image_02" / "data" / name)
        gt = _gt(frame)
        keep = {1: train_gt, 2: train_gt, 3: val_gt}.get(frame, True)
        if gt is not None and keep:
            Image.fromarray(np.round(gt * 256).astype(np.uint16)).save(drive / "proj_depth" / "groundtruth" / "image_02" / name)
    split = root / "splits" / "synth"
    split.mkdir(parents=True, exist_ok=True)
    for name, frames in (("train", (1, 2)), ("val", (3,)), ("test", (4, 5))):
        (split / f"{name}_files.txt").write_text("".join(f"{DRIVE} {f} l\n" for f in frames))
    return root


def _cfg(root: Path, mode: str = "M") -> Config:
    return Config().override({"data.dataset": "synthetic", "data.path": str(root), "data.split": "synth",
                              "data.test_split": "synth", "data.height": H, "data.width": W, "data.mode": mode})


def _harmonic(n: int) -> Fraction:
    return sum((Fraction(1, k) for k in range(1, n + 1)), Fraction(0))


def test_row_prior_is_the_mean_of_valid_training_gt_per_row(tmp_path: Path) -> None:
    prior = row_prior(_cfg(_write_world(tmp_path)))
    # row k: frame 1 gives 64 pixels of k, frame 2 gives 32 valid pixels of 2k (its right half is beyond 80 m):
    # (64·k + 32·2k) / (64 + 32) = 128k / 96 = 4k/3
    np.testing.assert_allclose(prior.depth, 4 * K[:, 0] / 3, rtol=1e-6)
    assert prior.split == "train" and prior.images == 2


def test_floors_equal_hand_computed_values(tmp_path: Path) -> None:
    cfg = _cfg(_write_world(tmp_path))
    constant = evaluate_floor("constant", cfg)
    prior = evaluate_floor("row_prior", cfg)
    # Constant depth, median-scaled: the prediction becomes median(GT) at every pixel.
    #   frame 4: GT 2k, k = 1..32 (64 pixels each): median = 2·(16 + 17)/2 = 33;
    #            abs rel = (1/32) Σ_k |2k − 33| / 2k = (1/32) Σ_k |k − 16.5| / k
    #                    = (1/32) · 16.5 · (2·H16 − H32)   (k ≤ 16: 16.5/k − 1; k ≥ 17: 1 − 16.5/k)
    #                    = 1.393715...;  δ<1.25: 26.4 < 2k < 41.25 -> k = 14..20 -> 7/32
    #   frame 5: GT 10 everywhere -> exact: abs rel 0, δ<1.25 = 1
    frame4 = float(Fraction(33, 2) * (2 * _harmonic(16) - _harmonic(32)) / 32)
    assert frame4 == pytest.approx(1.3937153, abs=1e-6)
    assert constant.per_image["abs_rel"].tolist() == pytest.approx([frame4, 0.0], abs=1e-6)
    assert constant.mean["abs_rel"] == pytest.approx(frame4 / 2, abs=1e-6)
    assert constant.mean["a1"] == pytest.approx((7 / 32 + 1) / 2)
    # Row prior 4k/3, median-scaled per image:
    #   frame 4: GT 2k ∝ the prior -> exact: abs rel 0, δ<1.25 = 1
    #   frame 5: GT 10; prediction 10·k/16.5 (median of k over the image: (16 + 17)/2);
    #            abs rel = (1/32) Σ_k |1 − k/16.5| = (1/32)·2·(0.5 + 1.5 + ... + 15.5)/16.5 = 8/16.5 = 0.4848...;
    #            δ<1.25: 0.8 < k/16.5 < 1.25 -> k = 14..20 -> 7/32
    assert prior.per_image["abs_rel"].tolist() == pytest.approx([0.0, 8 / 16.5], abs=1e-6)
    assert prior.mean["abs_rel"] == pytest.approx(4 / 16.5, abs=1e-6)
    assert prior.mean["a1"] == pytest.approx((1 + 7 / 32) / 2)
    assert prior.settings["floor"] == "row_prior" and prior.settings["prior_split"] == "train"
    assert constant.settings["scaling"] == "median" and prior.settings["crop"] == "none"


def test_floors_are_median_scaled_for_stereo_configs_too(tmp_path: Path) -> None:
    cfg = _cfg(_write_world(tmp_path), mode="MS")
    assert evaluate_floor("row_prior", cfg).mean["abs_rel"] == pytest.approx(4 / 16.5, abs=1e-6)


def test_row_prior_falls_back_to_val_then_gives_up(tmp_path: Path) -> None:
    cfg = _cfg(_write_world(tmp_path / "a", train_gt=False))
    prior = row_prior(cfg)
    # val (frame 3): 2k in the left half only -> 2k per row; still ∝ k, so the test numbers do not change
    np.testing.assert_allclose(prior.depth, 2 * K[:, 0], rtol=1e-6)
    assert prior.split == "val"
    assert evaluate_floor("row_prior", cfg).mean["abs_rel"] == pytest.approx(4 / 16.5, abs=1e-6)
    bare = _cfg(_write_world(tmp_path / "b", train_gt=False, val_gt=False))
    with pytest.raises(FloorUnavailable, match="neither the train nor the val split"):
        row_prior(bare)
    floors = evaluate_floors(bare)  # a report never crashes: the missing floor becomes a note
    assert set(floors.results) == {"constant"} and "row_prior" in floors.notes[0]
    assert floors.metrics()["floor/constant/abs_rel"] == pytest.approx(float(
        Fraction(33, 2) * (2 * _harmonic(16) - _harmonic(32)) / 32) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="constant, row_prior"):
        evaluate_floor("median", cfg)


def test_kitti_without_ground_truth_is_a_note_not_a_crash(tmp_path: Path) -> None:
    cfg = Config().override({"data.dataset": "kitti", "data.path": str(tmp_path), "data.split": "eigen_zhou",
                             "data.test_split": "eigen"})
    floors = evaluate_floors(cfg)
    assert floors.results == {} and len(floors.notes) == 2 and all("not computed" in n for n in floors.notes)


def test_cli_evaluate_floor(tmp_path: Path) -> None:
    from md2bench.cli import app

    root = _write_world(tmp_path)
    runner = CliRunner()
    args = ["evaluate", "--floor", "row_prior", "tiny", "data.path=" + str(root), f"data.height={H}",
            f"data.width={W}"]
    out = runner.invoke(app, args + ["--out", str(tmp_path / "floor.csv")])
    assert out.exit_code == 0, out.output
    assert "[floor: row_prior]" in out.output and f"{4 / 16.5:.4f}" in out.output
    assert (tmp_path / "floor.csv").is_file()
    both = runner.invoke(app, ["evaluate", "--floor", "constant", "--checkpoint", str(tmp_path / "x.pt")])
    assert both.exit_code == 2 and "exactly one of --checkpoint" in both.output
    bad = runner.invoke(app, ["evaluate", "--floor", "median", "tiny", "data.path=" + str(root)])
    assert bad.exit_code == 2 and "constant, row_prior" in bad.output
