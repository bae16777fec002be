"""The typed config: loading, overrides, validation, flat params and run_key."""

from __future__ import annotations

import dataclasses

import pytest

from md2bench.config import (
    Config,
    ConfigError,
    KEY_DEFAULTS,
    PRESETS,
    flat_to_nested,
    load_config,
    parse_overrides,
    valid_keys,
)


def test_defaults_are_the_full_monodepth2_method() -> None:
    cfg = Config()
    assert cfg.loss.reprojection == "min" and cfg.loss.automask and cfg.loss.multiscale == "full_res"
    assert cfg.loss.ssim and cfg.loss.ssim_weight == 0.85 and cfg.loss.smoothness == 1e-3
    assert cfg.model.pretrained == "imagenet" and cfg.model.num_layers == 18
    assert (cfg.model.min_depth, cfg.model.max_depth) == (0.1, 100.0)
    assert (cfg.data.height, cfg.data.width) == (192, 640)
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.epochs, cfg.train.lr_step_epoch) == (12, 1e-4, 20, 15)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads(name: str) -> None:
    cfg = load_config(name)
    assert isinstance(cfg, Config)


def test_paper_preset_is_the_papers_schedule() -> None:
    cfg = load_config("paper")
    assert cfg.data.dataset == "kitti" and cfg.data.split == "eigen_zhou" and cfg.data.test_split == "eigen"
    assert (cfg.data.width, cfg.data.height, cfg.train.batch_size, cfg.train.epochs) == (640, 192, 12, 20)
    assert cfg.train.scheduler == "paper" and cfg.train.lr_step_epoch == 15


@pytest.mark.parametrize(
    ("mode", "frames", "sources", "pose"),
    [
        ("M", (0, -1, 1), (-1, 1), True),
        ("S", (0, "s"), ("s",), False),
        ("MS", (0, -1, 1, "s"), (-1, 1, "s"), True),
    ],
)
def test_training_mode_sets_frames(mode: str, frames: tuple, sources: tuple, pose: bool) -> None:
    cfg = Config().override({"data.mode": mode})
    assert cfg.frames == frames
    assert cfg.source_ids == sources
    assert cfg.num_sources == len(sources)
    assert cfg.needs_pose_net is pose
    assert cfg.use_stereo is ("S" in mode)


def test_single_scale_mode_uses_only_scale_zero() -> None:
    assert Config().override({"loss.multiscale": "single"}).loss_scales == (0,)
    assert Config().override({"loss.multiscale": "per_scale"}).loss_scales == (0, 1, 2, 3)


def test_string_overrides_parse_toml_literals() -> None:
    parsed = parse_overrides(["loss.automask=false", "train.lr=1e-5", "data.frame_ids=[0, -1, 1]", "name=row a"])
    assert parsed == {"loss.automask": False, "train.lr": 1e-5, "data.frame_ids": [0, -1, 1], "name": "row a"}
    cfg = load_config("tiny", ["loss.automask=false", "train.lr=1e-5"])
    assert cfg.loss.automask is False and cfg.train.lr == 1e-5


