"""CAM++ (Wang et al., "CAM++: A Fast and Efficient Network for Speaker Verification Using Context-Aware
Masking", Interspeech 2023, arXiv 2303.00332), length-masked.

Layout, at the default sizes (those of 3D-Speaker's released checkpoints):

* **FCM front end** (``head``): the features as a one-channel image ``[B, 1, F, T]``; a 3×3 conv to
  ``fcm_channels=32``; two stages of two residual blocks (3×3 convs, the first block of each stage strided by 2
  along frequency only, with a 1×1 projection shortcut); a last 3×3 conv strided by 2 along frequency. The map
  ``[B, 32, F/8, T]`` is flattened to ``32·⌈F/8⌉`` channels per frame (320 for 80 bins). Time is never strided.
* **D-TDNN trunk** (``xvector``): a 5-frame TDNN layer to ``init_channels=128`` channels with time stride 2;
  three densely connected blocks of ``num_layers=(12, 24, 16)`` layers with dilations ``(1, 2, 2)``. Each layer is
  BN-ReLU → 1×1 conv to ``bn_size·growth_rate=128`` → BN-ReLU → a CAM layer, and its ``growth_rate=32`` output
  channels are appended to its input. A transition layer (BN-ReLU → 1×1 conv) halves the channels after each
  block (128+12·32=512 → 256, 256+24·32=1024 → 512, 512+16·32=1024 → 512), then BN-ReLU.
* **CAM layer** (context-aware masking): a ``kernel_size``-frame dilated conv gives the local output ``y``; the
  utterance mean plus the mean of the ``seg_len=100``-frame segment a frame lies in, through a bottleneck
  (1×1 conv to half the width, ReLU, 1×1 conv, sigmoid), give a per-channel mask ``m``; the output is ``y·m``.
  The bottleneck runs once per segment, not once per frame (the context is constant within a segment).
* **Pooling and embedding**: mean and standard deviation over time (``pooling_type="TSP"``, with Bessel's
  correction as in 3D-Speaker; the other poolings of :mod:`mvector.models.pooling` also work), then a linear
  layer to ``embd_dim`` and a batch norm without scale and shift.

Every convolution is bias-free except the CAM bottleneck's. Padded frames are zeroed in front of every
operation that mixes frames (the 2-D 3×3 convs, the strided TDNN conv, each CAM layer's local conv and its
utterance/segment means, the pooling), so a clip gives the same embedding alone or padded in a batch.

The module and parameter names are those of 3D-Speaker's ``CAMPPlus`` (``head.layer1.0.conv1.weight``,
``xvector.block1.tdnnd1.cam_layer.linear_local.weight``, ...), so its state dicts load unchanged: at 80 input
features and ``embd_dim=192`` the model has 937 tensors and 6.85 M parameters (6.93 M values with the batch-norm
running statistics), like ``speech_campplus_sv_zh_en_16k-common_advanced``.

>>> import torch
>>> model = CAMPPlus(40, embd_dim=16, fcm_channels=4, init_channels=16, growth_rate=8, bn_size=2,
...                  num_layers=(2, 2, 2)).eval()
>>> model(torch.randn(2, 50, 40), torch.tensor([50, 30])).shape
torch.Size([2, 16])
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvector.errors import ConfigError
from mvector.models.common import TimeConv, batch_norm_tm, conv_out_lengths, length_mask, prepare_lengths, time_mask
from mvector.models.pooling import build_pooling
from mvector.models.registries import BACKBONES

__all__ = ["CAMPPlus", "FCM", "CAMLayer", "CAMDenseBlock", "fcm_freq_out"]


def fcm_freq_out(input_size: int, strides: int = 3) -> int:
    """Frequency bins left after the FCM front end's ``strides`` stride-2 3×3 convs (padding 1).

    >>> fcm_freq_out(80), fcm_freq_out(40), fcm_freq_out(513), fcm_freq_out(1)
    (10, 5, 65, 1)
    """
    f = int(input_size)
    for _ in range(strides):
        f = (f - 1) // 2 + 1
    return f


class _BNReLU(nn.Module):
    """Batch norm (channels last) then optionally ReLU; the batch norm is named ``batchnorm`` as in 3D-Speaker."""

    def __init__(self, channels: int, relu: bool = True, affine: bool = True):
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels, affine=affine)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        y = batch_norm_tm(self.batchnorm, x) if x.dim() == 3 else self.batchnorm(x)
        return torch.relu_(y) if self.relu else y


class _StridedTimeConv(TimeConv):
    """:class:`TimeConv` with a time stride (same padding ``dilation·(k-1)/2``, output ``⌊(T-1)/stride⌋+1`` frames)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, 1, bias)
        self.stride = int(stride)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return super().forward(x)
        pad = (self.kernel_size - 1) // 2
        padded = F.pad(x, (0, 0, pad, pad))
        # Output frame j reads input frames stride·j + (0..k-1) of the padded sequence.
        span = padded.shape[1] - self.kernel_size + 1
        shifts = [padded[:, j : j + span : self.stride] for j in range(self.kernel_size)]
        weight = self.weight.permute(0, 2, 1).reshape(self.out_channels, self.kernel_size * self.in_channels)
        return F.linear(torch.cat(shifts, dim=-1), weight, self.bias)


