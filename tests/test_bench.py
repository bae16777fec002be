"""The throughput benchmark: its JSON interface and that it measures real steps (no timing assertions)."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from md2bench import bench
from md2bench.cli import app
from md2bench.config import load_config
from md2bench.data.schema import validate_batch


def test_benchmark_batch_follows_the_batch_contract() -> None:
    cfg = load_config("tiny", ["data.mode=MS"])
    batch = bench.make_batch(cfg)
    validate_batch(batch, len(cfg.frames), cfg.data.height, cfg.data.width)
    # half the batch carries a colour jitter, as p = 0.5 would
    assert torch.equal(batch["color_aug"][1], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert not torch.equal(batch["color_aug"][0], torch.tensor([1.0, 1.0, 1.0, 0.0]))


def test_train_and_reference_steps_are_measured() -> None:
    cfg = load_config("tiny", ["train.batch_size=2"])
    result = bench.run_benchmark(cfg, steps=2, warmup=1, parts=["train", "reference"])
    assert result["train_images_per_s"] > 0 and result["reference_images_per_s"] > 0
    assert result["speedup_vs_reference"] == result["train_images_per_s"] / result["reference_images_per_s"]
    assert result["run_key"] == cfg.run_key and result["config"]["data.height"] == 64


def test_cli_json_is_the_last_line_with_the_documented_keys(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the loader renders the tiny world into ./.md2bench_cache
    out = CliRunner().invoke(app, ["bench", "tiny", "--steps", "1", "--warmup", "0", "--parts", "train,loader,render",
                                   "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output.strip().splitlines()[-1])
    for key in ("train_images_per_s", "loader_images_per_s", "render_frames_per_s", "device", "config"):
        assert key in result
    assert result["loader_images_per_s"] > 0 and result["render_frames_per_s"] > 0
