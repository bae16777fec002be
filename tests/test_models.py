"""Contract tests of the networks (REFERENCE.md §4): shapes, declared channels/strides, gradients, weights loading.

Inputs are tiny (batch 2 at 64×96, ResNet-18 from scratch) so the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.feature_extraction import create_feature_extractor

from md2bench.config import Config, DataConfig, LossConfig, ModelConfig
from md2bench.models import (
    DepthDecoder,
    PoseCNN,
    PoseDecoder,
    ResnetEncoder,
    WeightsNotFoundError,
    build_models,
    load_imagenet_weights,
    num_pose_frames,
)
from md2bench.models.encoder import hub_cache_path

B, H, W = 2, 64, 96  # 64 and 96 are multiples of 32 (64/32 = 2, 96/32 = 3)
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"


def _images(n: int = 1, seed: int = 0) -> Tensor:
    """B×3n×H×W images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3 * n, H, W, generator=g)


def _cfg(
    pose_net: str = "separate",
    pose_input: str = "pairs",
    mode: str = "M",
    predictive_mask: bool = False,
    pretrained: str = "scratch",
    weights_path: str = "",
) -> Config:
    return Config(
        model=ModelConfig(pose_net=pose_net, pose_input=pose_input, pretrained=pretrained, weights_path=weights_path),
        loss=LossConfig(predictive_mask=predictive_mask, automask=not predictive_mask),
        data=DataConfig(mode=mode, height=H, width=W),
    )


@pytest.fixture(scope="module")
def tv_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Tensor], Path]:
    """A torchvision ResNet-18 state dict (weights=None) with non-trivial BN statistics, saved to a file.

    The BN buffers and affine parameters are randomised so that a key mix-up (bn1 vs bn2, layer order) would
    change the features; the fresh defaults (mean 0, var 1, weight 1, bias 0) would hide it.
    """
    torch.manual_seed(0)
    net = resnet18(weights=None)
    state = net.state_dict()
    g = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if key.endswith("running_mean") or (key.endswith("bias") and "bn" in key or "downsample.1.bias" in key):
            state[key] = 0.1 * torch.randn(value.shape, generator=g)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=g)
        elif key.endswith("weight") and ("bn" in key or "downsample.1" in key):
            state[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=g)
    path = tmp_path_factory.mktemp("weights") / "resnet18-test.pth"
    torch.save(state, path)
    return state, path


def _named_grads_ok(module: nn.Module) -> list[str]:
    """Names of parameters whose gradient is missing, non-finite or all zero."""
    bad = []
    for name, p in module.named_parameters():
        if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0:
            bad.append(name)
    return bad


# ----- encoder ---------------------------------------------------------------------------------------------


