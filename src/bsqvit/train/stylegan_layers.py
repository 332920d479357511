"""StyleGAN2 building blocks of the discriminators: FIR-anti-aliased resampling, equalized-lr
layers, minibatch standard deviation, and the "resnet" block and epilogue.

Pure PyTorch, device-agnostic (no custom CUDA ops); the networks that assemble these are in
:mod:`bsqvit.train.discriminator`.

* **Equalized learning rate.** Every conv / fully-connected weight is stored as N(0, 1)
  (``N(0, 1/lr_multiplier)`` for FC layers) and multiplied at run time by
  ``lr_multiplier / sqrt(fan_in)``; biases are multiplied by ``lr_multiplier``.
* **Activations.** Leaky ReLU (slope 0.2) followed by a gain of sqrt(2).
* **Resampling.** Downsampling is anti-aliased with the separable FIR filter [1, 3, 3, 1]
  (normalised to unit DC gain, zero padding): a 3x3 "down" conv is *blur (pad 2) -> 3x3 conv,
  stride 2*; a 1x1 "down" conv is *blur (pad 1), stride 2 -> 1x1 conv*. These are the
  paddings of StyleGAN2's ``conv2d_resample``, so the output size of every block is
  ``floor(size / 2)``.
* **Minibatch stddev** with a batch not divisible by the group size: the first ``N - N % G``
  samples are grouped as in StyleGAN2 (sample i in group ``i % (N // G)``), and the remaining
  ``N % G`` samples form one smaller group (a group of one gets a stddev of ~1e-4). StyleGAN2
  itself requires ``N % G == 0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DiscriminatorBlock",
    "DiscriminatorEpilogue",
    "EqualizedConv",
    "EqualizedLinear",
    "MinibatchStd",
    "blur_downsample",
    "minibatch_stddev",
]

_SQRT2 = math.sqrt(2.0)
_SQRT_HALF = math.sqrt(0.5)
_LRELU_SLOPE = 0.2

# --------------------------------------------------------------------------------------------
# FIR resampling
# --------------------------------------------------------------------------------------------


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


def _depthwise(x: Tensor, w: Tensor, stride: tuple[int, ...]) -> Tensor:
    conv = F.conv2d if x.ndim == 4 else F.conv3d
    return conv(x, w.to(x.dtype), stride=stride, groups=x.shape[1])


def _depthwise_t(g: Tensor, w: Tensor, stride: tuple[int, ...], size: tuple[int, ...]) -> Tensor:
    """The transpose (adjoint) of :func:`_depthwise` for an input of spatial ``size``."""
    k = w.shape[2:]
    extra = tuple(s - ((n - 1) * d + kk) for s, n, d, kk in zip(size, g.shape[2:], stride, k))
    conv_t = F.conv_transpose2d if g.ndim == 4 else F.conv_transpose3d
    return conv_t(g, w.to(g.dtype), stride=stride, output_padding=extra, groups=g.shape[1])


class _FirConv(torch.autograd.Function):
    """Depthwise convolution with a constant FIR kernel (no gradient for the kernel).

    Its backward is :class:`_FirConvT` (the transposed convolution), whose backward is this
    convolution again, so a derivative of any order is one grouped (transposed) convolution.
    Through ``F.conv2d`` itself the double backward that R1 needs goes through PyTorch's
    ``_convolution_double_backward``, which also computes the (unused) gradient of the FIR
    kernel with one convolution per channel and group-by-group copies (measured: 954
    convolutions instead of 44 for an R1 step of a 5-block discriminator; the cause of most of
    the cost of R1 steps).
    """

    @staticmethod
    def forward(ctx, x, w, stride):
        ctx.save_for_backward(w)
        ctx.stride, ctx.size = stride, tuple(x.shape[2:])
        return _depthwise(x, w, stride)

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return _FirConvT.apply(g, w, ctx.stride, ctx.size), None, None


class _FirConvT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, w, stride, size):
        ctx.save_for_backward(w)
        ctx.stride = stride
        return _depthwise_t(g, w, stride, size)

    @staticmethod
    def backward(ctx, gg):
        (w,) = ctx.saved_tensors
        return _FirConv.apply(gg, w, ctx.stride), None, None, None


def _fir(x: Tensor, kernel: Tensor, stride: tuple[int, ...], pads: tuple[tuple[int, int], ...]) -> Tensor:
    """Depthwise FIR filter with explicit (before, after) zero padding per spatial axis."""
    c = x.shape[1]
    flat = []
    for before, after in reversed(pads):  # F.pad wants the last axis first
        flat += [before, after]
    if any(flat):
        x = F.pad(x, flat)
    w = kernel.to(dtype=x.dtype).expand(c, 1, *kernel.shape[2:])
    return _FirConv.apply(x, w, tuple(stride))


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
