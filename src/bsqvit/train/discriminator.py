"""StyleGAN2 discriminators for the adversarial term of the BSQ-ViT objective.

BSQ-ViT trains with a StyleGAN2 discriminator ("resnet" architecture, Karras et al. 2020)
and a non-saturating loss with lazy R1 (see ``bsqvit.train.gan``). This module is a pure
PyTorch, device-agnostic re-implementation (no custom CUDA ops); its layers (equalized
learning rate, FIR-anti-aliased resampling, minibatch stddev, the block and the epilogue) are
in :mod:`bsqvit.train.stylegan_layers` and re-exported here.

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
(64 channels at 64^2), 0.07 s with channel_base 2048 / channel_max 64. An R1 term (forward,
input gradient, double backward) costs about as many FLOPs as a D step on real + fake, and about
1.1-1.3x its time since the FIR blur has its own autograd pair (:mod:`.stylegan_layers`; before,
the double backward ran one convolution per channel, 1.45-2.7x; issue #13).

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
from torch import Tensor, nn

from ..config import ConfigError
from .stylegan_layers import (
    DiscriminatorBlock,
    DiscriminatorEpilogue,
    EqualizedConv,
    EqualizedLinear,
    MinibatchStd,
    blur_downsample,
    minibatch_stddev,
)

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
