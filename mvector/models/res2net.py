"""Res2Net (Gao et al., TPAMI 2021) bottleneck network over the (frequency, time) plane, length-masked.

Default size: stem 3×3 conv with ``channels=32``; four stages of Res2Net bottleneck blocks,
``layers=(3, 4, 6, 3)``, with 32, 64, 128, 256 planes, strides 1, 2, 2, 2 on both axes. A bottleneck block:
1×1 conv to ``scale`` slices of ``⌊planes·base_width/64⌋`` channels (``base_width=26``, ``scale=4``: the
"26w×4s" design), 3×3 convs on ``scale-1`` slices with hierarchical residual connections (the first block of a
stage convolves each slice independently and average-pools the last one), 1×1 conv to ``expansion·planes``
channels (``expansion=2``, so the last stage has 512 channels), shortcut. The last map, 512 × ⌈F/8⌉, is
flattened into the pooling input, so any feature size works.

>>> import torch
>>> model = Res2Net(input_size=40, channels=8, layers=(1, 1, 1, 1), embd_dim=16).eval()
>>> model(torch.randn(2, 30, 40), torch.tensor([30, 17])).shape
torch.Size([2, 16])
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from mvector.errors import ConfigError
from mvector.models.registries import BACKBONES
from mvector.models.resnet2d import ResNet2dBase, strided_lengths_mask

__all__ = ["Res2Net", "Res2Bottleneck"]


class Res2Bottleneck(nn.Module):
    """Res2Net bottleneck block, length-masked; ``forward(x, lengths, mask) -> (y, lengths, mask)``.

    >>> block = Res2Bottleneck(8, 8, stride=2, stage=True).eval()
    >>> y, n, m = block(torch.randn(1, 8, 6, 9), torch.tensor([9]), None)
    >>> tuple(y.shape), n.tolist()
    ((1, 16, 3, 5), [5])
    """

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        stage: bool = False,
        base_width: int = 26,
        scale: int = 4,
        expansion: int = 2,
    ):
        super().__init__()
        if scale < 2:
            raise ConfigError(f"Res2Net: scale must be >= 2, got {scale}")
        self.stride = stride
        self.stage = stage
        self.width = max(1, planes * base_width // 64)
        out_channels = planes * expansion
        self.conv1 = nn.Conv2d(in_channels, self.width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.width * scale)
        self.convs = nn.ModuleList(
            nn.Conv2d(self.width, self.width, 3, stride=stride, padding=1, bias=False) for _ in range(scale - 1)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(self.width) for _ in range(scale - 1))
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if stage else None
        self.conv3 = nn.Conv2d(self.width * scale, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut: Optional[nn.Module] = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(
        self, x: Tensor, lengths: Optional[Tensor], mask: Optional[Tensor]
    ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        parts = torch.relu_(self.bn1(self.conv1(x))).split(self.width, dim=1)
        mask_in = mask
        outs = []
        y: Optional[Tensor] = None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            inp = parts[i] if (self.stage or y is None) else parts[i] + y
            if mask_in is not None:
                inp = inp * mask_in
            # A channel slice of an NHWC map is strided; oneDNN's fast path wants it dense.
            y = conv(inp.contiguous(memory_format=torch.channels_last))
            if i == 0:
                lengths, mask = strided_lengths_mask(y, lengths, mask, self.stride)
            y = torch.relu_(bn(y))
            outs.append(y)
        last = parts[-1]
        if self.pool is not None:
            last = self.pool(last if mask_in is None else last * mask_in)
        outs.append(last)
        h = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        h = torch.relu_(h + (x if self.shortcut is None else self.shortcut(x)))
        if mask is not None:
            h = h * mask
        return h, lengths, mask


@BACKBONES.register("Res2Net", aliases=())
class Res2Net(ResNet2dBase):
    """Res2Net backbone: ``[B, frames, input_size]`` (+ frame counts) → ``[B, embd_dim]``.

    Args:
        input_size: feature dimension (any size; the pooling input is 8·expansion·channels × ⌈input_size/8⌉).
        embd_dim: embedding size.
        pooling_type: ASP, SAP, TSP or TAP.
        channels: planes of the first stage (doubled at each later stage).
        layers: bottleneck blocks per stage.
        base_width: slice width per 64 planes (slice width = ⌊planes·base_width/64⌋).
        scale: number of slices.
        expansion: bottleneck output channels / planes.
        attention_channels: width of the pooling attention (ASP, SAP).
        pooling_conf: other pooling keyword arguments.

    >>> m = Res2Net(80, channels=8, layers=(1, 1, 1, 1), embd_dim=8, pooling_type="TAP")
    >>> m.stats_channels
    1280
    """

    def __init__(
        self,
        input_size: int,
        embd_dim: int = 192,
        pooling_type: str = "ASP",
        channels: int = 32,
        layers: Sequence[int] = (3, 4, 6, 3),
        base_width: int = 26,
        scale: int = 4,
        expansion: int = 2,
        attention_channels: int = 128,
        pooling_conf: Optional[Mapping[str, Any]] = None,
    ):
        self.base_width = int(base_width)
        self.scale = int(scale)
        self.expansion = int(expansion)
        super().__init__(input_size, embd_dim, pooling_type, channels, layers, attention_channels, pooling_conf)

    def make_block(self, in_channels: int, planes: int, stride: int, first: bool) -> tuple[nn.Module, int]:
        block = Res2Bottleneck(in_channels, planes, stride, first, self.base_width, self.scale, self.expansion)
        return block, planes * self.expansion
