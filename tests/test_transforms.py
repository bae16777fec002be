"""Device-side transforms: pyramid, colour jitter (against torchvision) and the per-sample augmentation draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from md2bench.data.transforms import IDENTITY_JITTER, color_jitter, make_pyramid, sample_augmentation


def test_make_pyramid_is_pillow_lanczos_on_a_step_edge() -> None:
    # The reference builds scale 1 with PIL LANCZOS on the uint8 image (REFERENCE §3.1). A vertical step
    # (columns 0..7 = 0, 8..15 = 255) halved to 8 columns: output j of an exact halving has its centre at input
    # 2j + 1 and taps p = 2j − 5 .. 2j + 6 weighted lanczos((p − 2j − 0.5)/2), lanczos(x) = sinc(x)·sinc(x/3):
    # at offsets 0.25, 0.75, 1.25, 1.75, 2.25, 2.75 → 0.89008, 0.27019, −0.13287, −0.06779, 0.03002, 0.00736
    # (one side sums to 0.99699, both to 1.99398).
    # j = 3: taps 8..12 are 255 (offsets 0.75..2.75): 255·0.10691/1.99398 = 13.67 → 14 (a box filter gives 0).
    # j = 4: taps 8..14 (offsets −0.25..2.75): 255·(0.89008 + 0.99699)/1.99398 = 241.3 → 241 (box: 255).
    # The rest is Pillow's ringing and border renormalisation: 0, 1, 0 on the left, 255, 254, 255 on the right.
    # The 2 rows → 1 row pass averages two equal rows (weights lanczos(±0.25), equal).
    images = torch.zeros(1, 1, 3, 2, 16, dtype=torch.uint8)
    images[..., 8:] = 255
    pyr = make_pyramid(images, (0, 1))
    assert pyr[0].dtype == torch.float32 and pyr[0].shape == (1, 1, 3, 2, 16)
    assert pyr[1].shape == (1, 1, 3, 1, 8)
    expected = torch.tensor([0.0, 1.0, 0.0, 14.0, 241.0, 255.0, 254.0, 255.0]) / 255
    torch.testing.assert_close(pyr[1][0, 0, :, 0], expected.expand(3, 8))


def test_make_pyramid_matches_pillow_chain() -> None:
    # Scale s is PIL-resized from scale s − 1 (a chain), each result a uint8 image; ours may differ by one grey
    # level where Pillow's 22-bit fixed-point sum sits on a rounding tie.
    rng = np.random.default_rng(0)
    height, width = 32, 96
    yy, xx = np.mgrid[0:height, 0:width]
    wave = 100 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    img = (127 + wave[..., None] + rng.normal(0, 30, (height, width, 3))).clip(0, 255).astype(np.uint8)
    pyr = make_pyramid(torch.from_numpy(img).permute(2, 0, 1)[None, None], (1, 2, 3))
    pil = Image.fromarray(img)
    for s in (1, 2, 3):
        pil = pil.resize((width // 2**s, height // 2**s), Image.Resampling.LANCZOS)
        ours = (pyr[s][0, 0].permute(1, 2, 0).numpy() * 255).round().astype(np.int64)
        diff = np.abs(np.asarray(pil).astype(np.int64) - ours)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (s, diff.max(), (diff > 0).mean())


def test_make_pyramid_float_input_is_filtered_not_quantised() -> None:
    # A constant image stays constant (the weights of every output sum to 1); float input keeps fractions.
    images = torch.full((1, 1, 3, 16, 16), 0.3)
    torch.testing.assert_close(make_pyramid(images, (2,))[2], torch.full((1, 1, 3, 4, 4), 0.3))


def test_make_pyramid_sizes() -> None:
    pyr = make_pyramid(torch.zeros(2, 3, 3, 32, 64, dtype=torch.uint8), (0, 1, 2, 3))
    assert [tuple(pyr[s].shape[-2:]) for s in (0, 1, 2, 3)] == [(32, 64), (16, 32), (8, 16), (4, 8)]


def _torchvision_jitter(img: torch.Tensor, factors: list[float], order: list[int]) -> torch.Tensor:
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for op in order:
        img = ops[op](img, factors[op])
    return img


@pytest.mark.parametrize(
    ("factors", "order"),
    [
        ([1.2, 1.0, 1.0, 0.0], [0, 1, 2, 3]),
        ([1.0, 0.8, 1.0, 0.0], [0, 1, 2, 3]),
        ([1.0, 1.0, 1.15, 0.0], [0, 1, 2, 3]),
        ([1.0, 1.0, 1.0, 0.07], [0, 1, 2, 3]),
        ([1.0, 1.0, 1.0, -0.09], [0, 1, 2, 3]),
        ([0.85, 1.17, 0.82, -0.06], [3, 1, 0, 2]),
        ([1.1, 0.9, 1.2, 0.1], [2, 3, 1, 0]),
    ],
)
def test_color_jitter_matches_torchvision(factors: list[float], order: list[int]) -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(3, 6, 7, generator=gen)
    img[:, 0, 0] = 0.5  # a gray pixel (zero chroma) exercises the hue special case
    expected = _torchvision_jitter(img.clone(), factors, order)
    got = color_jitter(img[None, None], torch.tensor([factors]), torch.tensor([order]))[0, 0]
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)


def test_color_jitter_same_for_all_frames_per_sample() -> None:
    gen = torch.Generator().manual_seed(1)
    frame = torch.rand(3, 4, 5, generator=gen)
    images = torch.stack([torch.stack([frame, frame, frame])] * 2)  # B=2, F=3, identical frames
    aug = torch.tensor([[1.1, 0.9, 1.2, 0.05], [0.8, 1.2, 0.9, -0.1]])
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    out = color_jitter(images, aug, order)
    for b in range(2):
        torch.testing.assert_close(out[b, 1], out[b, 0])
        torch.testing.assert_close(out[b, 2], out[b, 0])
        expected = _torchvision_jitter(frame.clone(), aug[b].tolist(), order[b].tolist())
        torch.testing.assert_close(out[b, 0], expected, atol=2e-6, rtol=0)


def test_color_jitter_identity_is_exact() -> None:
    images = torch.rand(2, 2, 3, 4, 4)
    aug = torch.tensor([IDENTITY_JITTER, [1.2, 1.0, 1.0, 0.0]])
    out = color_jitter(images, aug, torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]))
    assert torch.equal(out[0], images[0])  # identity sample untouched, bit-exact
    torch.testing.assert_close(out[1], (images[1] * 1.2).clamp(0, 1))
    assert torch.equal(images, images.clone())  # input not modified


def test_sample_augmentation_disabled_is_identity() -> None:
    factors, order, flip = sample_augmentation(np.random.default_rng(0), color_aug=False, flip=False)
    assert factors.tolist() == list(IDENTITY_JITTER)
    assert order.tolist() == [0, 1, 2, 3]
    assert flip is False


def test_sample_augmentation_ranges_and_rates() -> None:
    draws = [sample_augmentation(np.random.default_rng([0, 0, i]), True, True) for i in range(2000)]
    jittered = [f for f, _, _ in draws if not np.allclose(f, IDENTITY_JITTER)]
    flips = sum(flip for _, _, flip in draws)
    # p = 0.5 each: 2000 draws → 1000 ± 4σ (σ = sqrt(2000·0.25) ≈ 22)
    assert 910 < len(jittered) < 1090 and 910 < flips < 1090
    arr = np.stack(jittered)
    assert (arr[:, :3] >= 0.8).all() and (arr[:, :3] <= 1.2).all()
    assert (np.abs(arr[:, 3]) <= 0.1).all()
    for _, order, _ in draws[:50]:
        assert sorted(order.tolist()) == [0, 1, 2, 3]


def test_sample_augmentation_flip_independent_of_color_flag() -> None:
    for i in range(20):
        _, _, flip_a = sample_augmentation(np.random.default_rng([3, 1, i]), True, True)
        _, _, flip_b = sample_augmentation(np.random.default_rng([3, 1, i]), False, True)
        assert flip_a == flip_b
