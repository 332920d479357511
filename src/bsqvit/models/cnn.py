"""BSQ-CNN: a convolutional tokenizer in the MAGVIT-v2 style with the BSQViT contract.

Encoder: 3x3 conv_in -> stages of ResBlocks (GroupNorm + SiLU + 3x3 conv, twice; a 1x1 skip
where the channels change), a stride-2 3x3 conv between stages -> ResBlocks in the middle ->
GroupNorm + SiLU + 1x1 conv to the L quantizer channels. Decoder, mirrored: 3x3 conv_in from L ->
middle ResBlocks -> stages of ResBlocks with depth-to-space upsampling (3x3 conv to 4C channels,
pixel shuffle) between them -> GroupNorm + SiLU + 3x3 conv_out to RGB. No attention.

``cnn_channel_mult`` has one entry per stage; the downsampling, ``patch_size``, is
2**(len - 1): one token per patch_size x patch_size pixels, as for the ViT. The convolutions are
2-D: a video (B,3,T,H,W) is coded frame by frame (no temporal layers, ``num_frames`` is 1), and the
streaming API of :class:`BSQViT` does not apply. The cost is linear in the area (no attention);
GroupNorm's statistics are taken over the whole frame, so a token still depends a little on
pixels outside its receptive field (as a ViT token depends on every patch through attention).
"""

