"""StyleGAN2 discriminators for the adversarial term of the BSQ-ViT objective.

BSQ-ViT trains with a StyleGAN2 discriminator ("resnet" architecture, Karras et al. 2020)
and a non-saturating loss with lazy R1 (see ``bsqvit.train.gan``). This module is a pure
PyTorch, device-agnostic re-implementation (no custom CUDA ops):

* **Equalized learning rate.** Every conv / fully-connected weight is stored as N(0, 1)
  (``N(0, 1/lr_multiplier)`` for FC layers) and multiplied at run time by
  ``lr_multiplier / sqrt(fan_in)``; biases are multiplied by ``lr_multiplier``.
* **Activations.** Leaky ReLU (slope 0.2) followed by a gain of sqrt(2).
* **Resampling.** Downsampling is anti-aliased with the separable FIR filter [1, 3, 3, 1]
  (normalised to unit DC gain, zero padding): a 3x3 "down" conv is *blur (pad 2) -> 3x3 conv,
  stride 2*; a 1x1 "down" conv is *blur (pad 1), stride 2 -> 1x1 conv*. These are the
  paddings of StyleGAN2's ``conv2d_resample``, so the output size of every block is
  ``floor(size / 2)``.
* **Blocks** (one per resolution r = image_size, ..., 8)::

      x = fromRGB(img)                                 # first block only: 1x1 conv + lrelu
      y = skip(x)            * sqrt(1/2)                # blur-down, 1x1 conv, no bias, linear
      x = conv1(conv0(x))    * sqrt(1/2)                # 3x3 lrelu, then blur-down 3x3 lrelu
      x = x + y

  with channels ``min(channel_base // r, channel_max)`` at resolution r.
* **Epilogue** at 4x4: minibatch-stddev (group 4, 1 channel) -> 3x3 conv lrelu ->
  FC(C*16 -> C) lrelu -> FC(C -> 1).

Input size. The network is built for ``image_size`` (a power of two >= 8) and has
``log2(image_size) - 2`` blocks. Other sizes are accepted: after the blocks the feature map is
adaptively average-pooled to 4x4 when it is not already 4x4 (exact-size inputs are untouched,
so at ``image_size`` the network is exactly StyleGAN2's). The trainer should still feed
``image_size`` crops; other sizes are a convenience (e.g. evaluating on larger images).

Minibatch stddev with a batch not divisible by the group size: the first ``N - N % G`` samples
are grouped as in StyleGAN2 (sample i in group ``i % (N // G)``), and the remaining ``N % G``
samples form one smaller group (a group of one gets a stddev of ~1e-4). StyleGAN2 itself
requires ``N % G == 0``.

Parameter names (``b{res}.fromrgb/conv0/conv1/skip``, ``b4.conv/fc/out``) and shapes follow the
reference's StyleGAN2 code, so its ``state_dict_discriminator`` can be loaded with
:meth:`StyleGANDiscriminator.load_reference_state_dict` (its ``resample_filter`` buffers are
constants and are dropped).

Parameter counts (RGB, mbstd 1 channel; checked by ``tests/test_discriminator.py``):

======================================================  ===========
config                                                   parameters
======================================================  ===========
image 256, channel_base 32768, channel_max 512 (ref.)    28,864,129
image 128, channel_base 32768, channel_max 512           28,389,121
image 64, channel_base 32768, channel_max 128 (CPU)       1,657,857
image 64, channel_base 4096, channel_max 128              1,465,025
image 32, channel_base 32768, channel_max 64                337,281
3-D: 128^2 x 16 frames, channel_base 8192, max 256       16,389,953
======================================================  ===========

Cost on CPU (2 shared cores, PyTorch 2.13, batch 8 at 64^2, best of 5): forward + backward
0.38 s with channel_max 128 (128 channels at every resolution), 0.20 s with channel_base 4096
(64 channels at 64^2), 0.07 s with channel_base 2048 / channel_max 64; an R1 step (forward +
double backward) costs about 3x a plain forward + backward.

Video. :class:`FrameDiscriminator` applies a 2-D discriminator to every frame
(``(B, C, T, H, W) -> (B*T, C, H, W)``, frames ordered ``(b t)`` as in the reference) and is
the default for video (the reference fine-tunes video with a per-frame 2-D discriminator).
:class:`StyleGANDiscriminator3D` is the same design with 3-D convolutions: spatial resolution
halves in every block, time halves only in the last blocks (``temporal_downsample``; by
default time ends at 2 frames, e.g. [1, 1, 2, 2, 2] for 16 frames at 128^2, the reference's
schedule), and its default channels (channel_base 8192, channel_max 256 -> 64, 128, 256, ...)
match the reference's 3-D discriminator widths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError

__all__ = [
    "DiscriminatorConfig",
    "EqualizedConv",
    "EqualizedLinear",
    "FrameDiscriminator",
    "MinibatchStd",
    "StyleGANDiscriminator",
    "StyleGANDiscriminator3D",
    "blur_downsample",
    "build_discriminator",
    "count_parameters",
    "minibatch_stddev",
]

_SQRT2 = math.sqrt(2.0)
_SQRT_HALF = math.sqrt(0.5)
_LRELU_SLOPE = 0.2


def _tuple(v, n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(a) for a in v)
    if len(v) != n:
        raise ValueError(f"expected {n} values, got {v}")
    return v


def _fir_kernel(taps, down: tuple[int, ...]) -> Tensor:
    """N-d separable FIR kernel, shape (1, 1, *k): ``taps`` (normalised) on axes with down > 1,
    a single tap on the others."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = f / f.sum()
    k = torch.ones(())
    for d in down:
        k = k.unsqueeze(-1) * (f if d > 1 else torch.ones(1)).view(*([1] * k.ndim), -1)
    return k.view(1, 1, *k.shape)


