"""Pixel metrics the way papers report them: per-image PSNR on [0, 255], SSIM, MS-SSIM.

Inputs are tensors in [-1, 1], (B, 3, H, W). Both images are first quantised to 8-bit levels
(``round((x + 1) * 127.5)``), as when reconstructions are written to PNG and compared.

SSIM is the Gaussian-window SSIM of Wang et al. (window 11, sigma 1.5, K = (0.01, 0.03),
data range 255), averaged over the *valid* window positions and then over channels. This is
exactly scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255, channel_axis=...)`` (which filters with reflection
and then crops the 5-pixel border before averaging) and pytorch-msssim's ``ssim``; tests check
both on Kodak within 1e-3 (measured: ~4e-6). MS-SSIM (5 scales, weights of Wang et al. 2003) is
pytorch-msssim's. When pytorch-msssim is not installed, :func:`ssim_reference` /
:func:`ms_ssim_reference` (this module's float64 implementation of the same definitions) are used.

Videos (B, 3, T, H, W): :func:`per_frame` applies an image metric to every frame and averages
over T (the usual video protocol for PSNR/SSIM/LPIPS).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def to_255(x: Tensor) -> Tensor:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round()


def psnr(x: Tensor, y: Tensor, quantize: bool = True) -> Tensor:
    """Per-item PSNR in dB on the [0, 255] scale; (B, ...) -> (B,). Identical items give inf."""
    a, b = (to_255(x), to_255(y)) if quantize else ((x.float() + 1) * 127.5, (y.float() + 1) * 127.5)
    mse = (a - b).pow(2).flatten(1).mean(1).double()
    return (10 * torch.log10(255.0**2 / mse)).float()


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5, on [0, 255]), via pytorch-msssim
    (:func:`ssim_reference` when it is not installed). Images smaller than 11 px use the
    largest odd window that fits."""
    try:
        from pytorch_msssim import ssim as _ssim
    except ImportError:
        return ssim_reference(x, y).float()
    return _ssim(to_255(x), to_255(y), data_range=255.0, size_average=False, win_size=_win(x))


def _win(x: Tensor) -> int:
    s = min(x.shape[-2:])
    return 11 if s >= 11 else (s if s % 2 == 1 else s - 1)


MS_SSIM_MIN_SIDE = 161  # 5 scales with an 11-pixel window: (11 - 1) * 2^4 + 1


def ms_ssim(x: Tensor, y: Tensor) -> Tensor | None:
    """Per-image MS-SSIM (5 scales); None when the image is smaller than 161 px on a side."""
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    try:
        from pytorch_msssim import ms_ssim as _ms
    except ImportError:
        return ms_ssim_reference(x, y).float()
    return _ms(to_255(x), to_255(y), data_range=255.0, size_average=False)


def ms_ssim_db(v: float) -> float:
    """MS-SSIM in dB: -10 log10(1 - v)."""
    return float("inf") if v >= 1 else -10 * math.log10(1 - v)


# ---- own float64 implementation (fallback, and the definition the tests pin down) ---------------
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> Tensor:
    """Normalised 1-D Gaussian (``size`` taps centred on ``size // 2``)."""
    c = torch.arange(size, dtype=dtype) - size // 2
    g = torch.exp(-(c**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: Tensor, win: Tensor) -> Tensor:
    """Separable Gaussian filter over H and W, valid positions only; x (N, C, H, W)."""
    c = x.shape[1]
    k = win.to(x.device, x.dtype)
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _ssim_cs(a: Tensor, b: Tensor, win: Tensor, data_range: float = 255.0, K=(0.01, 0.03)) -> tuple[Tensor, Tensor]:
    """Per-channel mean SSIM and contrast-structure terms, (N, C) each."""
    c1, c2 = (K[0] * data_range) ** 2, (K[1] * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, win), _filter_valid(b, win)
    saa = _filter_valid(a * a, win) - mu_a**2
    sbb = _filter_valid(b * b, win) - mu_b**2
    sab = _filter_valid(a * b, win) - mu_a * mu_b
    cs = (2 * sab + c2) / (saa + sbb + c2)
    s = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs
    return s.flatten(2).mean(-1), cs.flatten(2).mean(-1)


def ssim_reference(x: Tensor, y: Tensor, win_size: int | None = None, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM in float64 (same definition as :func:`ssim`); (B, 3, H, W) in [-1, 1] -> (B,)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of equal shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    win = gaussian_window(win_size or _win(x), sigma)
    s, _ = _ssim_cs(to_255(x).double(), to_255(y).double(), win)
    return s.mean(1)


def ms_ssim_reference(x: Tensor, y: Tensor, weights=MS_SSIM_WEIGHTS) -> Tensor | None:
    """Per-image MS-SSIM in float64 with pytorch-msssim's conventions (ReLU on the terms, 2x2
    average pooling with zero padding of odd sides); None below 161 px on a side."""
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    win = gaussian_window(11, 1.5)
    a, b = to_255(x).double(), to_255(y).double()
    w = torch.tensor(weights, dtype=torch.float64, device=a.device)
    terms = []
    for i in range(len(weights)):
        s, cs = _ssim_cs(a, b, win)
        if i < len(weights) - 1:
            terms.append(torch.relu(cs))
            pad = [d % 2 for d in a.shape[2:]]
            a = F.avg_pool2d(a, kernel_size=2, padding=pad)
            b = F.avg_pool2d(b, kernel_size=2, padding=pad)
    terms.append(torch.relu(s))
    return torch.prod(torch.stack(terms, 0) ** w.view(-1, 1, 1), 0).mean(1)


# ---- videos --------------------------------------------------------------------------------------
def frames_as_batch(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W)."""
    return x.transpose(1, 2).flatten(0, 1)


def per_frame(metric: Callable[[Tensor, Tensor], Tensor | None], x: Tensor, y: Tensor) -> Tensor | None:
    """Apply an image metric to every frame of videos (B, C, T, H, W) and average over T -> (B,).
    Images (B, C, H, W) are passed through unchanged. None if the metric returns None."""
    if x.dim() == 4:
        return metric(x, y)
    if x.dim() != 5 or x.shape != y.shape:
        raise ValueError(f"expected videos (B, C, T, H, W) of equal shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    B, T = x.shape[0], x.shape[2]
    v = metric(frames_as_batch(x), frames_as_batch(y))
    return None if v is None else v.reshape(B, T).mean(1)


def psnr_from_sse(sse: float, count: int) -> float:
    """PSNR (dB, 8-bit peak) from a sum of squared 0..255 errors over ``count`` values."""
    mse = sse / max(count, 1)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