from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..quantizers import build_quantizer
from .config import BSQViTConfig
from .streaming import check_streamable
from .tokenizer import Tokenizer


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv (padding on the right and bottom, as in MAGVIT-v2): H x W -> H/2 x W/2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Depth to space: 3x3 conv to 4C channels, then pixel shuffle: H x W -> 2H x 2W."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class CNNEncoder(nn.Module):
    """(N, 3, H, W) -> (N, L, H/p, W/p). ``blocks`` is the flat sequence of stages (FSDP units)."""

    def __init__(self, cfg: BSQViTConfig):
        super().__init__()
        chans = [cfg.cnn_channels * m for m in cfg.cnn_channel_mult]
        g, n = cfg.cnn_norm_groups, cfg.cnn_res_blocks
        self.conv_in = nn.Conv2d(3, chans[0], 3, padding=1)
        blocks, c = [], chans[0]
        for i, cout in enumerate(chans):
            for _ in range(n):
                blocks.append(ResBlock(c, cout, g))
                c = cout
            if i < len(chans) - 1:
                blocks.append(Downsample(c))
        blocks += [ResBlock(c, c, g) for _ in range(n)]  # middle
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = _norm(c, g)
        self.conv_out = nn.Conv2d(c, cfg.quantizer.dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for blk in self.blocks:
            h = blk(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class CNNDecoder(nn.Module):
    """(N, L, h, w) -> (N, 3, h*p, w*p), unclamped; mirrors :class:`CNNEncoder`."""

    def __init__(self, cfg: BSQViTConfig):
        super().__init__()
        chans = [cfg.cnn_channels * m for m in cfg.cnn_channel_mult]
        g, n = cfg.cnn_norm_groups, cfg.cnn_res_blocks
        c = chans[-1]
        self.conv_in = nn.Conv2d(cfg.quantizer.dim, c, 3, padding=1)
        blocks = [ResBlock(c, c, g) for _ in range(n)]  # middle
        for i in reversed(range(len(chans))):
            for _ in range(n):
                blocks.append(ResBlock(c, chans[i], g))
                c = chans[i]
            if i > 0:
                blocks.append(Upsample(c))
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = _norm(c, g)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for blk in self.blocks:
            h = blk(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _conv_flops(module: nn.Module, h: int, w: int) -> int:
    """2 x multiply-adds of the convolutions in ``module``, all run at output size h x w."""
    return sum(2 * m.weight.numel() * h * w for m in module.modules() if isinstance(m, nn.Conv2d))


def _trunk_flops(trunk: nn.Module, h: int, w: int) -> tuple[int, int, int]:
    total = 0
    for blk in trunk.blocks:
        if isinstance(blk, Downsample):
            h, w = h // 2, w // 2
        total += _conv_flops(blk, h, w)
        if isinstance(blk, Upsample):
            h, w = 2 * h, 2 * w
    return total, h, w


class BSQCNN(
    Tokenizer,
    tags=["image-tokenizer", "bsq", "cnn"],
    repo_url="https://github.com/bsqvit/bsqvit",
):
    """A convolutional BSQ tokenizer (MAGVIT-v2-style ResNet encoder and decoder, BSQ between).
    Same contract as :class:`BSQViT`; videos are coded frame by frame.

    >>> model = BSQCNN.from_preset("cnn-small")
    >>> idx = model.encode(torch.rand(1, 3, 70, 90) * 2 - 1)   # (1, 9, 12) int64
    >>> x = model.decode(idx, size=(70, 90))                   # (1, 3, 70, 90)
    """

    config_class = BSQViTConfig
    arch = "cnn"

    def __init__(self, config: BSQViTConfig | dict | None = None, **overrides):
        super().__init__(config, **overrides)
        self.encoder = CNNEncoder(self.config)
        self.quantizer = build_quantizer(self.config.quantizer)
        self.decoder = CNNDecoder(self.config)

    def encode_continuous(self, x: Tensor, amp: bool = False) -> tuple[Tensor, tuple[int, int, int]]:
        """Pre-quantization features (B, T*h*w, L) and the token grid (T, h, w); frame by frame."""
        x5, _ = self._to_video(x)
        if x5.shape[1] != 3:
            raise ValueError(f"expected 3 channels, got {x5.shape[1]}")
        x5 = self._pad(x5)
        B, _, T, H, W = x5.shape
        with self._amp(x5, amp):
            z = self.encoder(x5.transpose(1, 2).reshape(B * T, 3, H, W))  # (B*T, L, h, w)
        h, w = z.shape[-2:]
        z = z.float().reshape(B, T, -1, h, w).permute(0, 1, 3, 4, 2)  # (B, T, h, w, L): token order t, y, x
        return z.reshape(B, T * h * w, -1), (T, h, w)

    def decode_codes(self, zq: Tensor, thw: tuple[int, int, int], amp: bool = False) -> Tensor:
        """Quantized vectors (B, T*h*w, L) -> pixels (B, 3, T, h*p, w*p), unclamped."""
        T, h, w = thw
        B = zq.shape[0]
        z = zq.reshape(B * T, h, w, -1).permute(0, 3, 1, 2)
        with self._amp(zq, amp):
            x = self.decoder(z)
        x = x.float()
        return x.reshape(B, T, 3, *x.shape[-2:]).transpose(1, 2)

    def code_weight(self) -> Tensor:
        return self.decoder.conv_in.weight

    def last_layer(self) -> Tensor:
        """Weight of the last decoder layer (for the adaptive GAN weight)."""
        return self.decoder.conv_out.weight

    def encode_stream(self, *args, **kwargs):
        """ViT-only: raises :class:`~bsqvit.models.streaming.NotStreamableError` (code videos with encode)."""
        check_streamable(self)

    def decode_stream(self, *args, **kwargs):
        """ViT-only: raises :class:`~bsqvit.models.streaming.NotStreamableError` (decode videos with decode)."""
        check_streamable(self)

    def flops(self, height: int, width: int, frames: int = 1) -> dict[str, float]:
        """Forward FLOPs (2 x multiply-adds of the convolutions) of encode and decode for one item."""
        p = self.patch_size
        H, W = math.ceil(height / p) * p, math.ceil(width / p) * p
        enc, h, w = _trunk_flops(self.encoder, H, W)
        enc += _conv_flops(self.encoder.conv_in, H, W) + _conv_flops(self.encoder.conv_out, h, w)
        dec, H2, W2 = _trunk_flops(self.decoder, h, w)
        dec += _conv_flops(self.decoder.conv_in, h, w) + _conv_flops(self.decoder.conv_out, H2, W2)
        return {"encode": float(frames * enc), "decode": float(frames * dec), "total": float(frames * (enc + dec))}