def test_unknown_key_names_the_nearest_valid_key() -> None:
    with pytest.raises(ConfigError, match="loss.automask"):
        load_config("tiny", ["loss.automasking=false"])
    with pytest.raises(ConfigError, match="unknown key"):
        Config.from_dict({"optim": {"lr": 1}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"loss.reprojection": "median"}, "'min', 'avg'"),
        ({"loss.multiscale": "v1"}, "'full_res', 'per_scale', 'single'"),
        ({"loss.smoothness_scales": "coarse"}, "'all', 'finest'"),
        ({"loss.coarse_weight": -0.5}, "loss.coarse_weight must be >= 0"),
        ({"model.pose_net": "resnet"}, "'separate', 'shared', 'posecnn'"),
        ({"data.mode": "SM"}, "'M', 'S', 'MS'"),
        ({"data.height": 100}, "multiples of 32"),
        ({"loss.predictive_mask": True}, "loss.automask = false"),
        ({"train.amp": "fp16"}, "'bf16', 'off'"),
        ({"model.num_layers": 34}, "18, 50"),
        ({"loss.automask": "maybe"}, "true or false"),
    ],
)
def test_invalid_values_fail_naming_the_choices(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Config().override(override)


def test_predictive_mask_with_automask_off_is_valid() -> None:
    cfg = Config().override({"loss.automask": False, "loss.predictive_mask": True})
    assert cfg.loss.predictive_mask and not cfg.loss.automask


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.loss.automask = False  # type: ignore[misc]


def test_flat_params_are_dotted_and_round_trip() -> None:
    cfg = load_config("tiny", ["loss.reprojection=avg"])
    flat = cfg.flat()
    assert flat["loss.reprojection"] == "avg" and flat["data.height"] == 64 and flat["name"] == "tiny"
    assert set(flat) == set(valid_keys())
    rebuilt = Config.from_dict(flat_to_nested(flat))
    assert rebuilt == cfg


def test_toml_round_trip(tmp_path) -> None:
    cfg = load_config("tiny", ["data.mode=MS", "model.scales=[0, 1]"])
    path = tmp_path / "c.toml"
    cfg.save(path)
    assert load_config(path) == cfg


def test_run_key_tracks_semantic_fields_only() -> None:
    cfg = load_config("tiny")
    assert cfg.run_key == load_config("tiny").run_key  # stable across loads
    assert len(cfg.run_key) == 12
    # Fields that change results change the key ...
    for change in ({"loss.automask": False}, {"train.seed": 1}, {"data.height": 96}, {"train.lr": 2e-4}):
        assert cfg.override(change).run_key != cfg.run_key, change
    # ... names, paths, worker counts and logging cadence do not.
    for same in ({"name": "other"}, {"data.num_workers": 7}, {"train.out_dir": "x"}, {"train.log_every": 9}):
        assert cfg.override(same).run_key == cfg.run_key, same


# Run keys handed out by earlier versions (commit f89b1e8): finished runs are found (and skipped) by these keys,
# so adding an option at its old implicit value must not change them.
EARLIER_KEYS = {"paper": "2a3f4a1eca86", "synth": "a4e561886f32", "tiny": "53ce646adbad"}


@pytest.mark.parametrize("name", sorted(EARLIER_KEYS))
def test_run_keys_survive_options_added_later(name: str) -> None:
    cfg = load_config(name)
    assert cfg.run_key == EARLIER_KEYS[name]
    # the later options: compile_loss computes the same loss (not in the key), cpu_amp does not (in the key)
    assert cfg.override({"train.compile_loss": True}).run_key == cfg.run_key
    assert cfg.override({"train.cpu_amp": True}).run_key != cfg.run_key


def test_missing_config_file_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_config("no/such/file.toml")


def test_at_step_switches_auto_masking_on_after_the_warmup() -> None:
    cfg = load_config("tiny", ["loss.automask_warmup_steps=3"])
    assert [cfg.at_step(k).loss.automask for k in (1, 2, 3, 4, 100)] == [False, False, False, True, True]
    assert cfg.at_step(4) is cfg  # outside the warm-up the config itself, unchanged
    assert cfg.at_step(1).override({"loss.automask": True}) == cfg.override({"loss.automask": True})
    plain = load_config("tiny")  # the default (0) and a config without auto-masking never change
    assert plain.at_step(1) is plain
    no_mask = load_config("tiny", ["loss.automask=false", "loss.automask_warmup_steps=5"])
    assert no_mask.at_step(1) is no_mask
    with pytest.raises(ConfigError, match="automask_warmup_steps must be >= 0"):
        load_config("tiny", ["loss.automask_warmup_steps=-1"])
    # The option was added later: at its default it leaves the run key of every existing config unchanged.
    assert "loss.automask_warmup_steps" in KEY_DEFAULTS
    assert cfg.run_key != plain.run_key and load_config("tiny", ["loss.automask_warmup_steps=0"]).run_key == plain.run_key


def test_smoothness_scales_keeps_existing_run_keys_at_its_default() -> None:
    """``loss.smoothness_scales`` was added after runs were keyed: "all" leaves every key as it was."""
    plain = load_config("tiny")
    assert "loss.smoothness_scales" in KEY_DEFAULTS
    assert load_config("tiny", ["loss.smoothness_scales=all"]).run_key == plain.run_key
    assert load_config("tiny", ["loss.smoothness_scales=finest"]).run_key != plain.run_key


def test_coarse_weight_keeps_existing_run_keys_at_its_default() -> None:
    """``loss.coarse_weight`` was added after runs were keyed: 1 (as a float or an int) leaves every key as it was."""
    plain = load_config("tiny")
    assert "loss.coarse_weight" in KEY_DEFAULTS
    assert load_config("tiny", ["loss.coarse_weight=1.0"]).run_key == plain.run_key
    assert load_config("tiny", ["loss.coarse_weight=1"]).run_key == plain.run_key
    assert load_config("tiny", ["loss.coarse_weight=0.25"]).run_key != plain.run_key