class _ResBlock2d(nn.Module):
    """FCM residual block: 3×3 conv (stride along frequency) → BN → ReLU → 3×3 conv → BN, + shortcut, ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        if stride != 1 or in_channels != channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(channels)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        h = torch.relu_(self.bn1(self.conv1(x)))
        if mask is not None:
            h = h * mask
        h = torch.relu_(self.bn2(self.conv2(h)) + self.shortcut(x))
        return h if mask is None else h * mask


class FCM(nn.Module):
    """CAM++'s 2-D front end: ``[B, F, T]`` features → ``[B, T, channels·⌈F/8⌉]`` frames (time-major).

    ``mask`` is ``[B, 1, 1, T]`` (or None); padded frames of the output are zero.

    >>> fcm = FCM(40, channels=4).eval()
    >>> fcm(torch.randn(2, 40, 13), None).shape, fcm.out_channels
    (torch.Size([2, 13, 20]), 20)
    """

    def __init__(self, input_size: int, channels: int = 32, blocks: Sequence[int] = (2, 2)):
        super().__init__()
        blocks = [int(n) for n in blocks]
        if len(blocks) != 2 or min(blocks) < 1:
            raise ConfigError(f"CAMPPlus: fcm_blocks must be two positive block counts, got {list(blocks)}")
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.ModuleList(_ResBlock2d(channels, channels, 2 if i == 0 else 1) for i in range(blocks[0]))
        self.layer2 = nn.ModuleList(_ResBlock2d(channels, channels, 2 if i == 0 else 1) for i in range(blocks[1]))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * fcm_freq_out(input_size)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        # Channels-last (NHWC) activations: faster 2-D convolutions on CPU (oneDNN).
        x = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
        if mask is not None:
            x = x * mask
        x = torch.relu_(self.bn1(self.conv1(x)))
        if mask is not None:
            x = x * mask
        for block in self.layer1:
            x = block(x, mask)
        for block in self.layer2:
            x = block(x, mask)
        x = torch.relu_(self.bn2(self.conv2(x)))
        if mask is not None:
            x = x * mask
        b, c, f, t = x.shape
        return x.reshape(b, c * f, t).transpose(1, 2)


class CAMLayer(nn.Module):
    """Context-aware masking layer on time-major ``[B, T, C]`` input whose padded frames are zero.

    Output: ``linear_local(x) · sigmoid(linear2(relu(linear1(mean_utt(x) + mean_seg(x)))))``, where the means
    count real frames only (``mask [B, T, 1]``) and ``mean_seg`` is the mean of the ``seg_len``-frame segment
    (segments start at frame 0; the last one may be shorter) that the frame lies in.

    >>> cam = CAMLayer(8, 4, kernel_size=3, dilation=2, seg_len=5).eval()
    >>> x = torch.randn(1, 12, 8)
    >>> padded = torch.cat([x, torch.zeros(1, 4, 8)], 1)
    >>> mask = torch.cat([torch.ones(1, 12, 1), torch.zeros(1, 4, 1)], 1)
    >>> bool(torch.allclose(cam(x, None), cam(padded, mask)[:, :12], atol=1e-6))
    True
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, seg_len: int = 100, reduction=2
    ):
        super().__init__()
        if seg_len < 1:
            raise ConfigError(f"CAMPPlus: seg_len must be positive, got {seg_len}")
        self.seg_len = int(seg_len)
        self.linear_local = TimeConv(in_channels, out_channels, kernel_size, dilation, bias=False)
        hidden = max(1, in_channels // reduction)
        self.linear1 = TimeConv(in_channels, hidden, 1)
        self.linear2 = TimeConv(hidden, out_channels, 1)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        y = self.linear_local(x)
        xt = x.transpose(1, 2)  # [B, C, T]
        if mask is None:
            utt = x.mean(dim=1, keepdim=True)
            count = F.avg_pool1d(torch.ones_like(xt[:, :1]), self.seg_len, self.seg_len, ceil_mode=True)
        else:
            utt = x.sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True)
            count = F.avg_pool1d(mask.transpose(1, 2), self.seg_len, self.seg_len, ceil_mode=True)
        # avg_pool1d divides both by the same window size, so the ratio is the mean over real frames.
        seg = F.avg_pool1d(xt, self.seg_len, self.seg_len, ceil_mode=True) / count.clamp_min(1e-12)
        context = utt + seg.transpose(1, 2)  # [B, segments, C]
        gate = torch.sigmoid(self.linear2(torch.relu(self.linear1(context))))
        b, s, c = gate.shape
        gate = gate.unsqueeze(2).expand(b, s, self.seg_len, c).reshape(b, s * self.seg_len, c)
        return y * gate[:, : y.shape[1]]


