"""The evaluation pipeline on a tiny synthetic-layout world with a prediction stand-in of known output.

The stand-in (test only) reads depth from the image: red channel = 4 × depth (metres), and doubles the depth
where the green channel is set (the "moving" pixels), so every metric below can be computed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from md2bench.config import Config
from md2bench.evaluate import evaluate_depth, evaluate_pose

DATE = "2000_01_01"
DRIVE = f"{DATE}/{DATE}_drive_0000_sync"
H, W = 32, 64
GT_DEPTH = 10.0


def _write_regions(root: Path, masks: dict[int, dict[str, np.ndarray]]) -> None:
    """Region mask PNGs (255 = in region) of the left camera: frame -> region -> H×W bool; absent = empty."""
    from md2bench.regions import REGION_NAMES

    for frame, regions in masks.items():
        for name in REGION_NAMES:
            folder = root / DRIVE / "region_mask" / name / "image_02"
            folder.mkdir(parents=True, exist_ok=True)
            mask = regions.get(name, np.zeros((H, W), bool))
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{frame:010d}.png")


def _write_world(root: Path, frames: int = 2, baseline: float | None = None, H: int = H, W: int = W) -> Path:
    drive = root / DRIVE
    for sub in ("image_02/data", "image_03/data", "proj_depth/groundtruth/image_02", "motion_mask/image_02"):
        (drive / sub).mkdir(parents=True, exist_ok=True)
    for f in range(frames):
        name = f"{f:010d}.png"
        moving = np.zeros((H, W), dtype=bool)
        if f == 0:
            moving[: H // 2, : W // 2] = True  # a quarter of the image moves in frame 0; frame 1 is static
        img = np.zeros((H, W, 3), dtype=np.uint8)
        img[..., 0] = int(4 * GT_DEPTH)  # red = 4 × depth
        img[..., 1] = np.where(moving, 255, 0)
        Image.fromarray(img).save(drive / "image_02" / "data" / name)
        Image.fromarray(img).save(drive / "image_03" / "data" / name)
        Image.fromarray(np.full((H, W), int(GT_DEPTH * 256), dtype=np.uint16)).save(
            drive / "proj_depth" / "groundtruth" / "image_02" / name)
        Image.fromarray(moving.astype(np.uint8) * 255).save(drive / "motion_mask" / "image_02" / name)
    # camera-to-world: 1 m forward per frame
    poses = [np.hstack([np.eye(3), [[0.0], [0.0], [float(f)]]]).ravel() for f in range(frames)]
    np.savetxt(drive / "poses.txt", np.stack(poses))
    split = root / "splits" / "synth"
    split.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{DRIVE} {f} l\n" for f in range(frames))
    for name in ("train", "val", "test"):
        (split / f"{name}_files.txt").write_text(lines)
    if baseline is not None:
        (root / "world.json").write_text(json.dumps({"baseline": baseline}))
    return root


def _cfg(root: Path, mode: str = "M", height: int = H, width: int = W) -> Config:
    return Config().override({"data.dataset": "synthetic", "data.path": str(root), "data.split": "synth",
                              "data.test_split": "synth", "data.height": height, "data.width": width,
                              "data.mode": mode})


def _stand_in(factor: float = 1.0):
    def predict(models: object, images: torch.Tensor, cfg: Config) -> torch.Tensor:
        depth = images[:, 0:1] * 255.0 / 4.0
        depth = torch.where(images[:, 1:2] > 0.5, 2.0 * depth, depth) * factor
        return 1.0 / depth
    return predict


def test_exact_prediction_scores_zero(tmp_path: Path) -> None:
    root = _write_world(tmp_path)
    exact = lambda models, images, cfg: 1.0 / (images[:, 0:1] * 255.0 / 4.0)  # noqa: E731
    result = evaluate_depth(None, _cfg(root), predict=exact, progress=False)
    assert result.mean["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert result.mean["a1"] == 1.0
    assert result.ratio_mean == pytest.approx(1.0)
    assert result.settings["crop"] == "none" and result.settings["scaling"] == "median"


def test_crop_override_scores_only_the_garg_region(tmp_path: Path) -> None:
    """A prediction exact inside the Garg crop and twice too far in the top 10 rows (all outside the crop, which
    starts at row int(0.408 × 32) = 13): with ``crop="garg"`` it scores 0; with the synthetic split's own
    protocol (no crop) the top rows count."""
    root = _write_world(tmp_path)

    def top_wrong(models: object, images: torch.Tensor, cfg: Config) -> torch.Tensor:
        depth = images[:, 0:1] * 255.0 / 4.0
        depth[..., :10, :] *= 2.0
        return 1.0 / depth

    garg = evaluate_depth(None, _cfg(root), predict=top_wrong, progress=False, crop="garg")
    assert garg.mean["abs_rel"] == pytest.approx(0.0, abs=1e-6) and garg.settings["crop"] == "garg"
    full = evaluate_depth(None, _cfg(root), predict=top_wrong, progress=False)
    # no crop: 10 of 32 rows at 20 m, the median stays 10 m (ratio 1): abs rel = 10/32 · |20 − 10|/10
    assert full.mean["abs_rel"] == pytest.approx(10 / 32) and full.settings["crop"] == "none"
    with pytest.raises(ValueError, match="crop must be"):
        evaluate_depth(None, _cfg(root), predict=top_wrong, progress=False, crop="eigen")


def test_moving_static_split_and_median_ratio(tmp_path: Path) -> None:
    root = _write_world(tmp_path)
    # everything predicted twice as far: median scaling (ratio 0.5) removes it
    result = evaluate_depth(None, _cfg(root), predict=_stand_in(2.0), progress=False, batch_size=1)
    # frame 0: 3/4 of the pixels at 20 (→ 10 after ×0.5), moving quarter at 40 (→ 20): median ratio 10/20 = 0.5,
    #   abs_rel = ¼·|10 − 20|/10 = 0.25, moving/abs_rel = 1, static/abs_rel = 0
    # frame 1: no moving pixels, exact after scaling: abs_rel 0, moving/* NaN (skipped in the mean)
    assert result.per_image["abs_rel"].tolist() == pytest.approx([0.25, 0.0])
    assert result.mean["abs_rel"] == pytest.approx(0.125)
    assert result.mean["moving/abs_rel"] == pytest.approx(1.0)
    assert result.mean["static/abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert result.ratio_mean == pytest.approx(0.5) and result.ratio_std == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(result.per_image["moving/abs_rel"][1])
    # post-processing with a flip-equivariant prediction changes nothing
    pp = evaluate_depth(None, _cfg(root), predict=_stand_in(2.0), progress=False, post_process=True)
    assert pp.mean["abs_rel"] == pytest.approx(0.125) and pp.settings["post_process"] is True
    csv = result.save_csv(tmp_path / "eval" / "per_image.csv")
    assert csv.read_text().splitlines()[0].startswith("index,folder,frame,side,abs_rel")


def test_region_metrics_on_hand_made_masks(tmp_path: Path) -> None:
    root = _write_world(tmp_path)
    quarter = np.zeros((H, W), bool)
    quarter[: H // 2, : W // 2] = True  # = frame 0's moving quarter
    left, bottom = np.zeros((H, W), bool), np.zeros((H, W), bool)
    left[:, : W // 2] = True
    bottom[H // 2:] = True
    _write_regions(root, {0: {"occluded": quarter, "low_texture": bottom}, 1: {"occluded": left}})
    result = evaluate_depth(None, _cfg(root), predict=_stand_in(2.0), progress=False, batch_size=1)
    # After median scaling (as above) frame 0 is exact except the moving quarter (abs rel |10 − 20|/10 = 1);
    # frame 1 is exact everywhere.
    # occluded: frame 0 = the moving quarter -> 1.0; frame 1 = the left half -> 0.0; mean 0.5
    assert result.per_image["occluded/abs_rel"].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert result.mean["occluded/abs_rel"] == pytest.approx(0.5)
    assert result.per_image["occluded/valid_px"].tolist() == [H * W / 4, H * W / 2]
    # δ < 1.25 on the quarter: every pixel off by 2x -> 0; frame 1 -> 1; mean 0.5
    assert result.mean["occluded/a1"] == pytest.approx(0.5)
    # low_texture: frame 0's static bottom half -> 0; frame 1 has none (NaN, skipped by the nanmean)
    assert result.mean["low_texture/abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(result.per_image["low_texture/abs_rel"][1])
    # comoving: no pixel anywhere -> NaN (not zero)
    assert np.isnan(result.mean["comoving/abs_rel"])
    assert result.settings["regions"] == "occluded, comoving, low_texture"
    # a world without region masks gives no region metrics (and no error)
    plain = evaluate_depth(None, _cfg(_write_world(tmp_path / "plain")), predict=_stand_in(2.0), progress=False)
    assert not any(k.split("/")[0] in ("occluded", "comoving", "low_texture") for k in plain.mean)
    assert plain.settings["regions"] == "none"


def test_old_rendered_world_warns_what_to_run(tmp_path: Path) -> None:
    root = _write_world(tmp_path)
    (root / "world.json").write_text(json.dumps({"format": "md2bench-synth/1", "baseline": 0.54}))
    with pytest.warns(UserWarning, match="no region masks.*md2bench data synth --out"):
        evaluate_depth(None, _cfg(root), predict=_stand_in(), progress=False)


def test_median_scaling_can_be_forced_for_any_mode(tmp_path: Path) -> None:
    root = _write_world(tmp_path, baseline=0.54)
    # an MS config would use the fixed ×5.4; scaling="median" (the floors) scales per image instead
    result = evaluate_depth(None, _cfg(root, "MS"), predict=_stand_in(3.0), progress=False, scaling="median")
    assert result.settings["scaling"] == "median" and result.ratio_mean == pytest.approx(1 / 3)
    assert result.per_image["abs_rel"].tolist() == pytest.approx([0.25, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="scaling must be"):
        evaluate_depth(None, _cfg(root), predict=_stand_in(), progress=False, scaling="stereo")


def test_stereo_model_uses_fixed_factor(tmp_path: Path) -> None:
    root = _write_world(tmp_path, baseline=0.54)
    result = evaluate_depth(None, _cfg(root, "MS"), predict=_stand_in(1.0 / 5.4), progress=False)
    # no median scaling; ×(0.54 / 0.1) = 5.4 undoes the stand-in's 1/5.4: frame 1 exact, frame 0 as above
    assert result.settings["scaling"] == "stereo x5.4"
    assert result.per_image["ratio"].tolist() == [1.0, 1.0]
    assert result.per_image["abs_rel"].tolist() == pytest.approx([0.25, 0.0], abs=1e-6)  # float32 prediction
    # the diagnostic ratio: median(GT)/median(pred·5.4) = 10/10 in both frames
    assert result.ratio_mean == pytest.approx(1.0)


def test_models_mode_restored(tmp_path: Path) -> None:
    root = _write_world(tmp_path)
    models = torch.nn.ModuleDict({"encoder": torch.nn.Identity()})
    models.train()
    seen: list[bool] = []

    def predict(m: torch.nn.ModuleDict, images: torch.Tensor, cfg: Config) -> torch.Tensor:
        seen.append(m.training)
        return _stand_in()(m, images, cfg)

    evaluate_depth(models, _cfg(root), predict=predict, progress=False)
    assert seen == [False] and models.training


def test_kitti_without_gt_says_prepare(tmp_path: Path) -> None:
    cfg = Config().override({"data.dataset": "kitti", "data.path": str(tmp_path), "data.split": "eigen_zhou",
                             "data.test_split": "eigen"})
    with pytest.raises(FileNotFoundError, match="prepare-kitti"):
        evaluate_depth(None, cfg, predict=_stand_in(), progress=False)


def test_pose_ate_on_synthetic_drive(tmp_path: Path) -> None:
    root = _write_world(tmp_path, frames=4)
    gt_step = np.eye(4)
    gt_step[2, 3] = -1.0  # 1 m forward per frame → T_{t+1,t} translates z by −1

    def exact(models: object, batch: dict[str, torch.Tensor], cfg: Config, device: torch.device) -> torch.Tensor:
        assert cfg.frames == (0, 1)  # pairs: (t, t+1)
        return torch.from_numpy(np.stack([gt_step] * batch["images"].shape[0]))

    result = evaluate_pose(None, _cfg(root), predict=exact, progress=False)
    name = DRIVE.split("/")[-1]
    assert set(result.ate) == {name, "all"}
    assert result.ate[name][0] == pytest.approx(0.0, abs=1e-12)

    def sideways(models: object, batch: dict[str, torch.Tensor], cfg: Config, device: torch.device) -> torch.Tensor:
        step = np.eye(4)
        step[0, 3] = 1.0
        return torch.from_numpy(np.stack([step] * batch["images"].shape[0]))

    result = evaluate_pose(None, _cfg(root), predict=sideways, progress=False)
    # 3 steps → snippets of 4, 3, 2 positions; orthogonal motion → scale 0 → error = |gt| / N:
    # GT positions along z: 0, 1, 2, 3 → sqrt(0+1+4+9)/4; 0, 1, 2 → sqrt(5)/3; 0, 1 → 1/2
    expected = np.mean([np.sqrt(14) / 4, np.sqrt(5) / 3, 0.5])
    assert result.ate[name][0] == pytest.approx(expected)


def test_pose_needs_pose_net(tmp_path: Path) -> None:
    root = _write_world(tmp_path)
    with pytest.raises(ValueError, match="pose"):
        evaluate_pose(None, _cfg(root, "S"), progress=False)


@pytest.mark.parametrize("pose_net", ["separate", "posecnn"])
def test_real_networks_run_through_depth_and_pose(tmp_path: Path, pose_net: str) -> None:
    from md2bench.models import build_models

    root = _write_world(tmp_path, frames=3, H=64, W=128)  # the decoder's reflection padding needs ≥ 2×4 at 1/32
    cfg = _cfg(root, height=64, width=128).override({"model.pretrained": "scratch", "model.pose_net": pose_net})
    torch.manual_seed(0)
    models = build_models(cfg)
    depth = evaluate_depth(models, cfg, progress=False)
    assert np.isfinite(depth.mean["abs_rel"]) and depth.settings["images"] == 3
    pose = evaluate_pose(models, cfg, progress=False)
    mean, std = pose.ate[DRIVE.split("/")[-1]]
    assert np.isfinite(mean) and mean >= 0.0


def test_region_metric_names_agree_with_the_metrics_module() -> None:
    from md2bench import metrics, regions

    names = regions.metric_names()
    assert names[:7] == metrics.METRIC_NAMES and "occluded/abs_rel" in names and "static/a3" in names
    assert len(names) == 7 * (1 + len(regions.SUBSET_NAMES))
    assert regions.lower_is_better("comoving/rmse") and not regions.lower_is_better("low_texture/a1")
