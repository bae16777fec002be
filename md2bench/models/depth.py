"""U-Net disparity decoder of Monodepth2 (REFERENCE.md §4.2); also the predictive-mask net (§4.6).

For level i = 4 down to 0: ConvBlock(in -> dec[i]) with in = the last encoder map's channels at i = 4, else
dec[i+1]; nearest 2× upsample; concatenate encoder map i-1 when i > 0; ConvBlock(dec[i] + skip -> dec[i]). At every
requested scale s a reflection-padded 3×3 conv to ``num_output_channels`` plus a sigmoid gives the output at
1/2^s of the input resolution. ConvBlock = reflection pad 1 + 3×3 conv (bias) + ELU. Default PyTorch init.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_CH_DEC: tuple[int, ...] = (16, 32, 64, 128, 256)
_LEVELS = len(NUM_CH_DEC)


class Conv3x3(nn.Sequential):
    """Reflection pad 1 + 3×3 conv (with bias): B×C_in×H×W -> B×C_out×H×W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, kernel_size=3))


class ConvBlock(nn.Sequential):
    """Conv3x3 + ELU: B×C_in×H×W -> B×C_out×H×W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(Conv3x3(in_channels, out_channels), nn.ELU())


class DepthDecoder(nn.Module):
    """Sigmoid outputs at several scales from the five encoder feature maps.

    Args:
        num_ch_enc: channels of the five encoder outputs (``encoder.num_ch_enc``).
        scales: output scales, each in 0..4; scale s has 1/2^s of the input resolution.
        num_output_channels: 1 for disparity; N (one per source frame) for the predictive mask.
    """

    def __init__(
        self,
        num_ch_enc: Sequence[int],
        scales: Sequence[int] = (0, 1, 2, 3),
        num_output_channels: int = 1,
    ) -> None:
        super().__init__()
        if len(num_ch_enc) != _LEVELS:
            raise ValueError(f"num_ch_enc must list {_LEVELS} encoder channel counts, got {tuple(num_ch_enc)}")
        if not scales or any(s not in range(_LEVELS) for s in scales) or len(set(scales)) != len(scales):
            raise ValueError(f"scales must be distinct values in 0..{_LEVELS - 1}, got {tuple(scales)}")
        if num_output_channels < 1:
            raise ValueError(f"num_output_channels must be >= 1, got {num_output_channels}")
        self.num_ch_enc = tuple(num_ch_enc)
        self.num_ch_dec = NUM_CH_DEC
        self.scales = tuple(scales)
        self.num_output_channels = num_output_channels

        upconv_in: list[nn.Module] = []
        upconv_out: list[nn.Module] = []
        for i in range(_LEVELS):
            in_ch = self.num_ch_enc[-1] if i == _LEVELS - 1 else NUM_CH_DEC[i + 1]
            upconv_in.append(ConvBlock(in_ch, NUM_CH_DEC[i]))
            skip_ch = self.num_ch_enc[i - 1] if i > 0 else 0
            upconv_out.append(ConvBlock(NUM_CH_DEC[i] + skip_ch, NUM_CH_DEC[i]))
        # Index i of each list is level i.
        self.upconv_in = nn.ModuleList(upconv_in)
        self.upconv_out = nn.ModuleList(upconv_out)
        self.outconvs = nn.ModuleDict({str(s): Conv3x3(NUM_CH_DEC[s], num_output_channels) for s in self.scales})

    def forward(self, features: Sequence[Tensor]) -> dict[int, Tensor]:
        """Decode.

        Args:
            features: the encoder's five maps, B×num_ch_enc[i]×H/2^(i+1)×W/2^(i+1).

        Returns:
            ``{s: B×num_output_channels×H/2^s×W/2^s}`` in (0, 1) for every s in ``scales`` (in that order).
        """
        if len(features) != _LEVELS:
            raise ValueError(f"DepthDecoder expects {_LEVELS} encoder feature maps, got {len(features)}")
        channels = tuple(f.shape[1] for f in features)
        if channels != self.num_ch_enc:
            raise ValueError(f"encoder feature channels {channels} differ from the declared {self.num_ch_enc}")
        outputs: dict[int, Tensor] = {}
        x = features[-1]
        for i in range(_LEVELS - 1, -1, -1):
            x = self.upconv_in[i](x)
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            if i > 0:
                x = torch.cat([x, features[i - 1]], dim=1)
            x = self.upconv_out[i](x)
            if i in self.scales:
                outputs[i] = torch.sigmoid(self.outconvs[str(i)](x))
        return {s: outputs[s] for s in self.scales}

    def init_output(self, value: float) -> None:
        """Shift every output head's bias by ``logit(value)``, so that the untrained decoder outputs about
        ``value`` in (0, 1) instead of about 0.5 (the weights keep PyTorch's default initialisation)."""
        if not 0.0 < value < 1.0:
            raise ValueError(f"the output must start inside (0, 1), got {value}")
        with torch.no_grad():
            for conv in self.outconvs.values():
                conv[-1].bias.add_(math.log(value / (1.0 - value)))