class _DenseLayer(nn.Module):
    """One D-TDNN layer: BN-ReLU → 1×1 conv → BN-ReLU → :class:`CAMLayer` (names as in 3D-Speaker)."""

    def __init__(self, in_channels: int, growth: int, bottleneck: int, kernel_size: int, dilation: int, seg_len: int):
        super().__init__()
        self.nonlinear1 = _BNReLU(in_channels)
        self.linear1 = TimeConv(in_channels, bottleneck, 1, bias=False)
        self.nonlinear2 = _BNReLU(bottleneck)
        self.cam_layer = CAMLayer(bottleneck, growth, kernel_size, dilation, seg_len)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        h = self.nonlinear2(self.linear1(self.nonlinear1(x)))
        if mask is not None:
            h = h * mask
        return self.cam_layer(h, mask)


class CAMDenseBlock(nn.Module):
    """Densely connected block of ``num_layers`` CAM layers (``tdnnd1`` ...): each layer's output is appended.

    >>> block = CAMDenseBlock(3, 6, growth=4, bottleneck=8, kernel_size=3, dilation=2).eval()
    >>> block(torch.randn(2, 9, 6), None).shape, block.out_channels
    (torch.Size([2, 9, 18]), 18)
    """

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth: int,
        bottleneck: int,
        kernel_size: int,
        dilation: int,
        seg_len: int = 100,
    ):
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(in_channels + i * growth, growth, bottleneck, kernel_size, dilation, seg_len)
            self.add_module(f"tdnnd{i + 1}", layer)
        self.out_channels = in_channels + num_layers * growth

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x, mask)], dim=-1)
        return x