def test_resnet18_declared_channels_and_strides_equal_real_ones() -> None:
    torch.manual_seed(0)
    enc = ResnetEncoder(18)
    assert enc.num_ch_enc == (64, 64, 128, 256, 512)  # BasicBlock widths 64..512, conv1 64
    assert enc.strides == (2, 4, 8, 16, 32)  # conv1 /2, maxpool /2, layer2..4 /2 each
    feats = enc(_images())
    assert len(feats) == 5
    for f, ch, stride in zip(feats, enc.num_ch_enc, enc.strides):
        assert tuple(f.shape) == (B, ch, H // stride, W // stride)  # e.g. layer4: 2×512×2×3
        assert torch.isfinite(f).all()


def test_resnet50_declared_channels_equal_real_ones_and_pose_decoder_follows_them() -> None:
    torch.manual_seed(0)
    enc = ResnetEncoder(50, num_input_images=2)
    assert enc.num_ch_enc == (64, 256, 512, 1024, 2048)  # Bottleneck expansion 4: 64·4, 128·4, 256·4, 512·4
    feats = enc(torch.rand(1, 6, 64, 64))
    for f, ch, stride in zip(feats, enc.num_ch_enc, enc.strides):
        assert tuple(f.shape) == (1, ch, 64 // stride, 64 // stride)
    pose = PoseDecoder(enc.num_ch_enc, num_input_features=1, num_frames_to_predict=2)
    assert pose.squeeze.in_channels == 2048  # squeeze follows the encoder's last channel count
    axisangle, translation = pose([feats])
    assert axisangle.shape == translation.shape == (1, 2, 1, 3)


def test_encoder_normalises_its_input_inside() -> None:
    # x = 0.45 everywhere -> (0.45 - 0.45) / 0.225 = 0 -> conv1 (no bias) gives 0 -> eval BN with fresh stats
    # (mean 0, var 1, weight 1, bias 0) gives 0 -> ReLU gives 0: the first map is exactly zero whatever conv1 is.
    torch.manual_seed(0)
    enc = ResnetEncoder(18).eval()
    with torch.no_grad():
        f0 = enc(torch.full((1, 3, 64, 64), 0.45))[0]
    assert torch.equal(f0, torch.zeros_like(f0))


def test_encoder_rejects_wrong_channels_and_sizes() -> None:
    enc = ResnetEncoder(18, num_input_images=2)
    with pytest.raises(ValueError, match=r"B×6×H×W"):
        enc(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        enc(torch.rand(1, 6, 64, 80))  # 80 = 2.5·32


def test_weights_file_loads_into_encoder_equal_to_torchvision_features(
    tv_state: tuple[dict[str, Tensor], Path],
) -> None:
    state, path = tv_state
    loaded = load_imagenet_weights(18, path)
    assert set(loaded) == set(state)  # the file as saved, classifier fc.* included
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    enc = ResnetEncoder(18, imagenet_state=loaded).eval()
    tv = resnet18(weights=None)
    tv.load_state_dict(torch.load(path, weights_only=True))
    nodes = {"relu": "f0", "layer1": "f1", "layer2": "f2", "layer3": "f3", "layer4": "f4"}
    extractor = create_feature_extractor(tv.eval(), return_nodes=nodes)
    x = _images()
    with torch.no_grad():
        ours = enc(x)
        theirs = extractor((x - 0.45) / 0.225)  # the reference's normalisation, applied outside torchvision
    for i, f in enumerate(ours):
        torch.testing.assert_close(f, theirs[f"f{i}"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [2, 3])
def test_multi_image_conv1_replication_gives_single_image_features(
    tv_state: tuple[dict[str, Tensor], Path], n: int
) -> None:
    state, _ = tv_state
    single = ResnetEncoder(18, 1, imagenet_state=state).eval()
    multi = ResnetEncoder(18, n, imagenet_state=state).eval()
    assert multi.conv1.weight.shape == (64, 3 * n, 7, 7)
    # Every 3-channel slice is the ImageNet kernel divided by n.
    for j in range(n):
        torch.testing.assert_close(multi.conv1.weight[:, 3 * j : 3 * j + 3], state["conv1.weight"] / n)
    # conv1 is linear: sum over n copies of (w / n) * x = w * x, so n identical images give the same features.
    x = _images()
    with torch.no_grad():
        a = single(x)
        b = multi(x.repeat(1, n, 1, 1))
    for fa, fb in zip(a, b):
        torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-4)


def test_weights_from_torch_hub_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tv_state: tuple[dict[str, Tensor], Path]
) -> None:
    state, _ = tv_state
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"  # $TORCH_HOME/hub/checkpoints/<file>
    assert hub_cache_path(18) == expected
    expected.parent.mkdir(parents=True)
    torch.save(state, expected)
    loaded = load_imagenet_weights(18)
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])
    assert torch.equal(loaded["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])


def test_missing_weights_error_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    with pytest.raises(WeightsNotFoundError) as info:
        load_imagenet_weights(50)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert "model.weights_path=" in message  # the explicit option
    assert str(cache) in message  # the hub-cache path
    assert "resnet50-0676ba61.pth" in message  # the file name to put there
    assert "model.pretrained=scratch" in message  # how to avoid it

    explicit = tmp_path / "nowhere" / "r18.pth"
    with pytest.raises(WeightsNotFoundError, match=re.escape(str(explicit))):
        load_imagenet_weights(18, str(explicit))


def test_wrong_depth_weights_fail_clearly(tv_state: tuple[dict[str, Tensor], Path]) -> None:
    state, _ = tv_state
    with pytest.raises(ValueError, match="model.num_layers"):
        ResnetEncoder(50, imagenet_state=state)


@pytest.mark.shared
@pytest.mark.parametrize("num_layers", [18, 50])
def test_real_imagenet_weights_file(num_layers: int) -> None:
    name = {18: "resnet18-f37072fd.pth", 50: "resnet50-0676ba61.pth"}[num_layers]
    path = SHARED_WEIGHTS / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    # torch hub names files <name>-<first 8 hex digits of the file's sha256>.pth.
    assert hashlib.sha256(path.read_bytes()).hexdigest()[:8] == name.split("-")[1].split(".")[0]
    state = load_imagenet_weights(num_layers, path)
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert not torch.allclose(state["bn1.running_var"], torch.ones(64))  # trained statistics, not the defaults
    enc = ResnetEncoder(num_layers, num_input_images=2, imagenet_state=state).eval()
    with torch.no_grad():
        feats = enc(torch.rand(1, 6, 64, 64))
    assert all(torch.isfinite(f).all() for f in feats)


# ----- depth decoder ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("scales", "channels"), [((0, 1, 2, 3), 1), ((0,), 1), ((0, 2), 3)])
def test_depth_decoder_per_scale_shapes(scales: tuple[int, ...], channels: int) -> None:
    torch.manual_seed(0)
    enc = ResnetEncoder(18)
    dec = DepthDecoder(enc.num_ch_enc, scales=scales, num_output_channels=channels)
    out = dec(enc(_images()))
    assert tuple(out) == scales
    for s, d in out.items():
        assert tuple(d.shape) == (B, channels, H // 2**s, W // 2**s)  # scale 3: 64/8 × 96/8 = 8×12
        assert torch.isfinite(d).all() and (d > 0).all() and (d < 1).all()  # sigmoid


def test_depth_decoder_output_is_sigmoid_of_dispconv() -> None:
    # Zero dispconv weights and bias -> sigmoid(0) = 0.5 everywhere, at every scale.
    enc = ResnetEncoder(18)
    dec = DepthDecoder(enc.num_ch_enc)
    with torch.no_grad():
        for conv in dec.modules():
            if isinstance(conv, nn.Conv2d) and conv.out_channels == 1:
                conv.weight.zero_()
                conv.bias.zero_()
        out = dec(enc(_images()))
    for d in out.values():
        assert torch.equal(d, torch.full_like(d, 0.5))


# ----- pose nets -------------------------------------------------------------------------------------------


def test_pose_decoder_scale_and_layout() -> None:
    # Zero last-conv weights, bias b = 0..11 -> every pixel gives b, the mean over H, W is b, times 0.01.
    # Layout (B, k, 1, 6): frame j has axis-angle 0.01·b[6j:6j+3], translation 0.01·b[6j+3:6j+6].
    pose = PoseDecoder((64, 64, 128, 256, 512), num_input_features=2, num_frames_to_predict=2)
    with torch.no_grad():
        pose.pose2.weight.zero_()
        pose.pose2.bias.copy_(torch.arange(12.0))
    feats = [[torch.rand(B, 512, 2, 3)], [torch.rand(B, 512, 2, 3)]]
    axisangle, translation = pose(feats)
    assert axisangle.shape == translation.shape == (B, 2, 1, 3)
    torch.testing.assert_close(axisangle[0, 0, 0], torch.tensor([0.00, 0.01, 0.02]))
    torch.testing.assert_close(translation[0, 0, 0], torch.tensor([0.03, 0.04, 0.05]))
    torch.testing.assert_close(axisangle[1, 1, 0], torch.tensor([0.06, 0.07, 0.08]))
    torch.testing.assert_close(translation[1, 1, 0], torch.tensor([0.09, 0.10, 0.11]))
    with pytest.raises(ValueError, match="2 feature set"):
        pose(feats[:1])
    # model.pose_translation_scale = 0.1: the same raw outputs, translations ×0.1, rotations still ×0.01
    scaled = PoseDecoder((64, 64, 128, 256, 512), num_input_features=2, num_frames_to_predict=2, translation_scale=0.1)
    scaled.load_state_dict(pose.state_dict())
    axisangle10, translation10 = scaled(feats)
    torch.testing.assert_close(axisangle10, axisangle)
    torch.testing.assert_close(translation10[1, 1, 0], torch.tensor([0.9, 1.0, 1.1]))
    cfg = Config(model=ModelConfig(pretrained="scratch", pose_translation_scale=0.1))
    assert build_models(cfg)["pose"].translation_scale == 0.1
    assert Config().run_key == Config(model=ModelConfig(pose_translation_scale=0.01)).run_key != cfg.run_key


@pytest.mark.parametrize("n", [2, 3])
def test_posecnn_shapes_scale_and_no_normalisation(n: int) -> None:
    torch.manual_seed(0)
    net = PoseCNN(n)
    assert len(net.convs) == 7 and all(c.stride == (2, 2) for c in net.convs)
    assert [c.out_channels for c in net.convs] == [16, 32, 64, 128, 256, 256, 256]
    assert [c.kernel_size[0] for c in net.convs] == [7, 5, 3, 3, 3, 3, 3]
    axisangle, translation = net(_images(n))
    assert axisangle.shape == translation.shape == (B, n - 1, 1, 3)
    assert torch.isfinite(axisangle).all() and torch.isfinite(translation).all()
    # No normalisation: black images (0) reach the first conv as 0, so its weight cannot matter. With the ResNet
    # normalisation they would become -0.45/0.225 = -2 and the weight would.
    zeros = torch.zeros(1, 3 * n, 64, 64)
    with torch.no_grad():
        before = net(zeros)
        net.convs[0].weight.normal_()
        after = net(zeros)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


# ----- build_models ----------------------------------------------------------------------------------------


def _forward_all(models: nn.ModuleDict, cfg: Config) -> list[Tensor]:
    """Run every network as the method would, checking shapes; returns all outputs."""
    n = num_pose_frames(cfg)
    frames = [_images(seed=i) for i in range(max(n, 1))]
    feats = models["encoder"](frames[0])
    outputs: list[Tensor] = list(feats)
    depth = models["depth"](feats)
    assert tuple(depth) == cfg.model.scales
    outputs += depth.values()
    if "mask" in models:
        mask = models["mask"](feats)
        for s, m in mask.items():
            assert tuple(m.shape) == (B, cfg.num_sources, H // 2**s, W // 2**s)
        outputs += mask.values()
    if "pose" in models:
        stacked = torch.cat(frames[:n], dim=1)
        if cfg.model.pose_net == "separate":
            pose_feats = models["pose_encoder"](stacked)
            outputs += pose_feats
            axisangle, translation = models["pose"]([pose_feats])
            k = 2 if cfg.model.pose_input == "pairs" else n - 1
        elif cfg.model.pose_net == "shared":
            axisangle, translation = models["pose"]([feats] + [models["encoder"](f) for f in frames[1:n]])
            k = n - 1
        else:
            axisangle, translation = models["pose"](stacked)
            k = n - 1
        assert axisangle.shape == translation.shape == (B, k, 1, 3)
        outputs += [axisangle, translation]
    return outputs


@pytest.mark.parametrize(
    ("pose_net", "pose_input", "predictive_mask"),
    [("separate", "pairs", True), ("shared", "all", False), ("posecnn", "pairs", False)],
)
def test_every_parameter_gets_a_gradient(pose_net: str, pose_input: str, predictive_mask: bool) -> None:
    torch.manual_seed(0)
    cfg = _cfg(pose_net=pose_net, pose_input=pose_input, predictive_mask=predictive_mask)
    models = build_models(cfg)
    outputs = _forward_all(models, cfg)
    assert all(torch.isfinite(o).all() for o in outputs)
    # Fixed random weights per output so no parameter's gradient cancels by symmetry (e.g. BN with a plain mean).
    g = torch.Generator().manual_seed(0)
    loss = sum((o * torch.randn(o.shape, generator=g)).mean() for o in outputs)
    loss.backward()
    assert _named_grads_ok(models) == []


# Hand table: the keys each combination must build. S has no temporal source -> no pose net; separate adds its own
# encoder; the predictive mask adds a decoder.
_POSE_KEYS = {"separate": {"pose_encoder", "pose"}, "shared": {"pose"}, "posecnn": {"pose"}}


@pytest.mark.parametrize(
    ("pose_net", "pose_input", "mode", "predictive_mask"),
    list(itertools.product(("separate", "shared", "posecnn"), ("pairs", "all"), ("M", "S", "MS"), (False, True))),
)
def test_build_models_key_sets(pose_net: str, pose_input: str, mode: str, predictive_mask: bool) -> None:
    cfg = _cfg(pose_net=pose_net, pose_input=pose_input, mode=mode, predictive_mask=predictive_mask)
    with torch.device("meta"):  # the real constructors, without allocating or initialising 36 sets of weights
        models = build_models(cfg)
    expected = {"encoder", "depth"}
    if mode != "S":
        expected |= _POSE_KEYS[pose_net]
    if predictive_mask:
        expected |= {"mask"}
    assert set(models) == expected
    if predictive_mask:
        # N = number of sources: M -> (-1, 1) = 2, S -> ("s",) = 1, MS -> (-1, 1, "s") = 3.
        assert models["mask"].num_output_channels == {"M": 2, "S": 1, "MS": 3}[mode]
    if mode == "S":
        return
    # Frames per pose call: pairs -> 2; all -> the temporal frames (0, -1, 1) = 3 (the stereo frame never).
    n = {"pairs": 2, "all": 3}[pose_input]
    if pose_net == "separate":
        assert models["pose_encoder"].num_input_images == n
        assert models["pose_encoder"].conv1.in_channels == 3 * n
        assert models["pose"].num_input_features == 1
        # pairs: k = 2 as the reference (only the first is used); all: k = n - 1 = 3 - 1 = 2.
        assert models["pose"].num_frames_to_predict == {"pairs": 2, "all": 2}[pose_input]
    elif pose_net == "shared":
        assert models["pose"].num_input_features == n
        assert models["pose"].num_frames_to_predict == n - 1
    else:
        assert models["pose"].num_input_frames == n
        assert models["pose"].num_frames_to_predict == n - 1


def test_build_models_loads_imagenet_weights(tv_state: tuple[dict[str, Tensor], Path]) -> None:
    state, path = tv_state
    models = build_models(_cfg(pretrained="imagenet", weights_path=str(path)))
    assert torch.equal(models["encoder"].conv1.weight, state["conv1.weight"])
    assert torch.equal(models["encoder"].layer3[0].bn1.running_mean, state["layer3.0.bn1.running_mean"])
    # pairs -> 2 images: the kernel twice along input channels, halved.
    torch.testing.assert_close(models["pose_encoder"].conv1.weight, torch.cat([state["conv1.weight"]] * 2, 1) / 2)
    torch.testing.assert_close(models["pose_encoder"].layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_build_models_missing_weights_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="resnet18-f37072fd.pth"):
        build_models(_cfg(pretrained="imagenet"))


def test_init_depth_starts_the_untrained_network_at_that_depth() -> None:
    """model.init_depth shifts the disparity heads' bias by logit(sigma*), sigma* = (1/d - 1/max) / (1/min - 1/max):
    at 0.1..100, d = 2 gives sigma* = (0.5 - 0.01) / 9.99 = 0.04905; the untrained network's depth is then about 2
    where the reference initialisation gives about 2 * min_depth = 0.2 (sigmoid ~0.5)."""
    from md2bench.config import ConfigError
    from md2bench.geometry import disp_to_depth

    x = torch.rand(2, 3, 64, 192, generator=torch.Generator().manual_seed(0))
    medians = {}
    for init_depth in (0.0, 2.0):
        torch.manual_seed(0)
        cfg = Config(model=ModelConfig(pretrained="scratch", init_depth=init_depth), data=DataConfig(height=64, width=192))
        models = build_models(cfg)
        with torch.no_grad():
            outputs = models["depth"](models["encoder"](x))
        medians[init_depth] = {s: disp_to_depth(v, 0.1, 100.0)[1].median().item() for s, v in outputs.items()}
    for s in (0, 1, 2, 3):
        assert 0.15 < medians[0.0][s] < 0.3  # sigmoid ~0.5: 1 / (0.01 + 9.99 * 0.5) = 0.2
        assert 1.6 < medians[2.0][s] < 2.5
    # the same seed gives the same weights apart from the heads' bias shift of logit(0.049049) = ln(0.049049 / 0.950951) = -2.9646
    torch.manual_seed(0)
    ref = build_models(Config(model=ModelConfig(pretrained="scratch"), data=DataConfig(height=64, width=192)))
    torch.manual_seed(0)
    shifted = build_models(Config(model=ModelConfig(pretrained="scratch", init_depth=2.0),
                                  data=DataConfig(height=64, width=192)))
    for name, p in ref.named_parameters():
        q = dict(shifted.named_parameters())[name]
        if name.startswith("depth.outconvs.") and name.endswith(".bias"):
            torch.testing.assert_close(q - p, torch.full_like(p, -2.9646), atol=1e-4, rtol=0)
        else:
            assert torch.equal(p, q), name
    # the default keeps existing run keys; a bad value is a config error
    assert Config().run_key == Config(model=ModelConfig(init_depth=0.0)).run_key
    assert Config().run_key != Config(model=ModelConfig(init_depth=2.0)).run_key
    for bad in (0.05, 200.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="init_depth"):
            ModelConfig(init_depth=bad)