def _fir(x: Tensor, kernel: Tensor, stride: tuple[int, ...], pads: tuple[tuple[int, int], ...]) -> Tensor:
    """Depthwise FIR filter with explicit (before, after) zero padding per spatial axis."""
    c = x.shape[1]
    flat = []
    for before, after in reversed(pads):  # F.pad wants the last axis first
        flat += [before, after]
    if any(flat):
        x = F.pad(x, flat)
    w = kernel.to(dtype=x.dtype).expand(c, 1, *kernel.shape[2:])
    conv = F.conv2d if x.ndim == 4 else F.conv3d
    return conv(x, w, stride=stride, groups=c)


def _down_pads(taps_len: int, down: tuple[int, ...], extra: int) -> tuple[tuple[int, int], ...]:
    """StyleGAN2 paddings: ((f - d + 1) // 2 + extra, (f - d) // 2 + extra) on downsampled axes."""
    return tuple(
        ((taps_len - d + 1) // 2 + extra, (taps_len - d) // 2 + extra) if d > 1 else (extra, extra) for d in down
    )


def blur_downsample(x: Tensor, down=2, taps=(1, 3, 3, 1)) -> Tensor:
    """Anti-aliased downsampling (blur with ``taps``, zero padding, then keep every ``down``-th
    sample), the resampling of a StyleGAN2 1x1 "down" conv. Works on (B, C, H, W) and
    (B, C, T, H, W); ``down`` is an int or one factor per spatial axis. Output size
    ``floor(size / down)`` for down = 2."""
    down = _tuple(down, x.ndim - 2)
    return _fir(x, _fir_kernel(taps, down).to(x.device), down, _down_pads(len(taps), down, 0))


# --------------------------------------------------------------------------------------------
# Equalized-learning-rate layers
# --------------------------------------------------------------------------------------------


def _bias_act(x: Tensor, b: Tensor | None, activation: str, gain: float, channel_dim: int = 1) -> Tensor:
    if b is not None:
        shape = [1] * x.ndim
        shape[channel_dim] = -1
        x = x + b.to(x.dtype).view(shape)
    if activation == "lrelu":
        return F.leaky_relu(x, _LRELU_SLOPE) * (_SQRT2 * gain)
    if activation == "linear":
        return x * gain if gain != 1 else x
    raise ValueError(f"unknown activation {activation!r}")


class EqualizedLinear(nn.Module):
    """Fully-connected layer with equalized learning rate.

    Stored weight ~ N(0, 1/lr_multiplier^2), used as ``weight * lr_multiplier / sqrt(in)``;
    bias used as ``bias * lr_multiplier``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def effective_weight(self) -> Tensor:
        return self.weight * self.weight_gain

    def forward(self, x: Tensor) -> Tensor:
        w = self.effective_weight().to(x.dtype)
        b = self.bias * self.bias_gain if self.bias is not None else None
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.to(x.dtype).unsqueeze(0), x, w.t())
        return _bias_act(x.matmul(w.t()), b, self.activation, 1.0)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, act={self.activation}"


class EqualizedConv(nn.Module):
    """2-D / 3-D convolution with equalized learning rate, optional FIR-anti-aliased
    downsampling, bias and (leaky-ReLU x sqrt 2 | linear) activation.

    ``down`` is an int or one factor (1 or 2) per spatial axis. With downsampling, a k > 1 conv
    is *blur (padding (f-d+1)//2 + k//2, (f-d)//2 + k//2) -> conv, stride d*; a 1x1 conv is
    *blur with stride d -> 1x1 conv*.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dims: int = 2,
        bias: bool = True,
        activation: str = "linear",
        down=1,
        resample_filter=(1, 3, 3, 1),
    ):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError("dims must be 2 or 3")
        self.dims = dims
        self.activation = activation
        self.kernel_size = kernel_size
        self.down = _tuple(down, dims)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *([kernel_size] * dims)))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**dims)
        self._conv = F.conv2d if dims == 2 else F.conv3d
        if any(d > 1 for d in self.down):
            self.register_buffer("fir", _fir_kernel(resample_filter, self.down), persistent=False)
            self._pads = _down_pads(len(resample_filter), self.down, kernel_size // 2 if kernel_size > 1 else 0)
        else:
            self.fir = None

    def effective_weight(self) -> Tensor:
        return self.weight * self.weight_gain

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        # lrelu(z) * g == lrelu(g * z) for g > 0, so the activation gain is folded into the
        # weight and bias, and the bias is fused into the convolution.
        g = gain * (_SQRT2 if self.activation == "lrelu" else 1.0)
        w = (self.weight * (self.weight_gain * g)).to(x.dtype)
        b = (self.bias * g).to(x.dtype) if self.bias is not None else None
        if self.fir is None:
            x = self._conv(x, w, b, padding=self.kernel_size // 2)
        elif self.kernel_size == 1:
            x = self._conv(_fir(x, self.fir, self.down, self._pads), w, b)
        else:
            x = self._conv(_fir(x, self.fir, (1,) * self.dims, self._pads), w, b, stride=self.down)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, _LRELU_SLOPE, inplace=True)
        elif self.activation != "linear":
            raise ValueError(f"unknown activation {self.activation!r}")
        return x

    def extra_repr(self) -> str:
        o, i = self.weight.shape[:2]
        return f"{i}, {o}, k={self.kernel_size}, dims={self.dims}, down={self.down}, act={self.activation}"


# --------------------------------------------------------------------------------------------
# Minibatch standard deviation
# --------------------------------------------------------------------------------------------


def _mbstd_stats(x: Tensor, group: int, num_channels: int) -> Tensor:
    n = x.shape[0]
    c = x.shape[1]
    spatial = x.shape[2:]
    y = x.reshape(group, n // group, num_channels, c // num_channels, *spatial)
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + 1e-8).sqrt()  # (n/G, F, c/F, *spatial)
    y = y.mean(dim=tuple(range(2, y.ndim)))  # (n/G, F)
    y = y.view(n // group, num_channels, *([1] * len(spatial)))
    return y.repeat(group, 1, *spatial)  # sample i gets the stats of group i % (n/G)


def minibatch_stddev(x: Tensor, group_size: int | None = 4, num_channels: int = 1) -> Tensor:
    """Append ``num_channels`` minibatch-stddev feature maps to ``x`` (B, C, *spatial).

    ``group_size`` None or <= 0 means the whole minibatch. When B is not divisible by the group
    size, the last ``B % G`` samples form one extra, smaller group.
    """
    n, c = x.shape[:2]
    if c % num_channels:
        raise ValueError(f"channels ({c}) must be divisible by mbstd num_channels ({num_channels})")
    g = n if group_size is None or group_size <= 0 else min(group_size, n)
    r = n % g
    if r == 0:
        stats = _mbstd_stats(x, g, num_channels)
    else:
        stats = torch.cat([_mbstd_stats(x[: n - r], g, num_channels), _mbstd_stats(x[n - r :], r, num_channels)])
    return torch.cat([x, stats.to(x.dtype)], dim=1)


class MinibatchStd(nn.Module):
    def __init__(self, group_size: int | None = 4, num_channels: int = 1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: Tensor) -> Tensor:
        return minibatch_stddev(x, self.group_size, self.num_channels)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class DiscriminatorBlock(nn.Module):
    """StyleGAN2 "resnet" block: (fromRGB) -> conv3x3 lrelu -> down conv3x3 lrelu, plus a
    blur-down 1x1 skip; both branches scaled by sqrt(1/2)."""

    def __init__(
        self,
        in_channels: int,  # 0 = first block (has fromRGB)
        tmp_channels: int,
        out_channels: int,
        img_channels: int,
        dims: int = 2,
        down=2,
        resample_filter=(1, 3, 3, 1),
        dtype: torch.dtype | None = None,  # run this block in a lower precision (e.g. bf16)
    ):
        super().__init__()
        self.dtype = dtype
        if in_channels == 0:
            self.fromrgb = EqualizedConv(img_channels, tmp_channels, 1, dims, activation="lrelu")
        else:
            if in_channels != tmp_channels:
                raise ValueError("in_channels must equal tmp_channels")
            self.fromrgb = None
        self.conv0 = EqualizedConv(tmp_channels, tmp_channels, 3, dims, activation="lrelu")
        self.conv1 = EqualizedConv(
            tmp_channels, out_channels, 3, dims, activation="lrelu", down=down, resample_filter=resample_filter
        )
        self.skip = EqualizedConv(
            tmp_channels, out_channels, 1, dims, bias=False, down=down, resample_filter=resample_filter
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.dtype is not None:
            x = x.to(self.dtype)
        if self.fromrgb is not None:
            x = self.fromrgb(x)
        y = self.skip(x, gain=_SQRT_HALF)
        x = self.conv1(self.conv0(x), gain=_SQRT_HALF)
        return x + y


class DiscriminatorEpilogue(nn.Module):
    """mbstd -> conv3x3 lrelu -> FC lrelu -> FC(1), at the final resolution ``final_shape``."""

    def __init__(
        self,
        channels: int,
        final_shape: tuple[int, ...],
        dims: int = 2,
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
    ):
        super().__init__()
        self.final_shape = tuple(final_shape)
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = EqualizedConv(channels + max(mbstd_num_channels, 0), channels, 3, dims, activation="lrelu")
        self.fc = EqualizedLinear(channels * math.prod(self.final_shape), channels, activation="lrelu")
        self.out = EqualizedLinear(channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # the epilogue runs in (at least) fp32
        if tuple(x.shape[2:]) != self.final_shape:
            pool = F.adaptive_avg_pool2d if x.ndim == 4 else F.adaptive_avg_pool3d
            x = pool(x, self.final_shape)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        return self.out(x)


def _check_pow2(image_size: int) -> int:
    log2 = int(round(math.log2(image_size))) if image_size > 0 else -1
    if image_size < 8 or 2**log2 != image_size:
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
    return log2


def _fold_frames(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), frames ordered (b t)."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


# --------------------------------------------------------------------------------------------
# Discriminators
# --------------------------------------------------------------------------------------------


class StyleGANDiscriminator(nn.Module):
    """StyleGAN2 discriminator, "resnet" architecture, unconditional.

    Input (B, C, H, W) in [-1, 1] (any H, W; built for ``image_size``, see the module doc);
    a (B, C, T, H, W) video is treated as B*T frames. Returns logits of shape (B,) (or (B*T,)).

    ``num_fp16_res``: run the blocks of the N highest resolutions in ``fp16_dtype``
    (bfloat16 by default, as the reference does); the epilogue always runs in fp32.
    """

    def __init__(
        self,
        image_size: int = 256,
        in_channels: int = 3,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        resample_filter=(1, 3, 3, 1),
        fp16_dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__()
        log2 = _check_pow2(image_size)
        self.image_size = image_size
        self.in_channels = in_channels
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions + [4]}
        if min(ch.values()) < 1:
            raise ValueError("channel_base too small: some resolution gets 0 channels")
        self.channels = ch
        fp16_res = max(2 ** (log2 + 1 - num_fp16_res), 8)
        for r in self.block_resolutions:
            block = DiscriminatorBlock(
                ch[r] if r < image_size else 0,
                ch[r],
                ch[r // 2],
                in_channels,
                dims=2,
                down=2,
                resample_filter=resample_filter,
                dtype=fp16_dtype if (num_fp16_res > 0 and r >= fp16_res) else None,
            )
            setattr(self, f"b{r}", block)
        self.b4 = DiscriminatorEpilogue(ch[4], (4, 4), 2, mbstd_group_size, mbstd_num_channels)

    def forward(self, img: Tensor) -> Tensor:
        if img.ndim == 5:
            img = _fold_frames(img)
        if img.ndim != 4 or img.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, H, W), got {tuple(img.shape)}")
        x = img
        for r in self.block_resolutions:
            x = getattr(self, f"b{r}")(x)
        return self.b4(x).squeeze(1)

    @property
    def last_layer(self) -> Tensor:
        return self.b4.out.weight

    def load_reference_state_dict(self, state_dict: dict, strict: bool = True):
        """Load the reference's ``state_dict_discriminator`` (drops ``module.`` prefixes and the
        constant ``resample_filter`` buffers)."""
        clean = {}
        for k, v in state_dict.items():
            while k.startswith("module."):
                k = k[len("module.") :]
            if k.endswith("resample_filter"):
                continue
            clean[k] = v
        return self.load_state_dict(clean, strict=strict)


class StyleGANDiscriminator3D(nn.Module):
    """StyleGAN2-style "resnet" discriminator with 3-D convolutions for (B, C, T, H, W) video.

    Space halves in every block; time halves (with the same FIR filter) only in blocks whose
    ``temporal_downsample`` entry is 2. Default schedule: the last k blocks downsample time,
    k = min(#blocks, floor(log2 T) - 1), so 16 frames end at 2 ([1, 1, 2, 2, 2] at 128^2) and
    a single frame is never downsampled. A (B, C, H, W) input is treated as T = 1. Other
    T / H / W than configured are handled by adaptive pooling before the epilogue (time must
    stay >= 2 wherever it is downsampled). Returns logits (B,).
    """

    def __init__(
        self,
        image_size: int = 128,
        num_frames: int = 16,
        in_channels: int = 3,
        channel_base: int = 8192,
        channel_max: int = 256,
        temporal_downsample: list[int] | None = None,
        num_fp16_res: int = 0,
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        resample_filter=(1, 3, 3, 1),
        fp16_dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__()
        log2 = _check_pow2(image_size)
        if num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        self.image_size = image_size
        self.num_frames = num_frames
        self.in_channels = in_channels
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        n = len(self.block_resolutions)
        if temporal_downsample is None:
            k = min(n, max(0, int(math.floor(math.log2(num_frames))) - 1))
            temporal_downsample = [1] * (n - k) + [2] * k
        temporal_downsample = [int(d) for d in temporal_downsample]
        if len(temporal_downsample) != n or any(d not in (1, 2) for d in temporal_downsample):
            raise ValueError(f"temporal_downsample must be {n} entries of 1 or 2, got {temporal_downsample}")
        self.temporal_downsample = temporal_downsample
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions + [4]}
        if min(ch.values()) < 1:
            raise ValueError("channel_base too small: some resolution gets 0 channels")
        self.channels = ch
        fp16_res = max(2 ** (log2 + 1 - num_fp16_res), 8)
        t = num_frames
        for r, td in zip(self.block_resolutions, temporal_downsample):
            if td == 2:
                if t < 2:
                    raise ValueError(f"cannot downsample {t} frame(s) in time; adjust temporal_downsample")
                t //= 2
            block = DiscriminatorBlock(
                ch[r] if r < image_size else 0,
                ch[r],
                ch[r // 2],
                in_channels,
                dims=3,
                down=(td, 2, 2),
                resample_filter=resample_filter,
                dtype=fp16_dtype if (num_fp16_res > 0 and r >= fp16_res) else None,
            )
            setattr(self, f"b{r}", block)
        self.final_frames = t
        self.b4 = DiscriminatorEpilogue(ch[4], (t, 4, 4), 3, mbstd_group_size, mbstd_num_channels)

    def forward(self, video: Tensor) -> Tensor:
        if video.ndim == 4:
            video = video.unsqueeze(2)
        if video.ndim != 5 or video.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, T, H, W), got {tuple(video.shape)}")
        x = video
        for r, td in zip(self.block_resolutions, self.temporal_downsample):
            if td == 2 and x.shape[2] < 2:
                raise ValueError(
                    f"clip too short: {video.shape[2]} frame(s) cannot be downsampled in time by "
                    f"{self.temporal_downsample}; feed >= {self.num_frames} frames or build with fewer"
                )
            x = getattr(self, f"b{r}")(x)
        return self.b4(x).squeeze(1)

    @property
    def last_layer(self) -> Tensor:
        return self.b4.out.weight


class FrameDiscriminator(nn.Module):
    """Apply a 2-D discriminator to every frame of a video.

    (B, C, T, H, W) -> logits (B*T,), frames ordered (b t) (the reference's
    ``'n c t h w -> (n t) c h w'``); with ``average_frames=True`` the per-frame logits are
    averaged to (B,). A (B, C, H, W) input is passed through unchanged.
    """

    def __init__(self, discriminator: nn.Module, average_frames: bool = False):
        super().__init__()
        self.discriminator = discriminator
        self.average_frames = average_frames

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            return self.discriminator(x)
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, T, H, W), got {tuple(x.shape)}")
        b, t = x.shape[0], x.shape[2]
        logits = self.discriminator(_fold_frames(x)).reshape(b * t)
        return logits.view(b, t).mean(1) if self.average_frames else logits


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

_TYPES = ("stylegan", "frame", "stylegan3d")


@dataclass
class DiscriminatorConfig:
    """Which discriminator to build.

    type: ``stylegan`` (2-D StyleGAN2; a video input is treated frame by frame), ``frame``
    (the same wrapped in :class:`FrameDiscriminator`, explicit per-frame video D), or
    ``stylegan3d`` (:class:`StyleGANDiscriminator3D`). ``channel_base`` / ``channel_max``
    None = the type's default (32768 / 512 for 2-D, the reference's; 8192 / 256 for 3-D).
    ``mbstd_group_size`` <= 0 = whole minibatch; ``mbstd_num_channels`` 0 disables mbstd.
    ``num_fp16_res``: blocks of the N highest resolutions run in bfloat16.
    """

    type: str = "stylegan"
    image_size: int = 256
    in_channels: int = 3
    channel_base: int | None = None
    channel_max: int | None = None
    mbstd_group_size: int = 4
    mbstd_num_channels: int = 1
    num_fp16_res: int = 0
    resample_filter: list[int] = field(default_factory=lambda: [1, 3, 3, 1])
    num_frames: int = 16  # stylegan3d only
    temporal_downsample: list[int] | None = None  # stylegan3d only; None = automatic

    def __post_init__(self):
        if self.type not in _TYPES:
            raise ConfigError(f"discriminator.type must be one of {', '.join(_TYPES)}; got {self.type!r}")
        try:
            _check_pow2(self.image_size)
        except ValueError as e:
            raise ConfigError(f"discriminator.image_size: {e}") from None
        if self.mbstd_num_channels < 0 or self.num_fp16_res < 0:
            raise ConfigError("discriminator.mbstd_num_channels and num_fp16_res must be >= 0")
        if len(self.resample_filter) < 2:
            raise ConfigError("discriminator.resample_filter needs at least 2 taps")


def build_discriminator(cfg: DiscriminatorConfig | None = None) -> nn.Module:
    cfg = cfg or DiscriminatorConfig()
    common = dict(
        image_size=cfg.image_size,
        in_channels=cfg.in_channels,
        num_fp16_res=cfg.num_fp16_res,
        mbstd_group_size=cfg.mbstd_group_size,
        mbstd_num_channels=cfg.mbstd_num_channels,
        resample_filter=tuple(cfg.resample_filter),
    )
    if cfg.type == "stylegan3d":
        return StyleGANDiscriminator3D(
            num_frames=cfg.num_frames,
            channel_base=cfg.channel_base if cfg.channel_base is not None else 8192,
            channel_max=cfg.channel_max if cfg.channel_max is not None else 256,
            temporal_downsample=cfg.temporal_downsample,
            **common,
        )
    d = StyleGANDiscriminator(
        channel_base=cfg.channel_base if cfg.channel_base is not None else 32768,
        channel_max=cfg.channel_max if cfg.channel_max is not None else 512,
        **common,
    )
    return FrameDiscriminator(d) if cfg.type == "frame" else d


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
