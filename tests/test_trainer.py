"""The trainer: schedule, data order, exact resume, divergence handling, signals, MLflow, every ablation flag.

Small on purpose: the ``tiny`` preset (64×160 images, batch 2, CPU) on two synthetic worlds rendered once per
session: the preset's world (3 drives × 12 frames: 18 train, 2 val, 10 test items) for the learning test, and
a mini world (3 drives × 5 frames: 5 train items = 2 steps per epoch, 1 val, 3 test) for everything that needs
epoch boundaries or many short runs.
"""

from __future__ import annotations

import fcntl
import math
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from md2bench.checkpoint import load_checkpoint, load_for_inference
from md2bench.config import Config, load_config
from md2bench.train import rundir
from md2bench.train.device import autocast_for, make_optimizer, prepare_models
from md2bench.train.loop import fit
from md2bench.train.state import (
    EpochSampler,
    capture_rng_state,
    epoch_learning_rates,
    epoch_permutation,
    restore_rng_state,
    seed_everything,
)
from md2bench.train.step import nonfinite_terms, train_step
from md2bench.train.validate import validate


# ============================================================================================ fixtures
@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One intra-op thread: on a small shared CPU, OpenMP over-subscription makes a step ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from md2bench.data.synthetic import render_world

    base = tmp_path_factory.mktemp("worlds")
    tiny = render_world(base / "tiny", preset="tiny", progress=False).root
    mini = render_world(base / "mini", preset="tiny", sequences=3, frames=5, progress=False).root
    return {"tiny": Path(tiny), "mini": Path(mini)}


def tiny_cfg(world: Path, out: Path, *overrides: str) -> Config:
    return load_config("tiny", [f"data.path={world}", f"train.out_dir={out}", *overrides])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / rundir.CHECKPOINT_NAME)["models"]


# ============================================================================================ pure pieces
def test_paper_schedule_decays_after_exactly_lr_step_epoch() -> None:
    cfg = load_config("paper")  # 20 epochs, step 15, gamma 0.1, scheduler "paper"
    rates = epoch_learning_rates(cfg)
    # Epochs 0..14 at 1e-4, 15..19 at 1e-4 * 0.1 = 1e-5 (the paper's 15 + 5).
    assert rates == pytest.approx([1e-4] * 15 + [1e-5] * 5)


def test_reference_schedule_decays_one_epoch_early() -> None:
    cfg = load_config("paper", ["train.scheduler=reference"])
    rates = epoch_learning_rates(cfg)
    # StepLR stepped before each epoch: its counter reaches 15 at the start of epoch 14 -> 14 + 6.
    assert rates == pytest.approx([1e-4] * 14 + [1e-5] * 6)


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    a = epoch_permutation(seed=0, epoch=3, n=50)
    assert torch.equal(a, epoch_permutation(seed=0, epoch=3, n=50))
    assert sorted(a.tolist()) == list(range(50))  # a permutation
    assert not torch.equal(a, epoch_permutation(seed=0, epoch=4, n=50))
    assert not torch.equal(a, epoch_permutation(seed=1, epoch=3, n=50))


