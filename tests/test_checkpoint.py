"""Checkpoints: atomic writes, safe loading, rebuilding a model for inference."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from md2bench.checkpoint import CheckpointError, load_checkpoint, load_for_inference, load_labelled, save_checkpoint
from md2bench.config import load_config


def test_round_trip_keeps_tensors_numbers_and_containers(tmp_path: Path) -> None:
    state = {
        "models": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        "epoch": 3,
        "lr": 1e-4,
        "rng": {"python": (3, tuple(range(5)), None), "torch": torch.get_rng_state()},
        "config": {"name": "x", "train": {"scales": [0, 1]}},
    }
    path = save_checkpoint(tmp_path / "sub" / "checkpoint.pt", state)
    back = load_checkpoint(path)
    assert torch.equal(back["models"]["w"], state["models"]["w"])
    assert back["epoch"] == 3 and back["lr"] == 1e-4
    assert back["rng"]["python"] == (3, (0, 1, 2, 3, 4), None)
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    assert back["config"] == state["config"]
    # Only the checkpoint remains in the folder: the temporary file was renamed over it.
    assert sorted(os.listdir(path.parent)) == ["checkpoint.pt"]


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"step": 2, "bad": lambda: None})  # lambdas cannot be pickled
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]  # no temporary file left behind


def test_replace_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 2


def test_load_refuses_code_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    # A pickle of an arbitrary object is refused by weights_only loading.
    torch.save({"obj": Path("x")}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not an md2bench checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def test_load_for_inference_rebuilds_without_weights_file(tmp_path: Path) -> None:
    from md2bench.models import build_models

    # Stored config asks for ImageNet weights from a file that does not exist: inference must not need it.
    cfg = load_config("tiny", ["model.pretrained=imagenet", f"model.weights_path={tmp_path / 'missing.pth'}"])
    torch.manual_seed(1)
    models = build_models(cfg.override({"model.pretrained": "scratch"}))
    save_checkpoint(tmp_path / "checkpoint.pt", {"models": models.state_dict(), "config": cfg.to_dict()})

    torch.manual_seed(2)  # different initialisation: loading must overwrite every weight
    cfg_back, rebuilt = load_for_inference(tmp_path / "checkpoint.pt", "cpu")
    assert cfg_back == cfg
    assert not rebuilt.training and all(not m.training for m in rebuilt.modules())
    original = models.state_dict()
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_load_for_inference_needs_models(tmp_path: Path) -> None:
    cfg = load_config("tiny")
    save_checkpoint(tmp_path / "c.pt", {"config": cfg.to_dict()})
    with pytest.raises(CheckpointError, match="models"):
        load_for_inference(tmp_path / "c.pt")
    save_checkpoint(tmp_path / "d.pt", {"models": {}})
    with pytest.raises(CheckpointError, match="config"):
        load_for_inference(tmp_path / "d.pt")


def test_init_from_copies_every_matching_network_and_refuses_mismatches(tmp_path: Path) -> None:
    """model.init_from: an MS run's depth and pose nets warm-start an M run; other shapes fail with the name."""
    from md2bench.checkpoint import CheckpointError, init_from_checkpoint, save_checkpoint
    from md2bench.config import load_config
    from md2bench.models import build_models

    torch.manual_seed(1)
    ms = build_models(load_config("tiny", ["data.mode=MS", "model.pretrained=scratch"]))
    path = save_checkpoint(tmp_path / "ms.pt", {"models": ms.state_dict(), "step": 7})
    torch.manual_seed(2)
    cfg = load_config("tiny", ["data.mode=M", "model.pretrained=scratch", f"model.init_from={path}"])
    mono = build_models(cfg)
    assert not torch.equal(mono["encoder"].state_dict()["conv1.weight"], ms["encoder"].state_dict()["conv1.weight"])
    loaded = init_from_checkpoint(mono, cfg.model.init_from)
    assert sorted(loaded) == sorted(mono.keys()) == sorted(ms.keys())
    for name, tensor in mono.state_dict().items():
        assert torch.equal(tensor, ms.state_dict()[name]), name
    # the option is part of the run key (a warm-started run is another run); the default keeps old keys
    assert cfg.run_key != load_config("tiny", ["data.mode=M", "model.pretrained=scratch"]).run_key
    # a pose net of another input layout does not fit: the message names the network
    other = build_models(load_config("tiny", ["model.pose_input=all", "model.pretrained=scratch"]))
    with pytest.raises(CheckpointError, match="'pose_encoder' network does not match"):
        init_from_checkpoint(other, path)
    # a checkpoint without any of the networks
    empty = save_checkpoint(tmp_path / "empty.pt", {"models": {"other.weight": torch.zeros(1)}})
    with pytest.raises(CheckpointError, match="holds none of this run's networks"):
        init_from_checkpoint(mono, empty)


def test_load_labelled_loads_each_label_and_rejects_bad_items(tmp_path: Path) -> None:
    from md2bench.models import build_models

    cfg = load_config("tiny")
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_checkpoint(tmp_path / f"s{seed}.pt", {"models": build_models(cfg).state_dict(), "config": cfg.to_dict()})
    loaded = load_labelled([f"b={tmp_path / 's1.pt'}", f"a={tmp_path / 's0.pt'}"])
    assert list(loaded) == ["b", "a"]  # the given order
    a, b = (dict(loaded[k][1].named_parameters()) for k in ("a", "b"))
    assert any(not torch.equal(a[name], b[name]) for name in a)  # two different checkpoints, not one twice
    for bad, match in ((str(tmp_path / "s0.pt"), "LABEL=PATH"), ("a=", "LABEL=PATH"),
                       ("=x", "LABEL=PATH")):
        with pytest.raises(CheckpointError, match=match):
            load_labelled([bad])
    with pytest.raises(CheckpointError, match="given twice"):
        load_labelled([f"a={tmp_path / 's0.pt'}", f"a={tmp_path / 's1.pt'}"])
