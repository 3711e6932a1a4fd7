"""ResNetSE: a ResNet34-style 2-D network with squeeze-excitation, over the (frequency, time) plane.

Default size: stem 3×3 conv with ``channels=32``; four stages of basic residual blocks (two 3×3 convs),
``layers=(3, 4, 6, 3)`` blocks with 32, 64, 128, 256 channels, strides 1, 2, 2, 2 on both axes;
squeeze-excitation (reduction ``se_reduction=8``) on each block's residual branch. The last map, 256 channels
× ⌈F/8⌉ bins, is flattened into the pooling input, so any feature size works. Frame counts are tracked through
the strides and padded frames are zeroed before each 3×3 conv (see :class:`~mvector.models.common.ResNet2dBase`).

>>> import torch
>>> model = ResNetSE(input_size=40, channels=4, layers=(1, 1, 1, 1), embd_dim=16).eval()
>>> model(torch.randn(2, 30, 40), torch.tensor([30, 17])).shape
torch.Size([2, 16])
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from mvector.models.registries import BACKBONES
from mvector.models.resnet2d import ResNet2dBase, SqueezeExcite2d, strided_lengths_mask

__all__ = ["ResNetSE", "SEBasicBlock"]


class SEBasicBlock(nn.Module):
    """Basic residual block (3×3 conv → BN → ReLU → 3×3 conv → BN → SE, + shortcut, ReLU), length-masked.

    ``forward(x, lengths, mask)`` returns ``(y, lengths, mask)`` at the output time resolution.

    >>> block = SEBasicBlock(4, 8, stride=2).eval()
    >>> y, n, m = block(torch.randn(1, 4, 6, 9), torch.tensor([9]), None)
    >>> tuple(y.shape), n.tolist()
    ((1, 8, 3, 5), [5])
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1, se_reduction: Optional[int] = 8):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = SqueezeExcite2d(channels, se_reduction) if se_reduction else None
        self.shortcut: Optional[nn.Module] = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(
        self, x: Tensor, lengths: Optional[Tensor], mask: Optional[Tensor]
    ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        h = self.conv1(x)
        lengths, mask = strided_lengths_mask(h, lengths, mask, self.stride)
        h = torch.relu_(self.bn1(h))
        if mask is not None:
            h = h * mask
        h = self.bn2(self.conv2(h))
        if self.se is not None:
            h = self.se(h, mask)
        h = torch.relu_(h + (x if self.shortcut is None else self.shortcut(x)))
        if mask is not None:
            h = h * mask
        return h, lengths, mask


@BACKBONES.register("ResNetSE", aliases=("ResNet",))
class ResNetSE(ResNet2dBase):
    """ResNet34-style SE-ResNet backbone: ``[B, frames, input_size]`` (+ frame counts) → ``[B, embd_dim]``.

    Args:
        input_size: feature dimension (any size; the pooling input is 8·channels × ⌈input_size/8⌉).
        embd_dim: embedding size.
        pooling_type: ASP, SAP, TSP or TAP.
        channels: channels of the first stage (doubled at each later stage).
        layers: residual blocks per stage.
        se_reduction: squeeze-excitation reduction (0 or None: no SE, a plain ResNet).
        attention_channels: width of the pooling attention (ASP, SAP).
        pooling_conf: other pooling keyword arguments.

    >>> m = ResNetSE(64, channels=4, layers=(1, 1, 1, 1), embd_dim=8, pooling_type="TSP")
    >>> m.stats_channels, m.embd_dim
    (256, 8)
    """

    def __init__(
        self,
        input_size: int,
        embd_dim: int = 192,
        pooling_type: str = "ASP",
        channels: int = 32,
        layers: Sequence[int] = (3, 4, 6, 3),
        se_reduction: Optional[int] = 8,
        attention_channels: int = 128,
        pooling_conf: Optional[Mapping[str, Any]] = None,
    ):
        self.se_reduction = se_reduction
        super().__init__(input_size, embd_dim, pooling_type, channels, layers, attention_channels, pooling_conf)

    def make_block(self, in_channels: int, planes: int, stride: int, first: bool) -> tuple[nn.Module, int]:
        return SEBasicBlock(in_channels, planes, stride, self.se_reduction), planes
