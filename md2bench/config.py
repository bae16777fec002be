"""One frozen, typed configuration for every Monodepth2 ablation.

The tree is ``Config`` -> ``model`` / ``loss`` / ``data`` / ``train``. Every field is a plain value, every
ablation switch is positive and enumerated (``loss.reprojection = "min" | "avg" | "random"``, ``loss.automask =
true | false``, ``loss.multiscale = "full_res" | "per_scale" | "single"`` ...). Nothing mutates a config:
derived values (frame ids, the source frames, the scales a loss uses) are properties, and
``Config.override`` returns a new object.

Loading: ``load_config(path_or_preset, overrides)`` reads TOML (sections ``[model]``, ``[loss]``, ``[data]``,
``[train]`` and a top-level ``name``), applies dotted ``key=value`` overrides, and validates. Unknown keys and
invalid values fail with ``ConfigError`` naming the valid choices (and the nearest key, for typos).

Tracking: ``cfg.flat()`` is a flat ``{"loss.automask": True, ...}`` dict; ``cfg.run_key`` is a short stable
hash of every field that changes results (names, paths, worker counts and logging cadence are excluded, so the
same experiment run from another folder or machine has the same key).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import tomli_w


class ConfigError(ValueError):
    """An invalid configuration: unknown key, bad value or impossible combination."""


def _choice(section: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{section}.{name} = {value!r} is not valid; choose one of: {', '.join(repr(c) for c in choices)}"
        )


@dataclass(frozen=True)
class ModelConfig:
    """Networks.

    Attributes:
        num_layers: ResNet depth of the depth encoder (and of the separate pose encoder): 18 or 50.
        pretrained: ``"imagenet"`` initialises the ResNet encoders from ImageNet weights read from a local
            file (see ``weights_path``); ``"scratch"`` uses random (Kaiming) initialisation.
        weights_path: explicit ImageNet weights file; empty means torch's hub cache
            (``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth`` or ``resnet50-0676ba61.pth``).
        pose_net: ``"separate"`` (own ResNet on frame pairs, Monodepth2 default), ``"shared"`` (the depth encoder
            is reused, arXiv v1 design) or ``"posecnn"`` (Wang et al. style plain conv net).
        pose_input: ``"pairs"`` (one pass per source frame, two images in temporal order) or ``"all"`` (all
            temporal frames in one pass).
        min_depth: depth for sigmoid output 1 (metres in the network's own scale).
        max_depth: depth for sigmoid output 0.
        scales: decoder output scales used by the loss; scale s has resolution 1/2^s.
        pose_source: ``"net"``: the pose network predicts the camera motion (the paper); ``"gt"``: the exact
            camera motion of the synthetic world is used instead and no pose network is trained (a diagnostic
            and a fast CPU setting, shown in the report's flags). GT translations are converted to the network's
            units, in which the stereo baseline is 0.1 (metres × 0.1 / 0.54), so M, S and MS share one scale.
        init_depth: ``0`` (the reference): the disparity heads start with PyTorch's default bias, so an untrained
            network predicts sigmoid ~0.5, i.e. depth ~``2 * min_depth`` (0.2 units = 1.1 m with the defaults).
            ``> 0``: their biases start so that the untrained network predicts about this depth (network units).
            With a learned pose net the scale is free and the default is harmless; with a known scale (the
            world's exact poses, ``pose_source = "gt"``) and no pretraining, 1.1 m makes every forward-moving
            pixel leave the source image and the loss is flat: from scratch at 1e-4 the model stays at the
            constant-depth floor (README, "Results").
        init_from: ``""`` (default): the networks start from ``pretrained``/``init_depth``. A checkpoint path
            (``checkpoint.pt`` or ``checkpoints/last.pt`` of an earlier run): every network of this run that the
            checkpoint also holds, with the same shapes, starts from its weights (e.g. a monocular run warm-started
            from an MS run: depth and pose nets; README, "Results"). Optimiser state and step count start fresh.
        pose_translation_scale: the factor on the pose net's raw translation output (the reference: 0.01, the same
            as its rotation). The camera of the synthetic world moves ~0.16 network units per frame; at 0.01 the
            raw output must grow to ~16, which takes a from-scratch pose net many steps (README, "Results").
    """

    num_layers: int = 18
    pretrained: str = "imagenet"
    weights_path: str = ""
    pose_net: str = "separate"
    pose_input: str = "pairs"
    min_depth: float = 0.1
    max_depth: float = 100.0
    scales: tuple[int, ...] = (0, 1, 2, 3)
    pose_source: str = "net"
    init_depth: float = 0.0
    init_from: str = ""
    pose_translation_scale: float = 0.01

    def __post_init__(self) -> None:
        _choice("model", "num_layers", self.num_layers, (18, 50))
        _choice("model", "pose_source", self.pose_source, ("net", "gt"))
        _choice("model", "pretrained", self.pretrained, ("imagenet", "scratch"))
        _choice("model", "pose_net", self.pose_net, ("separate", "shared", "posecnn"))
        _choice("model", "pose_input", self.pose_input, ("pairs", "all"))
        if not 0 < self.min_depth < self.max_depth:
            raise ConfigError(f"need 0 < model.min_depth < model.max_depth, got {self.min_depth}, {self.max_depth}")
        if not self.scales or sorted(set(self.scales)) != list(self.scales) or not set(self.scales) <= {0, 1, 2, 3}:
            raise ConfigError(f"model.scales must be an increasing subset of (0, 1, 2, 3) with 0, got {self.scales}")
        if self.scales[0] != 0:
            raise ConfigError(f"model.scales must start with 0, got {self.scales}")
        if not (math.isfinite(self.pose_translation_scale) and self.pose_translation_scale > 0):
            raise ConfigError(f"model.pose_translation_scale must be a positive number, got {self.pose_translation_scale}")
        if not (self.init_depth == 0 or self.min_depth < self.init_depth < self.max_depth) or math.isnan(self.init_depth):
            raise ConfigError(f"model.init_depth must be 0 (the reference initialisation) or between model.min_depth "
                              f"and model.max_depth ({self.min_depth}, {self.max_depth}), got {self.init_depth}")


@dataclass(frozen=True)
class LossConfig:
    """The self-supervised loss and its ablation switches.

    Attributes:
        reprojection: ``"min"``: per-pixel minimum of the photometric error over source frames (Monodepth2);
            ``"avg"``: their mean (baseline); ``"random"``: one source per pixel, drawn uniformly at every step
            (its identity error too, for auto-masking) — not in the paper's code: an unbiased one-source estimate
            of the average, to tell the minimum's *choice* of source from its *one gradient per pixel* (README,
            "Results").
        automask: auto-masking of stationary pixels: the identity (unwarped) errors join the per-pixel
            minimum, with a tiny random tie-break (std ``automask_noise``) added to them, as the reference does.
        automask_noise: std of the tie-break noise on the identity errors (reference: 1e-5).
        automask_warmup_steps: for the first this many optimiser steps the loss runs without auto-masking (the
            identity errors stay out of the minimum), then auto-masking as configured; 0 (the reference): from
            the first step. A scratch pose net starts at the identity motion, where a warp wins over the
            identity only on the pixels its first guess already moves the right way; auto-masking drops the
            rest, so the pose net hears only the pixels that agree with it and locks into a sideways motion
            that fits half the image (README, "Monocular training from scratch"). No effect when
            ``automask`` is false.
        predictive_mask: Zhou et al.'s learned explainability mask (own decoder, BCE-to-one regulariser);
            the alternative to auto-masking, so it requires ``automask = false``.
        predictive_mask_weight: weight of the mask's BCE regulariser (reference: 0.2).
        multiscale: ``"full_res"``: every scale's disparity is upsampled to the input size and the
            photometric error is computed there (Monodepth2); ``"per_scale"``: each scale is compared at its
            own resolution (Monodepth v1); ``"single"``: only scale 0.
        ssim: photometric error = ``ssim_weight``·(1−SSIM)/2 + (1−``ssim_weight``)·L1; off means plain L1.
        ssim_weight: alpha in the photometric error (0.85).
        smoothness: weight of the edge-aware disparity smoothness term (divided by 2^scale).
        smoothness_scales: ``"all"`` (the reference): the smoothness term at every loss scale, λ/2^s each, inside
            the mean over scales; ``"finest"``: at scale 0 only, with weight λ outside that mean — what
            ``multiscale = "single"`` gives it — so that a multi-scale loss keeps its coarse photometric terms
            but not their smoothness (measured on the trained maps, Σ_s smooth_s/2^s ≈ 4·smooth_0, so the total
            smoothness weight stays about the same). Not in the paper's code; an option to tell the coarse
            scales' smoothness from their photometric terms (README, "Results"). No effect with
            ``multiscale = "single"``.
        coarse_weight: weight w of every loss scale s > 0 (its photometric and smoothness terms) against scale
            0's weight 1; the total is the weighted mean Σ_s w_s·term_s / Σ_s w_s. 1 (the reference): the plain mean
            over scales; 0: the scale-0 term alone, the loss ``multiscale = "single"`` computes. Not in the paper's
            code; an option to measure how the coarse terms' cost and gain grow with their weight (README,
            "Results"). No effect with ``multiscale = "single"``.
        mask_out_of_view: off (the reference): a source whose sample falls outside its image still competes,
            with the clamped border pixel (``padding_mode="border"``), in the min/avg. On: it is left out of the
            min/avg at that pixel (a pixel no source sees keeps them all). Not in the paper's code; an option
            to test why the minimum loses to averaging on pixels that leave the view (README, "Results").
    """

    reprojection: str = "min"
    automask: bool = True
    automask_noise: float = 1e-5
    automask_warmup_steps: int = 0
    predictive_mask: bool = False
    predictive_mask_weight: float = 0.2
    multiscale: str = "full_res"
    ssim: bool = True
    ssim_weight: float = 0.85
    smoothness: float = 1e-3
    mask_out_of_view: bool = False
    smoothness_scales: str = "all"
    coarse_weight: float = 1.0

    def __post_init__(self) -> None:
        _choice("loss", "reprojection", self.reprojection, ("min", "avg", "random"))
        _choice("loss", "multiscale", self.multiscale, ("full_res", "per_scale", "single"))
        _choice("loss", "smoothness_scales", self.smoothness_scales, ("all", "finest"))
        if self.predictive_mask and self.automask:
            raise ConfigError(
                "loss.predictive_mask = true replaces auto-masking: set loss.automask = false as well "
                "(the reference asserts the same)"
            )
        if not 0.0 <= self.ssim_weight <= 1.0:
            raise ConfigError(f"loss.ssim_weight must be in [0, 1], got {self.ssim_weight}")
        if self.automask_warmup_steps < 0:
            raise ConfigError(f"loss.automask_warmup_steps must be >= 0, got {self.automask_warmup_steps}")
        if not (math.isfinite(self.coarse_weight) and self.coarse_weight >= 0):
            raise ConfigError(f"loss.coarse_weight must be >= 0 (1: the reference's mean over scales), got {self.coarse_weight}")
        if self.smoothness < 0 or self.automask_noise < 0 or self.predictive_mask_weight < 0:
            raise ConfigError("loss weights and loss.automask_noise must be >= 0")


@dataclass(frozen=True)
class DataConfig:
    """Which data, at which size, and how it is augmented.

    Attributes:
        dataset: ``"synthetic"`` (the procedural driving world, rendered on first use) or ``"kitti"``.
        path: dataset root. Empty: for synthetic, the cache folder ``.md2bench_cache/synth/<preset>-<seed>``
            in the working directory; for KITTI, an error that says to set it.
        split: training split name: for KITTI one of ``eigen_zhou``, ``eigen_full``, ``odom``, ``benchmark``
            (shipped lists); for the synthetic world ``synth`` (written beside the data).
        test_split: evaluation split: ``eigen``, ``eigen_benchmark`` for KITTI, ``synth`` for the world.
        synth_preset: which synthetic world to render when the data is absent (``tiny``, ``small``, ``default``).
        synth_seed: seed of the synthetic world (the world, not the training run).
        mode: ``"M"`` monocular (frames 0, -1, +1), ``"S"`` stereo (the other camera, fixed baseline),
            ``"MS"`` both.
        frame_ids: temporal frames for M and MS; must start with 0.
        height: network input height (multiple of 32).
        width: network input width (multiple of 32).
        color_aug: colour jitter (brightness, contrast, saturation ±0.2, hue ±0.1, p = 0.5, one draw per sample).
        flip: random horizontal flip (p = 0.5; swaps the stereo side).
        num_workers: data-loader worker processes (does not change results: per-sample randomness comes from
            (seed, epoch, index)).
        image_ext: ``"auto"`` (jpg where present, else png), ``"png"`` or ``"jpg"``.
    """

    dataset: str = "synthetic"
    path: str = ""
    split: str = "synth"
    test_split: str = "synth"
    synth_preset: str = "small"
    synth_seed: int = 0
    mode: str = "M"
    frame_ids: tuple[int, ...] = (0, -1, 1)
    height: int = 192
    width: int = 640
    color_aug: bool = True
    flip: bool = True
    num_workers: int = 2
    image_ext: str = "auto"

    def __post_init__(self) -> None:
        _choice("data", "dataset", self.dataset, ("synthetic", "kitti"))
        _choice("data", "mode", self.mode, ("M", "S", "MS"))
        _choice("data", "image_ext", self.image_ext, ("auto", "png", "jpg"))
        _choice("data", "synth_preset", self.synth_preset, ("tiny", "small", "default"))
        if self.height % 32 or self.width % 32 or self.height <= 0 or self.width <= 0:
            raise ConfigError(f"data.height and data.width must be positive multiples of 32, got {self.height}×{self.width}")
        if not self.frame_ids or self.frame_ids[0] != 0 or len(set(self.frame_ids)) != len(self.frame_ids):
            raise ConfigError(f"data.frame_ids must start with 0 and have no repeats, got {self.frame_ids}")
        if "M" in self.mode and len(self.frame_ids) < 2:
            raise ConfigError(f"data.mode = {self.mode!r} needs temporal source frames, e.g. data.frame_ids = [0, -1, 1]")
        if self.dataset == "kitti" and self.split == "synth":
            raise ConfigError("data.dataset = 'kitti' needs a KITTI split: eigen_zhou, eigen_full, odom or benchmark")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule and execution.

    Attributes:
        batch_size: images per step.
        lr: Adam learning rate (no weight decay, default betas).
        epochs: number of epochs.
        lr_step_epoch: the learning rate is multiplied by ``lr_gamma`` after this many epochs.
        lr_gamma: decay factor.
        scheduler: ``"paper"``: decay after exactly ``lr_step_epoch`` epochs (the paper's 15 + 5);
            ``"reference"``: the reference code's order (scheduler stepped at the start of each epoch), which
            on PyTorch >= 1.1 decays one epoch early (14 + 6).
        max_steps: stop after this many optimiser steps in total (0: no limit); for smoke runs and tests.
        seed: seed of the run (weights, augmentation, loader workers, tie-break noise).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        amp: ``"bf16"``: bfloat16 autocast on CUDA (on CPU only with ``cpu_amp``); ``"off"``: fp32 everywhere.
            fp16 is not offered: this model family is reported to produce NaNs under fp16.
        cpu_amp: also autocast to bf16 on CPU (with ``amp = "bf16"``). Off by default so that CPU runs are fp32;
            on CPUs with AMX or AVX512-BF16 it is ~1.4x faster (README, Speed). The loss stays fp32 either way.
        channels_last: channels-last memory format for the networks, on CUDA and on CPU (oneDNN's fast path).
        keep_freed_memory: on a CPU device, tell glibc to keep freed memory for reuse instead of unmapping it
            (``md2bench.runtime``; large element-wise ops ~3x faster on this machine, more resident memory).
        compile: ``torch.compile`` the networks (on CPU measured slower here; meant for GPUs).
        compile_loss: ``torch.compile`` the loss (warps, SSIM, smoothness; fuses its element-wise work). The
            first step pays the compilation (~1.5 min on a 2-core CPU); the loss equals the eager one to float
            tolerance and the tie-break noise is drawn outside the compiled code, so the random stream is the
            same.
        log_every: log training losses every this many steps.
        val_batches: validation batches per epoch (0: the whole val split).
        out_dir: where run folders (checkpoints, logs) live; one subfolder per ``run_key``.
        image_log: log a qualitative picture each epoch.
    """

    batch_size: int = 12
    lr: float = 1e-4
    epochs: int = 20
    lr_step_epoch: int = 15
    lr_gamma: float = 0.1
    scheduler: str = "paper"
    max_steps: int = 0
    seed: int = 0
    device: str = "auto"
    amp: str = "bf16"
    cpu_amp: bool = False
    channels_last: bool = True
    keep_freed_memory: bool = True
    compile: bool = False
    compile_loss: bool = False
    log_every: int = 50
    val_batches: int = 0
    out_dir: str = "md2bench_runs"
    image_log: bool = True

    def __post_init__(self) -> None:
        _choice("train", "scheduler", self.scheduler, ("paper", "reference"))
        _choice("train", "amp", self.amp, ("bf16", "off"))
        if self.batch_size < 1 or self.epochs < 1 or self.lr <= 0:
            raise ConfigError("train.batch_size and train.epochs must be >= 1 and train.lr > 0")
        if self.max_steps < 0 or self.log_every < 1 or self.val_batches < 0:
            raise ConfigError("train.max_steps and train.val_batches must be >= 0, train.log_every >= 1")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device = {self.device!r}; choose 'auto', 'cpu', 'cuda' or 'cuda:N'")


