"""Pose networks (REFERENCE.md §4.3-4.5) and ``build_models(cfg)``, the one config -> networks mapping.

Three pose designs (``model.pose_net``):

- ``separate`` (Monodepth2): its own ResNet encoder on ``n`` stacked images + ``PoseDecoder`` on one feature set.
  With ``pairs`` the decoder predicts k = 2 transforms as the reference does, of which only the first is used;
  with ``all`` it predicts k = n - 1 (one per temporal source; 2 for the default three frames, as the reference).
- ``shared`` (arXiv v1): ``PoseDecoder`` on ``n`` feature sets from the depth encoder, k = n - 1.
- ``posecnn`` (Wang et al.): ``PoseCNN`` on ``n`` stacked images (no input normalisation), k = n - 1.

``n`` is 2 for ``model.pose_input = "pairs"`` and ``len(cfg.temporal_ids)`` for ``"all"``. Every pose net returns
``(axisangle, translation)``, each B×k×1×3, already multiplied by 0.01.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from md2bench.models.depth import DepthDecoder
from md2bench.models.encoder import ResnetEncoder, load_imagenet_weights

if TYPE_CHECKING:
    from md2bench.config import Config

# Pose outputs are scaled down so that the initial prediction is close to the identity (reference: 0.01).
POSE_SCALE = 0.01


def _split_pose(out: Tensor, k: int, translation_scale: float = POSE_SCALE) -> tuple[Tensor, Tensor]:
    """B×6k pose vectors -> (axisangle B×k×1×3, translation B×k×1×3): the axis-angle scaled by ``POSE_SCALE``, the
    translation by ``translation_scale`` (the reference: also ``POSE_SCALE``)."""
    out = out.reshape(-1, k, 1, 6)  # B×6k -> B×k×1×6
    return POSE_SCALE * out[..., :3], translation_scale * out[..., 3:]


class PoseDecoder(nn.Module):
    """Relative poses from the last (1/32) map of one or more encoder feature sets.

    Squeeze 1×1 (C_last -> 256) + ReLU on each set (one shared conv), concatenate, 3×3 conv -> 256 + ReLU, 3×3 conv
    -> 256 + ReLU, 1×1 conv -> 6k, mean over H and W, ×0.01.

    Args:
        num_ch_enc: channels of the encoder outputs; only the last (512 for ResNet-18, 2048 for ResNet-50) is used.
        num_input_features: feature sets per call (1 for the separate encoder, n for the shared one).
        num_frames_to_predict: k, transforms predicted per call.
    """

    def __init__(self, num_ch_enc: Sequence[int], num_input_features: int, num_frames_to_predict: int,
                 translation_scale: float = POSE_SCALE) -> None:
        super().__init__()
        self.translation_scale = translation_scale
        if num_input_features < 1 or num_frames_to_predict < 1:
            raise ValueError(
                f"num_input_features and num_frames_to_predict must be >= 1, got {num_input_features}, "
                f"{num_frames_to_predict}"
            )
        self.num_ch_enc = tuple(num_ch_enc)
        self.num_input_features = num_input_features
        self.num_frames_to_predict = num_frames_to_predict
        self.squeeze = nn.Conv2d(self.num_ch_enc[-1], 256, kernel_size=1)
        self.pose0 = nn.Conv2d(num_input_features * 256, 256, kernel_size=3, padding=1)
        self.pose1 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.pose2 = nn.Conv2d(256, 6 * num_frames_to_predict, kernel_size=1)
        self.relu = nn.ReLU()

    def forward(self, feature_sets: Sequence[Sequence[Tensor]]) -> tuple[Tensor, Tensor]:
        """Predict poses.

        Args:
            feature_sets: ``num_input_features`` encoder outputs (lists of five maps); only each list's last map,
                B×num_ch_enc[-1]×h×w, is used.

        Returns:
            (axisangle, translation), each B×k×1×3.
        """
        if len(feature_sets) != self.num_input_features:
            raise ValueError(
                f"PoseDecoder expects {self.num_input_features} feature set(s), got {len(feature_sets)}"
            )
        last = [features[-1] for features in feature_sets]
        for f in last:
            if f.dim() != 4 or f.shape[1] != self.num_ch_enc[-1]:
                raise ValueError(
                    f"PoseDecoder expects last feature maps B×{self.num_ch_enc[-1]}×h×w, got {tuple(f.shape)}"
                )
        x = torch.cat([self.relu(self.squeeze(f)) for f in last], dim=1)
        x = self.relu(self.pose0(x))
        x = self.relu(self.pose1(x))
        x = self.pose2(x).mean(dim=(2, 3))
        return _split_pose(x, self.num_frames_to_predict, self.translation_scale)


class PoseCNN(nn.Module):
    """Plain conv pose net on ``num_input_frames`` stacked images (REFERENCE.md §4.4); predicts k = n - 1 poses.

    Seven stride-2 convs with ReLU (3n -> 16 7×7, 16 -> 32 5×5, then 3×3 to 64, 128, 256, 256, 256), 1×1 conv to
    6(n - 1), mean over H and W, ×0.01. Inputs are not normalised.

    Args:
        num_input_frames: n >= 2 images per call.
    """

    def __init__(self, num_input_frames: int, translation_scale: float = POSE_SCALE) -> None:
        super().__init__()
        if num_input_frames < 2:
            raise ValueError(f"PoseCNN needs at least 2 input frames, got {num_input_frames}")
        self.num_input_frames = num_input_frames
        self.num_frames_to_predict = num_input_frames - 1
        self.translation_scale = translation_scale
        # (in, out, kernel); padding = kernel // 2, stride 2 throughout.
        spec = [
            (3 * num_input_frames, 16, 7),
            (16, 32, 5),
            (32, 64, 3),
            (64, 128, 3),
            (128, 256, 3),
            (256, 256, 3),
            (256, 256, 3),
        ]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride=2, padding=k // 2) for i, o, k in spec)
        self.pose_conv = nn.Conv2d(256, 6 * self.num_frames_to_predict, kernel_size=1)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Predict poses.

        Args:
            x: B×3n×H×W images in [0, 1], stacked along channels.

        Returns:
            (axisangle, translation), each B×(n-1)×1×3.
        """
        channels = 3 * self.num_input_frames
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f"PoseCNN expects B×{channels}×H×W stacked images, got shape {tuple(x.shape)}")
        for conv in self.convs:
            x = self.relu(conv(x))
        x = self.pose_conv(x).mean(dim=(2, 3))
        return _split_pose(x, self.num_frames_to_predict, self.translation_scale)


