"""Networks of Monodepth2: ResNet encoder, U-Net depth/mask decoder, pose nets, and ``build_models(cfg)``."""

from md2bench.models.depth import DepthDecoder
from md2bench.models.encoder import ResnetEncoder, WeightsNotFoundError, load_imagenet_weights
from md2bench.models.pose import PoseCNN, PoseDecoder, build_models, num_pose_frames

__all__ = [
    "DepthDecoder",
    "PoseCNN",
    "PoseDecoder",
    "ResnetEncoder",
    "WeightsNotFoundError",
    "build_models",
    "load_imagenet_weights",
    "num_pose_frames",
]
