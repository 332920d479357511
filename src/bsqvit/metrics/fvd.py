"""FVD / rFVD: the Fréchet distance between I3D features of real and reconstructed clips.

Features: the 400-d Kinetics logits of I3D (:mod:`bsqvit.nets.i3d`, weights
``i3d_pretrained_400.pt``), averaged over time, as in the TF-Hub FVD of Unterthiner et al. and in
VideoGPT's PyTorch port. Preprocessing: every frame's short side is resized to 224 (bilinear,
``align_corners=False``) and centre-cropped to 224x224; pixel values stay in [-1, 1] (the range
the I3D weights were trained with; note that VideoGPT's code feeds [-0.5, 0.5], a known quirk,
so its numbers differ from ours). Clips need at least 9 frames (16 is the usual protocol).

The distance itself is :func:`bsqvit.metrics.fid.frechet_distance` (float64); it is tested on
features. The I3D network is tested for layout/shape only: numbers on the real weights are not
verified offline (the weight file is not available on the development machine).
"""

from __future__ import annotations

import math
import os
from typing import Iterable

import torch
import torch.nn.functional as F

from ..nets.i3d import load_i3d
from .fid import FeatureExtractor, FeatureStats, frechet_distance

__all__ = ["I3DFeatures", "preprocess_clips", "fvd_from_features", "FVD_MIN_FRAMES"]

FVD_MIN_FRAMES = 9


def preprocess_clips(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B, 3, T, size, size): short side to ``size`` (bilinear), centre crop."""
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"expected clips (B, 3, T, H, W), got {tuple(x.shape)}")
    B, C, T, H, W = x.shape
    scale = size / min(H, W)
    th, tw = (size, max(size, math.ceil(W * scale))) if H <= W else (max(size, math.ceil(H * scale)), size)
    f = x.float().transpose(1, 2).reshape(B * T, C, H, W)
    if (th, tw) != (H, W):
        f = F.interpolate(f, size=(th, tw), mode="bilinear", align_corners=False)
    top, left = (th - size) // 2, (tw - size) // 2
    f = f[:, :, top:top + size, left:left + size]
    return f.reshape(B, T, C, size, size).transpose(1, 2).contiguous()


class I3DFeatures(FeatureExtractor):
    """Clips (B, 3, T, H, W) in [-1, 1] -> I3D Kinetics-400 logits (B, 400)."""

    name = "i3d-kinetics400-logits"
    dim = 400
    comparable_to_published = True
    label = "rFVD (I3D Kinetics-400 logits, i3d_pretrained_400.pt)"

    def __init__(self, weights: str | os.PathLike | None = None, search_dirs: Iterable = ()):
        super().__init__()
        self.net = load_i3d(weights, [d for d in search_dirs if d])
        self.requires_grad_(False)
        super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] < FVD_MIN_FRAMES:
            raise ValueError(f"FVD needs clips of at least {FVD_MIN_FRAMES} frames, got {x.shape[2]}")
        return self.net(preprocess_clips(x))


def fvd_from_features(real, fake, method: str = "sqrtm") -> float:
    """FVD between two sets of per-clip features (N, D) (N >= 2 each)."""
    a, b = FeatureStats(), FeatureStats()
    a.update(real)
    b.update(fake)
    return frechet_distance(a.mean, a.cov, b.mean, b.cov, method=method)