def test_sampler_drops_the_last_partial_batch_and_skips_done_batches() -> None:
    sampler = EpochSampler(num_items=7, batch_size=2, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    order = epoch_permutation(5, 2, 7).tolist()
    # 7 items, batch 2 -> 3 full batches = 6 items; the 7th is dropped (drop_last, as the reference).
    assert full == [(2, i) for i in order[:6]]
    assert len(sampler) == 6 and sampler.batches_per_epoch == 3
    sampler.set_epoch(2, skip_batches=2)  # resuming after 2 batches: only the third remains
    assert list(sampler) == full[4:] and len(sampler) == 2


def test_rng_states_round_trip() -> None:
    seed_everything(3)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    seed_everything(99)  # move every generator elsewhere
    restore_rng_state(state)
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def test_nonfinite_terms_names_loss_terms_first() -> None:
    diagnostics = {
        "automask": torch.tensor(float("nan")),
        "loss/smoothness/s0": torch.tensor(0.1),
        "loss/photometric/s1": torch.tensor(float("inf")),
    }
    bad = nonfinite_terms(diagnostics)
    assert list(bad) == ["loss/photometric/s1", "automask"]
    assert math.isinf(bad["loss/photometric/s1"]) and math.isnan(bad["automask"])


def test_prepare_models_uses_channels_last_on_cpu_and_keeps_the_weights() -> None:
    from md2bench.models import build_models

    cfg = load_config("tiny")
    torch.manual_seed(0)
    plain = build_models(cfg)
    torch.manual_seed(0)
    prepared = prepare_models(build_models(cfg), cfg, torch.device("cpu"))
    conv = next(p for p in prepared.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for (key, a), b in zip(plain.state_dict().items(), prepared.state_dict().values()):
        assert torch.equal(a, b), key
    off = prepare_models(build_models(cfg), cfg.override({"train.channels_last": False}), torch.device("cpu"))
    assert all(p.is_contiguous() for p in off.parameters())


def test_optimizer_is_fused_adam_with_the_configured_rate() -> None:
    from md2bench.models import build_models

    cfg = load_config("tiny", ["train.lr=3e-4"])
    optimizer = make_optimizer(build_models(cfg), cfg)
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["fused"] is True and optimizer.param_groups[0]["lr"] == 3e-4


@pytest.mark.parametrize("cpu_amp", [False, True])
def test_cpu_amp_runs_the_networks_in_bf16_and_the_loss_in_fp32(cpu_amp: bool) -> None:
    from md2bench import method
    from md2bench.bench import make_batch
    from md2bench.models import build_models

    cfg = load_config("tiny", [f"train.cpu_amp={str(cpu_amp).lower()}"])
    device = torch.device("cpu")
    torch.manual_seed(0)
    models = prepare_models(build_models(cfg), cfg, device)
    optimizer = make_optimizer(models, cfg)
    batch = make_batch(cfg)
    with autocast_for(device, cfg), torch.no_grad():
        inputs = method.prepare_inputs(batch, cfg, device)
        outputs = method.forward(models, inputs, cfg)
    assert outputs.disp[0].dtype == (torch.bfloat16 if cpu_amp else torch.float32)
    before = [p.detach().clone() for p in models.parameters()]
    total, diagnostics = train_step(models, optimizer, batch, cfg, device, step=1)
    assert total.dtype == torch.float32 and math.isfinite(total.item())
    assert any(not torch.equal(a, p) for a, p in zip(before, models.parameters()))  # the step moved the weights
    assert all(p.dtype == torch.float32 for p in models.parameters())  # master weights stay fp32


def test_automask_warmup_runs_the_first_steps_without_auto_masking() -> None:
    """``loss.automask_warmup_steps = 2``: steps 1-2 run the loss with auto-masking off (the same total as the
    no-auto-masking config on the same weights and batch, no ``automask`` diagnostic), step 3 with it on."""
    from md2bench import method
    from md2bench.bench import make_batch
    from md2bench.models import build_models

    cfg = load_config("tiny", ["loss.automask_warmup_steps=2", "data.color_aug=false"])
    off = cfg.override(["loss.automask=false", "loss.automask_warmup_steps=0"])
    device = torch.device("cpu")
    torch.manual_seed(0)
    models = prepare_models(build_models(cfg), cfg, device)
    optimizer = make_optimizer(models, cfg)
    batch = make_batch(cfg)
    for step in (1, 2, 3):
        models.train()
        with torch.no_grad():
            torch.manual_seed(step)
            expected_off, _, _ = method.training_loss(models, batch, off, device)
            torch.manual_seed(step)
            expected_on, _, _ = method.training_loss(models, batch, cfg, device)
        torch.manual_seed(step)
        total, diagnostics = train_step(models, optimizer, batch, cfg, device, step=step)
        if step <= 2:
            assert "automask" not in diagnostics and total.item() == pytest.approx(expected_off.item(), rel=1e-6)
            assert expected_on.item() != pytest.approx(expected_off.item(), rel=1e-6)  # the two configs differ
        else:
            assert "automask" in diagnostics and total.item() == pytest.approx(expected_on.item(), rel=1e-6)


def test_run_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    cfg = load_config("tiny", [f"train.out_dir={tmp_path}"])
    run_dir = tmp_path / cfg.run_key
    run_dir.mkdir()
    with open(run_dir / rundir.LOCK_NAME, "a") as other:  # "another process" (flock is per open file)
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(rundir.RunBusyError, match="another process"):
            fit(cfg, progress=False)
        from md2bench.cli import app

        result = CliRunner().invoke(app, ["train", "tiny", f"train.out_dir={tmp_path}", "--no-progress",
                                          "--tracking-uri", f"sqlite:///{tmp_path}/mlruns.db"])
        assert result.exit_code == rundir.EXIT_BUSY, result.output


# ============================================================================================ end to end
@pytest.mark.slow
def test_short_training_learns_and_is_tracked(worlds: dict[str, Path], tmp_path: Path) -> None:
    """45 steps on the tiny world lower the photometric loss and abs_rel; MLflow holds the whole run."""
    from torch.utils.data import DataLoader

    from md2bench.data.kitti import build_dataset
    from md2bench.evaluate import evaluate_depth
    from md2bench.models import build_models
    from md2bench.tracking import MLflowTracker

    # 9 steps per epoch (18 items, batch 2): 5 epochs = 45 steps. From scratch, the untrained decoder gives
    # sigmoid ~0.5, i.e. depth 1/(0.01 + 9.99*0.5) ~ 0.2 with the default range, where the photometric loss is
    # nearly flat and 45 steps do not move abs_rel reliably; min_depth = 1 starts at 1/(0.01 + 0.99*0.5) ~ 2,
    # inside the scene's range (GT / 5.4 ~ 1..15). No augmentation: less noise in so few steps.
    cfg = tiny_cfg(worlds["tiny"], tmp_path, "train.epochs=5", "train.max_steps=45", "model.min_depth=1",
                   "data.color_aug=false", "data.flip=false", "train.log_every=5", "train.image_log=true",
                   "name=tiny-learn")
    # The untrained network, as fit builds it (same seed, same initialisation).
    seed_everything(cfg.train.seed)
    untrained = build_models(cfg)
    val_loader = DataLoader(build_dataset(cfg, "val"), batch_size=cfg.train.batch_size)
    before = validate(untrained, val_loader, cfg, torch.device("cpu"), max_batches=1).metrics
    test_before = evaluate_depth(untrained, cfg, progress=False).mean["abs_rel"]

    tracker = MLflowTracker(f"sqlite:///{tmp_path}/mlruns.db")
    result = fit(cfg, tracker, run_name="tiny-learn/seed0", tags={"md2bench.grid": "unit"}, progress=False)
    assert result.status == "FINISHED" and result.steps == 45, result.message
    after = result.val_history[-1]
    assert after["val/loss/photometric/s0"] < before["val/loss/photometric/s0"]
    assert after["val/abs_rel"] < before["val/abs_rel"]
    assert result.test_metrics["test/abs_rel"] < test_before
    # The learned pose net against the world's exact poses (validation's pose diagnostics): the direction of the
    # predicted camera motion moves towards the truth (measured: cosine -0.28 untrained -> 0.11 after 45 steps).
    for k in ("val/pose/t_cos", "val/pose/rot_deg", "val/pose/ate"):
        assert math.isfinite(before[k]) and math.isfinite(after[k]), k
    assert -1.0 <= before["val/pose/t_cos"] < after["val/pose/t_cos"] <= 1.0

    # The run folder.
    run_dir = tmp_path / cfg.run_key
    assert result.run_dir == run_dir
    for name in ("checkpoint.pt", "config.toml", "train.log", "DONE", "eval/per_image.csv", "images/epoch_4.png"):
        assert (run_dir / name).is_file(), name
    from md2bench.train.rundir import read_progress

    final = read_progress(run_dir)  # the structured progress the orchestrator's grid bar reads
    assert final is not None and (final.step, final.total, final.phase) == (45, 45, "done")
    assert load_config(run_dir / "config.toml").run_key == cfg.run_key

    # The SQLite store, read back through MLflow's own client.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-learn/seed0"
    assert run.data.params["loss.automask"] == "True" and run.data.params["train.max_steps"] == "45"
    assert len(run.data.params) == len(cfg.flat())
    tags = run.data.tags
    assert tags["md2bench.row"] == "tiny-learn" and tags["md2bench.grid"] == "unit"
    assert tags["md2bench.run_key"] == cfg.run_key and tags["md2bench.seed"] == "0"
    assert tags["md2bench.dataset"] == "synthetic" and tags["md2bench.eval.scaling"] == "median"
    assert {"md2bench.commit", "md2bench.device", "md2bench.split", "md2bench.test_split", "md2bench.eval.crop",
            "md2bench.torch"} <= set(tags)
    # the bytes trained on: the synthetic world's content fingerprint (same options can render differently)
    from md2bench.data.synthetic import content_fingerprint

    assert tags["md2bench.data.fingerprint"] == str(content_fingerprint(worlds["tiny"])["sha256"])[:16]
    loss_steps = [m.step for m in client.get_metric_history(result.run_id, "train/loss")]
    assert loss_steps == list(range(5, 46, 5))  # every log_every = 5 steps
    for key in ("train/lr", "train/images_per_s", "train/loss/photometric/s0", "val/loss", "val/abs_rel"):
        assert client.get_metric_history(result.run_id, key), key
    waits = [m.value for m in client.get_metric_history(result.run_id, "train/data_wait_fraction")]
    assert len(waits) == len(loss_steps) and all(0.0 <= w <= 1.0 for w in waits)
    # the share of wall time outside the optimiser step includes the time blocked on the loader
    outside = [m.value for m in client.get_metric_history(result.run_id, "train/outside_step_fraction")]
    assert len(outside) == len(loss_steps) and all(0.0 <= o <= 1.0 for o in outside)
    assert all(o >= w - 1e-9 for o, w in zip(outside, waits))
    metrics = run.data.metrics
    for name in ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3", "ratio_mean", "ratio_std"):
        assert metrics[f"test/{name}"] == pytest.approx(result.test_metrics[f"test/{name}"])
    assert "test/moving/abs_rel" in metrics or "test/static/abs_rel" in metrics
    # the region metrics of the synthetic world, logged like moving/* (the tiny world's test drive has a follower)
    for region in ("occluded", "comoving", "low_texture"):
        for name in ("abs_rel", "a1"):
            assert metrics[f"test/{region}/{name}"] == pytest.approx(result.test_metrics[f"test/{region}/{name}"])
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.toml", "checkpoints", "images", "eval"} <= artifacts
    assert [a.path for a in client.list_artifacts(result.run_id, "checkpoints")] == ["checkpoints/last.pt"]
    assert [a.path for a in client.list_artifacts(result.run_id, "eval")] == ["eval/per_image.csv"]


@pytest.mark.slow
def test_resume_equals_continuous_training(worlds: dict[str, Path], tmp_path: Path) -> None:
    """2N steps in one go == N steps, stop, resume, N more steps (N = 3; CPU; bit-identical weights).

    Mini world: 2 steps per epoch, so the stop point (step 3) is mid-epoch 1 (the resumed epoch must skip its
    first batch) and both runs cross epoch ends (validation, lr decay after every epoch with lr_step_epoch = 1).
    The continuous run uses 2 loader workers, the split run none: the data do not depend on workers.
    """
    common = ("train.epochs=3", "train.lr_step_epoch=1", "train.lr_gamma=0.5")
    continuous = tiny_cfg(worlds["mini"], tmp_path / "a", *common, "train.max_steps=6", "data.num_workers=2")
    first = tiny_cfg(worlds["mini"], tmp_path / "b", *common, "train.max_steps=3")
    resumed = tiny_cfg(worlds["mini"], tmp_path / "b", *common, "train.max_steps=6")

    full = fit(continuous, progress=False)
    half = fit(first, progress=False)
    assert (full.status, full.steps, half.status, half.steps) == ("FINISHED", 6, "FINISHED", 3)
    # Stop point: step 3 = epoch 1 (0-based), one of its two batches done; the lr decayed once (1e-4 * 0.5).
    state = load_checkpoint(half.run_dir / rundir.CHECKPOINT_NAME)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 1, 1)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-5)
    # Continue that state with a budget of 6 steps (max_steps is the one setting a resume may change).
    resumed_dir = tmp_path / "b" / resumed.run_key
    resumed_dir.mkdir(parents=True)
    os.link(half.run_dir / rundir.CHECKPOINT_NAME, resumed_dir / rundir.CHECKPOINT_NAME)
    again = fit(resumed, progress=False)
    assert (again.status, again.steps) == ("FINISHED", 6)

    a, b = weights(full.run_dir), weights(again.run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert again.test_metrics == pytest.approx(full.test_metrics)
    assert [h["epoch"] for h in full.val_history] == [0, 1, 2]

    # A finished run is not trained again: the DONE marker answers.
    stamp = (full.run_dir / rundir.CHECKPOINT_NAME).stat().st_mtime_ns
    same = fit(continuous, progress=False)
    assert same.status == "FINISHED" and same.test_metrics == full.test_metrics and same.steps == 6
    assert (full.run_dir / rundir.CHECKPOINT_NAME).stat().st_mtime_ns == stamp
    # A different semantic config is refused rather than silently mixed into this checkpoint.
    os.link(half.run_dir / rundir.CHECKPOINT_NAME, tmp_path / "c.pt")
    other = tiny_cfg(worlds["mini"], tmp_path / "d", *common, "train.max_steps=6", "train.lr=1e-3")
    (tmp_path / "d" / other.run_key).mkdir(parents=True)
    os.replace(tmp_path / "c.pt", tmp_path / "d" / other.run_key / rundir.CHECKPOINT_NAME)
    with pytest.raises(RuntimeError, match="train.lr"):
        fit(other, progress=False)


@pytest.mark.slow
def test_nonfinite_loss_fails_and_keeps_last_good_checkpoint(worlds: dict[str, Path], tmp_path: Path) -> None:
    """A real divergence: lr x 1e30 after epoch 0 blows the weights up, so the loss of step 4 is not finite."""
    cfg = tiny_cfg(worlds["mini"], tmp_path, "train.epochs=3", "train.lr_step_epoch=1", "train.lr_gamma=1e30",
                   "train.max_steps=0")
    result = fit(cfg, progress=False)
    # Epoch 0 = steps 1, 2 (5 items, batch 2); step 3 runs at lr 1e26 and produces enormous weights;
    # step 4's forward pass overflows.
    assert result.status == "FAILED", result.message
    assert result.steps == 3 and "non-finite loss at step 4" in result.message
    assert "loss/" in result.message  # the offending term is named
    # ... and the checkpoint that really exists, with its step (not the step it diverged at)
    assert f"{result.run_dir / rundir.CHECKPOINT_NAME} (step 2) was kept" in result.message
    assert result.exit_code == rundir.EXIT_FAILED
    assert not (result.run_dir / rundir.DONE_NAME).exists()
    # The last good checkpoint is the end of epoch 0, finite, and loads for inference.
    state = load_checkpoint(result.run_dir / rundir.CHECKPOINT_NAME)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (2, 1, 0)
    assert all(bool(torch.isfinite(v).all()) for v in state["models"].values() if v.is_floating_point())
    loaded_cfg, models = load_for_inference(result.run_dir / rundir.CHECKPOINT_NAME)
    assert loaded_cfg.run_key == cfg.run_key and not models.training
    assert "non-finite loss at step 4" in (result.run_dir / rundir.LOG_NAME).read_text()


@pytest.mark.slow
def test_signal_checkpoints_and_resume_finishes(worlds: dict[str, Path], tmp_path: Path) -> None:
    """SIGINT (as a pre-emption would send SIGTERM) stops after the current step with a checkpoint; a second
    call resumes where it stopped. Also: the CLI answers a finished run and evaluates its checkpoint."""
    cfg = tiny_cfg(worlds["mini"], tmp_path, "train.epochs=2", "train.max_steps=0")
    seen: list[tuple[int, dict[str, float]]] = []

    def interrupt(epoch: int, val_metrics: Any) -> bool:
        seen.append((epoch, dict(val_metrics)))
        os.kill(os.getpid(), signal.SIGINT)  # delivered to our handler: sets the stop flag
        return False

    handler = signal.getsignal(signal.SIGINT)
    stopped = fit(cfg, epoch_callback=interrupt, progress=False)
    assert signal.getsignal(signal.SIGINT) is handler  # fit restores the previous handlers
    assert stopped.status == "KILLED" and stopped.exit_code == rundir.EXIT_INTERRUPTED
    assert stopped.steps == 2 and "SIGINT" in stopped.message
    assert seen[0][0] == 0 and "val/loss" in seen[0][1] and "val/abs_rel" in seen[0][1]
    state = load_checkpoint(stopped.run_dir / rundir.CHECKPOINT_NAME)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (2, 1, 0)

    done = fit(cfg, progress=False)
    assert done.status == "FINISHED" and done.steps == 4
    assert [h["epoch"] for h in done.val_history] == [0, 1]

    # Pruning: the callback asks to stop after epoch 0.
    pruned = fit(cfg.override({"train.seed": 1}), epoch_callback=lambda e, m: True, progress=False)
    assert pruned.status == "PRUNED" and pruned.steps == 2

    from md2bench.cli import app

    runner = CliRunner()
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    overrides = [f"data.path={worlds['mini']}", f"train.out_dir={tmp_path}", "train.epochs=2", "train.max_steps=0"]
    again = runner.invoke(app, ["train", "tiny", *overrides, "--tracking-uri", uri, "--no-progress"])
    assert again.exit_code == rundir.EXIT_FINISHED, again.output
    assert "already finished" in again.output
    csv = tmp_path / "eval.csv"
    evaluated = runner.invoke(app, ["evaluate", "--checkpoint", str(done.run_dir / "checkpoint.pt"), "--device",
                                    "cpu", "--out", str(csv)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "abs_rel" in evaluated.output and csv.is_file()


ABLATIONS = [
    [],  # the full model: min reprojection, automask, full_res, ssim, mode M, separate pose net, pairs
    ["loss.reprojection=avg"],
    ["loss.automask=false"],
    ["loss.multiscale=per_scale"],
    ["loss.multiscale=single"],
    ["loss.ssim=false"],
    ["loss.automask=false", "loss.predictive_mask=true"],
    ["data.mode=S"],
    ["data.mode=MS"],
    ["model.pose_net=shared"],
    ["model.pose_net=posecnn"],
    ["model.pose_input=all"],
]


@pytest.mark.slow
@pytest.mark.parametrize("flags", ABLATIONS, ids=lambda f: ",".join(f) or "full")
def test_every_ablation_flag_trains_one_step(worlds: dict[str, Path], tmp_path: Path, flags: list[str]) -> None:
    cfg = tiny_cfg(worlds["mini"], tmp_path, "train.max_steps=1", *flags)
    result = fit(cfg, progress=False)
    assert result.status == "FINISHED" and result.steps == 1, result.message
    assert math.isfinite(result.test_metrics["test/abs_rel"])
    assert math.isfinite(result.val_history[-1]["val/loss"])


# ============================================================================================ stop signals as a grid sends them
def _train_process(world: Path, out: Path, uri: str, *overrides: str) -> Any:
    """``md2bench train`` in its own session (as the orchestrator and Slurm start it), so its group is signalable."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "md2bench", "train", "tiny", f"data.path={world}", f"train.out_dir={out}",
           *overrides, "--tracking-uri", uri, "--no-progress"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for(proc: Any, ready: Any, what: str) -> None:
    import time

    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, f"the trainer exited before {what}: {proc.communicate()[0]}"
        assert time.monotonic() < deadline, f"the trainer never reached {what}"
        time.sleep(0.01)


def _sigterm_group_when(proc: Any, ready: Any, what: str) -> str:
    """SIGTERM the trainer's whole process group once ``ready()`` holds; return its output after it exits."""
    try:
        _wait_for(proc, ready, what)
        os.killpg(proc.pid, signal.SIGTERM)
        return proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_group_sigterm_with_loader_workers_checkpoints_and_exits_75(worlds: dict[str, Path], tmp_path: Path) -> None:
    """The orchestrator and Slurm SIGTERM the trainer's whole process group, loader workers included. A worker
    must not die of it (the trainer would then fail with "DataLoader worker ... killed by signal", exit 1):
    the trainer finishes its step, checkpoints and exits 75, and its MLflow run is KILLED."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    MlflowClient(uri).search_experiments()  # create the store first (a stop mid-migration would corrupt it)
    # mini world: 5 items, batch 2 -> 2 steps per epoch; 500 epochs outlast the signal by far.
    cfg = tiny_cfg(worlds["mini"], tmp_path / "runs", "train.epochs=500", "train.max_steps=0", "data.num_workers=1")
    log = tmp_path / "runs" / cfg.run_key / rundir.LOG_NAME
    proc = _train_process(worlds["mini"], tmp_path / "runs", uri, "train.epochs=500", "train.max_steps=0",
                          "data.num_workers=1")
    output = _sigterm_group_when(proc, lambda: log.is_file() and "INFO step 1 " in log.read_text(), "its first step")
    assert proc.returncode == rundir.EXIT_INTERRUPTED, output
    assert "killed by signal" not in output and "KILLED: interrupted by SIGTERM" in output
    state = load_checkpoint(log.parent / rundir.CHECKPOINT_NAME)
    assert state["step"] >= 1  # the stop-point checkpoint, not an epoch-end one from before the signal only
    (run,) = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])
    assert run.info.status == "KILLED"


@pytest.mark.slow
def test_sigterm_during_start_up_is_an_interruption(worlds: dict[str, Path], tmp_path: Path) -> None:
    """A stop that lands while the trainer starts (imports, data, networks: before the training loop) exits 75,
    resumable, not "failed" and not killed by the signal; it leaves no FAILED MLflow run and no DONE marker."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    MlflowClient(uri).search_experiments()
    cfg = tiny_cfg(worlds["mini"], tmp_path / "runs", "data.num_workers=1")
    run_dir = tmp_path / "runs" / cfg.run_key
    proc = _train_process(worlds["mini"], tmp_path / "runs", uri, "data.num_workers=1")
    # The lock file appears as fit starts, before the data, networks and MLflow run are set up.
    output = _sigterm_group_when(proc, lambda: (run_dir / rundir.LOCK_NAME).is_file(), "fit")
    assert proc.returncode == rundir.EXIT_INTERRUPTED, output
    assert not (run_dir / rundir.DONE_NAME).exists()
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert all(r.info.status == "KILLED" for r in runs), [r.info.status for r in runs]
    # ... and the next invocation trains it to the end.
    done = fit(cfg, progress=False)
    assert done.status == "FINISHED" and done.steps == 2  # 5 items // batch 2 = 2 steps in the one epoch