# Fields that do not change what a run computes: excluded from run_key.
NON_SEMANTIC = frozenset(
    {
        "name",
        "model.weights_path",
        "data.path",
        "data.num_workers",
        "train.device",
        "train.log_every",
        "train.out_dir",
        "train.image_log",
        "train.compile",
        "train.compile_loss",
        "train.keep_freed_memory",
    }
)

# Fields added after run keys were first handed out, with the value they had implicitly before: a field at
# that value is left out of ``run_key``, so finished runs keep their keys (and are still skipped) when an
# option is added; any other value is part of the key.
KEY_DEFAULTS = {"train.cpu_amp": False, "model.pose_source": "net", "model.init_depth": 0.0, "model.init_from": "", "model.pose_translation_scale": 0.01,
                "loss.automask_warmup_steps": 0, "loss.mask_out_of_view": False,
                "loss.smoothness_scales": "all", "loss.coarse_weight": 1.0}


@dataclass(frozen=True)
class Config:
    """The whole run. ``name`` is the human-readable row name shown in MLflow."""

    name: str = "monodepth2"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.model.pose_source == "gt" and self.data.dataset != "synthetic":
            raise ConfigError(
                "model.pose_source = 'gt' needs exact camera poses, which only the synthetic world has "
                "(data.dataset = 'synthetic'); use model.pose_source = 'net' for KITTI")

    # ----- derived values -------------------------------------------------------------------------------
    @property
    def use_stereo(self) -> bool:
        """True when the other camera of the stereo pair is a source frame (modes S and MS)."""
        return "S" in self.data.mode

    @property
    def temporal_ids(self) -> tuple[int, ...]:
        """Temporal frames loaded per sample, starting with the target 0 (just ``(0,)`` for mode S)."""
        return self.data.frame_ids if "M" in self.data.mode else (0,)

    @property
    def source_ids(self) -> tuple[int | str, ...]:
        """Source frames of the loss in order: temporal sources, then ``"s"`` for the stereo partner."""
        temporal: tuple[int | str, ...] = tuple(self.temporal_ids[1:])
        return temporal + (("s",) if self.use_stereo else ())

    @property
    def frames(self) -> tuple[int | str, ...]:
        """All frames of a sample in loader order: ``(0, *source_ids)``; index i of ``batch["images"]``."""
        return (0,) + self.source_ids

    @property
    def num_sources(self) -> int:
        return len(self.source_ids)

    @property
    def has_temporal_sources(self) -> bool:
        """Temporal source frames take part in the loss (modes M and MS); their poses come from
        ``model.pose_source``."""
        return len(self.temporal_ids) > 1

    @property
    def needs_pose_net(self) -> bool:
        """A pose network is built and trained: temporal sources whose poses it predicts (not stereo-only
        training, not ``model.pose_source = "gt"``)."""
        return self.has_temporal_sources and self.model.pose_source == "net"

    @property
    def loss_scales(self) -> tuple[int, ...]:
        """Scales entering the loss: all of ``model.scales``, or just 0 for ``loss.multiscale = "single"``."""
        return (0,) if self.loss.multiscale == "single" else self.model.scales

    # ----- conversions ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (tuples become lists), the inverse of ``from_dict``."""
        return _to_plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """Flat dotted params for tracking, e.g. ``{"loss.automask": True, "data.height": 192}``."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    out[f"{key}.{sub}"] = v
            else:
                out[key] = value
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml())

    @property
    def run_key(self) -> str:
        """12-hex-digit hash of every field that changes results (see ``NON_SEMANTIC``)."""
        semantic = {
            k: v for k, v in self.flat().items()
            if k not in NON_SEMANTIC and not (k in KEY_DEFAULTS and v == KEY_DEFAULTS[k])
        }
        blob = json.dumps(semantic, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def at_step(self, step: int) -> "Config":
        """The config the loss of optimiser step ``step`` (1-based) runs with: auto-masking off during
        ``loss.automask_warmup_steps``, otherwise ``self`` unchanged."""
        if self.loss.automask and step <= self.loss.automask_warmup_steps:
            return dataclasses.replace(self, loss=dataclasses.replace(self.loss, automask=False))
        return self

    def override(self, overrides: Mapping[str, Any] | Sequence[str]) -> "Config":
        """A new config with dotted overrides applied (``{"loss.automask": False}`` or ``["loss.automask=false"]``)."""
        pairs = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
        data = self.to_dict()
        for dotted, value in pairs.items():
            _set_dotted(data, dotted, value)
        return Config.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "config") -> "Config":
        """Build and validate from a nested dict; unknown keys fail naming the nearest valid key."""
        sections = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in sections:
                raise ConfigError(_unknown(where, key, list(sections)))
            if key == "name":
                kwargs[key] = str(value)
                continue
            sub_cls = _SECTION_TYPES[key]
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: [{key}] must be a table of settings, got {value!r}")
            kwargs[key] = _build_section(sub_cls, key, value, where)
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - defensive
            raise ConfigError(f"{where}: {exc}") from exc


_SECTION_TYPES: dict[str, type] = {
    "model": ModelConfig,
    "loss": LossConfig,
    "data": DataConfig,
    "train": TrainConfig,
}


def valid_keys() -> list[str]:
    """Every dotted key a config, a grid row or a search space may set."""
    keys = ["name"]
    for section, sub_cls in _SECTION_TYPES.items():
        keys += [f"{section}.{f.name}" for f in fields(sub_cls)]
    return keys


def _unknown(where: str, key: str, valid: Sequence[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"{where}: unknown key {key!r}{hint} Valid keys: {', '.join(valid)}"


def _build_section(sub_cls: type, section: str, values: Mapping[str, Any], where: str) -> Any:
    sub_fields = {f.name: f for f in fields(sub_cls)}
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name not in sub_fields:
            raise ConfigError(_unknown(where, f"{section}.{name}", [f"{section}.{n}" for n in sub_fields]))
        kwargs[name] = _coerce(section, name, sub_fields[name], value)
    return sub_cls(**kwargs)


def _coerce(section: str, name: str, f: dataclasses.Field, value: Any) -> Any:
    default = f.default if f.default is not dataclasses.MISSING else None
    label = f"{section}.{name}"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{label} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{label} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError as exc:
            raise ConfigError(f"{label} must be an integer, got {value!r}") from exc
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ConfigError(f"{label} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{label} must be a number, got {value!r}") from exc
        if not math.isfinite(number):
            raise ConfigError(f"{label} must be a finite number, got {value!r}; give a real value, e.g. {default!r}")
        return number
    if isinstance(default, str):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{label} must be a string, got {value!r}")
        return str(value)
    # tuple fields (default_factory is not used for them; defaults are tuples)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{label} must be a list of integers, got {value!r}")
        try:
            return tuple(int(v) for v in value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{label} must be a list of integers, got {value!r}") from exc
    return value


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    if dotted == "name":
        data["name"] = value
        return
    section, _, key = dotted.partition(".")
    if section not in _SECTION_TYPES or not key:
        raise ConfigError(_unknown("override", dotted, valid_keys()))
    if key not in {f.name for f in fields(_SECTION_TYPES[section])}:
        raise ConfigError(_unknown("override", dotted, valid_keys()))
    data.setdefault(section, {})[key] = value


def parse_value(text: str) -> Any:
    """Parse one override value as a TOML literal (``true``, ``1e-4``, ``[0, -1, 1]``), else keep the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["loss.automask=false", "train.lr=1e-4"]`` -> ``{"loss.automask": False, "train.lr": 1e-4}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. loss.automask=false")
        key, _, text = item.partition("=")
        key = key.strip()
        if key != "name" and key not in valid_keys():
            raise ConfigError(_unknown("override", key, valid_keys()))
        out[key] = parse_value(text.strip())
    return out


def flat_to_nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"loss.automask": False}`` -> ``{"loss": {"automask": False}}`` (validating the keys)."""
    data: dict[str, Any] = {}
    for dotted, value in flat.items():
        _set_dotted(data, dotted, value)
    return data


PRESETS = ("paper", "synth", "tiny")


def preset_path(name: str) -> Path:
    """Path of a packaged preset TOML (``paper``, ``synth``, ``tiny``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return Path(str(resources.files("md2bench") / "presets" / f"{name}.toml"))


def load_config(source: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> Config:
    """Load a config from a TOML file or a preset name (default: the ``synth`` preset), then apply overrides.

    Args:
        source: a TOML path, a preset name (``paper``, ``synth``, ``tiny``), or None for ``synth``.
        overrides: dotted ``key=value`` strings or a mapping of dotted keys to values.
    """
    if source is None:
        source = "synth"
    path = Path(source)
    if not path.exists():
        if str(source) in PRESETS:
            path = preset_path(str(source))
        else:
            raise ConfigError(f"config {str(source)!r} is neither a file nor a preset ({', '.join(PRESETS)})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    cfg = Config.from_dict(data, where=str(path))
    if overrides:
        cfg = cfg.override(overrides)
    return cfg