def num_pose_frames(cfg: Config) -> int:
    """Images (or feature sets) per pose-net call: 2 for ``pairs``, ``len(cfg.temporal_ids)`` for ``all``."""
    return 2 if cfg.model.pose_input == "pairs" else len(cfg.temporal_ids)


def build_models(cfg: Config) -> nn.ModuleDict:
    """All networks a config trains, on the CPU.

    Keys: ``encoder`` (ResNet, 1 image), ``depth`` (DepthDecoder at ``cfg.model.scales``); when
    ``cfg.needs_pose_net``: ``pose`` and, for ``model.pose_net = "separate"``, ``pose_encoder`` (ResNet on n
    images); with ``loss.predictive_mask``: ``mask`` (DepthDecoder with ``cfg.num_sources`` channels).
    ``model.pretrained = "imagenet"`` loads the ResNets from ``load_imagenet_weights(model.num_layers,
    model.weights_path)``; ``"scratch"`` keeps torchvision's random initialisation (seed torch beforehand).

    Args:
        cfg: the run's config.

    Returns:
        The networks as a ``torch.nn.ModuleDict``.

    Raises:
        WeightsNotFoundError: ImageNet weights requested but the file is absent.
    """
    m = cfg.model
    imagenet_state = load_imagenet_weights(m.num_layers, m.weights_path) if m.pretrained == "imagenet" else None
    models = nn.ModuleDict()
    models["encoder"] = ResnetEncoder(m.num_layers, num_input_images=1, imagenet_state=imagenet_state)
    num_ch_enc = models["encoder"].num_ch_enc
    models["depth"] = DepthDecoder(num_ch_enc, scales=m.scales, num_output_channels=1)
    if m.init_depth > 0:  # sigmoid value whose disparity is 1 / init_depth (md2bench.geometry.disp_to_depth)
        min_disp, max_disp = 1.0 / m.max_depth, 1.0 / m.min_depth
        models["depth"].init_output((1.0 / m.init_depth - min_disp) / (max_disp - min_disp))
    if cfg.needs_pose_net:
        n = num_pose_frames(cfg)
        if m.pose_net == "separate":
            models["pose_encoder"] = ResnetEncoder(m.num_layers, num_input_images=n, imagenet_state=imagenet_state)
            k = 2 if m.pose_input == "pairs" else n - 1  # reference: 2 for pairs, only the first used
            models["pose"] = PoseDecoder(
                models["pose_encoder"].num_ch_enc, num_input_features=1, num_frames_to_predict=k,
                translation_scale=m.pose_translation_scale,
            )
        elif m.pose_net == "shared":
            models["pose"] = PoseDecoder(num_ch_enc, num_input_features=n, num_frames_to_predict=n - 1,
                                         translation_scale=m.pose_translation_scale)
        else:  # posecnn
            models["pose"] = PoseCNN(num_input_frames=n, translation_scale=m.pose_translation_scale)
    if cfg.loss.predictive_mask:
        models["mask"] = DepthDecoder(num_ch_enc, scales=m.scales, num_output_channels=cfg.num_sources)
    return models