class _TDNNLayer(nn.Module):
    """Strided TDNN layer: conv (no bias) → BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.linear = _StridedTimeConv(in_channels, out_channels, kernel_size, stride)
        self.nonlinear = _BNReLU(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.nonlinear(self.linear(x))


class _TransitLayer(nn.Module):
    """Transition layer: BN-ReLU → 1×1 conv (no bias)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.nonlinear = _BNReLU(in_channels)
        self.linear = TimeConv(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.nonlinear(x))


class _EmbeddingLayer(nn.Module):
    """Linear (stored as a 1×1 conv weight, no bias) → batch norm without scale and shift."""

    def __init__(self, in_features: int, embd_dim: int, affine: bool = False):
        super().__init__()
        self.linear = TimeConv(in_features, embd_dim, 1, bias=False)
        self.nonlinear = _BNReLU(embd_dim, relu=False, affine=affine)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.nonlinear(self.linear(pooled))


class _UnbiasedStatsPool(nn.Module):
    """Mean and standard deviation (Bessel-corrected, as 3D-Speaker's CAM++) over real frames → ``[B, 2C]``."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.output_size = 2 * in_channels

    def forward_tm(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        if mask is None:
            mean = x.mean(dim=1, keepdim=True)
            centred = x - mean
            count = torch.full_like(mean[:, :, :1], float(x.shape[1]))
        else:
            count = mask.sum(dim=1, keepdim=True)
            mean = (x * mask).sum(dim=1, keepdim=True) / count
            centred = (x - mean) * mask
        var = (centred * centred).sum(dim=1, keepdim=True) / (count - 1.0).clamp_min(1.0)
        return torch.cat([mean, var.clamp_min(1e-10).sqrt()], dim=-1).squeeze(1)


class _Trunk(nn.Module):
    """The ``xvector`` part: TDNN layer, dense blocks and transitions, BN-ReLU, embedding layer."""

    def __init__(self, in_channels: int, init_channels: int, growth: int, bottleneck: int, num_layers, kernel_size,
                 dilations, seg_len: int):
        super().__init__()
        self.tdnn = _TDNNLayer(in_channels, init_channels, 5, stride=2)
        channels = init_channels
        for i, (count, dilation) in enumerate(zip(num_layers, dilations)):
            block = CAMDenseBlock(count, channels, growth, bottleneck, kernel_size, dilation, seg_len)
            self.add_module(f"block{i + 1}", block)
            channels = block.out_channels
            self.add_module(f"transit{i + 1}", _TransitLayer(channels, channels // 2))
            channels //= 2
        self.out_nonlinear = _BNReLU(channels)
        self.channels = channels
        self.num_blocks = len(num_layers)


@BACKBONES.register("CAMPPlus", aliases=("CAM++", "campplus", "cam_pp"))
class CAMPPlus(nn.Module):
    """CAM++ speaker-embedding backbone: ``[B, frames, input_size]`` (+ frame counts) → ``[B, embd_dim]``.

    Args:
        input_size: feature dimension (any size; the FCM output is ``fcm_channels·⌈input_size/8⌉`` channels).
        embd_dim: embedding size (192 for 3D-Speaker's released models; the paper's recipe uses 512).
        pooling_type: TSP (mean + Bessel-corrected std, as in the paper), or ASP, SAP, TAP.
        fcm_channels: channels of the 2-D front end.
        fcm_blocks: residual blocks in the front end's two stages.
        init_channels: channels of the first (strided) TDNN layer.
        growth_rate: channels each dense layer adds.
        bn_size: bottleneck width of a dense layer, in multiples of ``growth_rate``.
        num_layers: layers of the three dense blocks.
        kernel_size: frames of each CAM layer's local conv (odd).
        dilations: dilation of the local convs in each block.
        seg_len: frames per segment of the CAM layer's segment pooling (after the stride-2 layer, 100 = 2 s).
        attention_channels: width of the pooling attention (ASP, SAP).
        pooling_conf: other pooling keyword arguments.
        embd_bn_affine: give the embedding's batch norm a learnt scale and shift (3D-Speaker: False; True adds
            ``2·embd_dim`` parameters that a released checkpoint does not have).

    >>> m = CAMPPlus(80)
    >>> m.embd_dim, sum(p.numel() for p in m.parameters()), len(m.state_dict())
    (192, 6848544, 937)
    """

    def __init__(
        self,
        input_size: int,
        embd_dim: int = 192,
        pooling_type: str = "TSP",
        fcm_channels: int = 32,
        fcm_blocks: Sequence[int] = (2, 2),
        init_channels: int = 128,
        growth_rate: int = 32,
        bn_size: int = 4,
        num_layers: Sequence[int] = (12, 24, 16),
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 2, 2),
        seg_len: int = 100,
        attention_channels: int = 128,
        pooling_conf: Optional[Mapping[str, Any]] = None,
        embd_bn_affine: bool = False,
    ):
        super().__init__()
        num_layers = [int(n) for n in num_layers]
        dilations = [int(d) for d in dilations]
        if not num_layers or min(num_layers) < 1 or len(dilations) != len(num_layers) or min(dilations) < 1:
            raise ConfigError(
                f"CAMPPlus: num_layers ({num_layers}) and dilations ({dilations}) must be lists of positive integers "
                "of the same length"
            )
        for key, value in (("fcm_channels", fcm_channels), ("init_channels", init_channels),
                           ("growth_rate", growth_rate), ("bn_size", bn_size), ("embd_dim", embd_dim)):
            if int(value) < 1:
                raise ConfigError(f"CAMPPlus: {key} must be a positive integer, got {value!r}")
        if int(kernel_size) < 1 or int(kernel_size) % 2 != 1:
            raise ConfigError(f"CAMPPlus: kernel_size must be odd, got {kernel_size}")
        self.input_size = int(input_size)
        self.embd_dim = int(embd_dim)
        self.head = FCM(self.input_size, int(fcm_channels), fcm_blocks)
        self.xvector = _Trunk(
            self.head.out_channels,
            int(init_channels),
            int(growth_rate),
            int(bn_size) * int(growth_rate),
            num_layers,
            int(kernel_size),
            dilations,
            int(seg_len),
        )
        channels = self.xvector.channels
        if str(pooling_type).upper() == "TSP" and not pooling_conf:
            self.pooling: nn.Module = _UnbiasedStatsPool(channels)
        else:
            pool_kwargs = dict(pooling_conf or {})
            if str(pooling_type).upper() in ("ASP", "SAP"):
                pool_kwargs.setdefault("attention_channels", attention_channels)
            self.pooling = build_pooling(pooling_type, channels, **pool_kwargs)
        self.xvector.add_module("dense", _EmbeddingLayer(self.pooling.output_size, self.embd_dim, bool(embd_bn_affine)))
        self.stats_channels = channels
        self._init_weights()

    def _init_weights(self) -> None:
        # As 3D-Speaker: Kaiming-normal convolution weights, zero biases.
        for mod in self.modules():
            if isinstance(mod, (nn.Conv2d, TimeConv)):
                nn.init.kaiming_normal_(mod.weight)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def forward(self, features: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        x = features.transpose(1, 2)  # [B, F, T]
        lengths = prepare_lengths(lengths, x.shape[-1], x.device)
        x = self.head(x, length_mask(lengths, x.shape[-1], x, ndim=4))  # [B, T, C], padded frames zero
        trunk = self.xvector
        x = trunk.tdnn(x)
        lengths = conv_out_lengths(lengths, 5, 2, 2)
        mask = time_mask(lengths, x.shape[1], x)
        for i in range(trunk.num_blocks):
            x = getattr(trunk, f"block{i + 1}")(x, mask)
            x = getattr(trunk, f"transit{i + 1}")(x)
        x = trunk.out_nonlinear(x)
        return trunk.dense(self.pooling.forward_tm(x, mask))
