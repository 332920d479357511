"""Pixel metrics the way papers report them: per-image PSNR on [0, 255], SSIM, MS-SSIM.

Inputs are tensors in [-1, 1], (B, 3, H, W). Both images are first quantised to 8-bit levels
(``round((x + 1) * 127.5)``), as when reconstructions are written to PNG and compared.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def to_255(x: Tensor) -> Tensor:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round()


def psnr(x: Tensor, y: Tensor, quantize: bool = True) -> Tensor:
    """Per-item PSNR in dB on the [0, 255] scale; (B, ...) -> (B,). Identical items give inf."""
    a, b = (to_255(x), to_255(y)) if quantize else ((x.float() + 1) * 127.5, (y.float() + 1) * 127.5)
    mse = (a - b).pow(2).flatten(1).mean(1).double()
    return (10 * torch.log10(255.0**2 / mse)).float()


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5, on [0, 255]), via pytorch-msssim."""
    from pytorch_msssim import ssim as _ssim

    return _ssim(to_255(x), to_255(y), data_range=255.0, size_average=False, win_size=_win(x))


def _win(x: Tensor) -> int:
    s = min(x.shape[-2:])
    return 11 if s >= 11 else (s if s % 2 == 1 else s - 1)


MS_SSIM_MIN_SIDE = 161  # 5 scales with an 11-pixel window: (11 - 1) * 2^4 + 1


def ms_ssim(x: Tensor, y: Tensor) -> Tensor | None:
    """Per-image MS-SSIM (5 scales); None when the image is smaller than 161 px on a side."""
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    from pytorch_msssim import ms_ssim as _ms

    return _ms(to_255(x), to_255(y), data_range=255.0, size_average=False)


def ms_ssim_db(v: float) -> float:
    """MS-SSIM in dB: -10 log10(1 - v)."""
    return float("inf") if v >= 1 else -10 * math.log10(1 - v)
