"""ResNet encoder of Monodepth2 (REFERENCE.md §4.1), with multi-image input and local ImageNet weights.

The encoder is torchvision's ResNet-18 or ResNet-50 (built with ``weights=None``) without its classifier head.
It normalises its input inside, ``(x - 0.45) / 0.225`` with one scalar for all channels, and returns five
feature maps: ``relu(bn1(conv1(x)))`` at 1/2, ``layer1`` (after the max-pool) at 1/4 and ``layer2``..``layer4``
at 1/8, 1/16, 1/32.

For the separate pose network the same ResNet takes ``n`` images stacked along channels (``3n`` input
channels). With ImageNet weights its ``conv1`` kernel is the ImageNet kernel repeated ``n`` times along the
input-channel axis and divided by ``n``, so ``n`` identical images give exactly the single-image response.

Weights are read from a local file only (never downloaded at run time): an explicit ``model.weights_path`` or
torch's hub cache, ``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth`` / ``resnet50-0676ba61.pth`` (the file
names torchvision's ``IMAGENET1K_V1`` weights download to).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet

# Registries: ResNet depth -> constructor, feature channels, torchvision's IMAGENET1K_V1 file name.
_RESNETS: dict[int, Callable[..., resnet.ResNet]] = {18: resnet.resnet18, 50: resnet.resnet50}
NUM_CH_ENC: dict[int, tuple[int, ...]] = {
    18: (64, 64, 128, 256, 512),  # BasicBlock, expansion 1
    50: (64, 256, 512, 1024, 2048),  # Bottleneck, expansion 4
}
WEIGHTS_FILES: dict[int, str] = {18: "resnet18-f37072fd.pth", 50: "resnet50-0676ba61.pth"}
STRIDES: tuple[int, ...] = (2, 4, 8, 16, 32)

# Input normalisation of the reference (one scalar mean/std for all channels, inputs in [0, 1]).
_MEAN = 0.45
_STD = 0.225


class WeightsNotFoundError(FileNotFoundError):
    """The ImageNet weights file is not on disk (md2bench never downloads it at run time)."""


def _check_num_layers(num_layers: int) -> None:
    if num_layers not in _RESNETS:
        raise ValueError(f"num_layers must be one of {sorted(_RESNETS)}, got {num_layers!r}")


def weights_file_name(num_layers: int) -> str:
    """File name of torchvision's ImageNet (``IMAGENET1K_V1``) weights for ResNet-``num_layers``."""
    _check_num_layers(num_layers)
    return WEIGHTS_FILES[num_layers]


def hub_cache_path(num_layers: int) -> Path:
    """Where torch's hub cache keeps the weights: ``<torch.hub.get_dir()>/checkpoints/<file>``.

    ``torch.hub.get_dir()`` is ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``), read at call time.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_file_name(num_layers)


def load_imagenet_weights(num_layers: int, weights_path: str | Path = "") -> dict[str, Tensor]:
    """Read torchvision's ImageNet ResNet state dict from a local file.

    Args:
        num_layers: 18 or 50.
        weights_path: explicit file; empty means torch's hub cache (see ``hub_cache_path``).

    Returns:
        The state dict (CPU tensors), classifier ``fc.*`` entries included, as torchvision saved it.

    Raises:
        WeightsNotFoundError: the file does not exist; the message says where to put it and how to avoid it.
        ValueError: the file is not a state dict of tensors.
    """
    file_name = weights_file_name(num_layers)
    cache_path = hub_cache_path(num_layers)
    path = Path(weights_path).expanduser() if str(weights_path) else cache_path
    if not path.is_file():
        where = f"model.weights_path = {str(weights_path)!r}" if str(weights_path) else "torch's hub cache"
        raise WeightsNotFoundError(
            f"ImageNet weights for ResNet-{num_layers} not found at {path} ({where}); md2bench never downloads "
            f"them at run time. Do one of:\n"
            f"  - put the file {file_name} in torch's hub cache: {cache_path} "
            f"(the folder is $TORCH_HOME/hub/checkpoints; on a machine with internet access "
            f"`python -c \"import torchvision; torchvision.models.resnet{num_layers}(weights='IMAGENET1K_V1')\"` "
            f"writes it there, or download https://download.pytorch.org/models/{file_name});\n"
            f"  - pass the file explicitly: --set model.weights_path=/path/to/{file_name};\n"
            f"  - train without ImageNet weights: --set model.pretrained=scratch."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"{path} is not a state dict of tensors (got {type(state).__name__}); expected torchvision's "
            f"{file_name}"
        )
    return dict(state)


class ResnetEncoder(nn.Module):
    """ResNet feature encoder for ``num_input_images`` stacked RGB images.

    Args:
        num_layers: 18 or 50.
        num_input_images: images stacked along channels (1 for depth; 2 or 3 for the separate pose encoder).
        imagenet_state: torchvision ImageNet state dict to start from (see ``load_imagenet_weights``); None
            keeps torchvision's random initialisation (Kaiming-normal fan_out convs, BN weight 1, bias 0).

    Attributes:
        num_ch_enc: channels of the five outputs.
        strides: downsampling factor of the five outputs, ``(2, 4, 8, 16, 32)``.
    """

    def __init__(
        self,
        num_layers: int = 18,
        num_input_images: int = 1,
        imagenet_state: Mapping[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        _check_num_layers(num_layers)
        if num_input_images < 1:
            raise ValueError(f"num_input_images must be >= 1, got {num_input_images}")
        self.num_layers = num_layers
        self.num_input_images = num_input_images
        self.num_ch_enc: tuple[int, ...] = NUM_CH_ENC[num_layers]
        self.strides: tuple[int, ...] = STRIDES

        net = _RESNETS[num_layers](weights=None)
        if num_input_images == 1:
            self.conv1 = net.conv1
        else:
            self.conv1 = nn.Conv2d(3 * num_input_images, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        # The classifier (avgpool, fc) is not kept: it is unused and would get no gradient.
        if imagenet_state is not None:
            self.load_imagenet_state_dict(imagenet_state)

    def load_imagenet_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load a torchvision ImageNet state dict (``fc.*`` ignored; conv1 replicated for multi-image input).

        Args:
            state: torchvision ResNet state dict of the same depth, conv1 weight 64×3×7×7.
        """
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        n = self.num_input_images
        if n > 1 and "conv1.weight" in state:
            # Repeat the 64×3×7×7 kernel n times along input channels (-> 64×3n×7×7) and divide by n, so that n
            # identical images give the single-image response.
            state["conv1.weight"] = state["conv1.weight"].repeat(1, n, 1, 1) / n
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"the weights do not fit ResNet-{self.num_layers} (expected torchvision's "
                f"{WEIGHTS_FILES[self.num_layers]}; is model.num_layers right?): {exc}"
            ) from exc

    def forward(self, x: Tensor) -> list[Tensor]:
        """Encode images.

        Args:
            x: B×3n×H×W images in [0, 1] (n = ``num_input_images``), H and W multiples of 32.

        Returns:
            Five feature maps, B×num_ch_enc[i]×H/strides[i]×W/strides[i].
        """
        channels = 3 * self.num_input_images
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(
                f"ResnetEncoder expects B×{channels}×H×W images ({self.num_input_images} RGB image(s) stacked "
                f"along channels), got shape {tuple(x.shape)}"
            )
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(
                f"image height and width must be multiples of 32 (the decoder's skips need it), got "
                f"{x.shape[-2]}×{x.shape[-1]}; set data.height / data.width accordingly"
            )
        x = (x - _MEAN) / _STD
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4]
