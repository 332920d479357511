"""Evaluation metrics: pixel (PSNR / SSIM / MS-SSIM), perceptual (LPIPS), Fréchet distances
(FID / rFID, FVD), token statistics.

Submodules: :mod:`.pixel`, :mod:`.lpips`, :mod:`.fid`, :mod:`.fvd`, :mod:`.tokens`. Everything
takes tensors in [-1, 1]. Scores computed on the offline stand-in networks (SqueezeNet-Caffe)
carry labels saying they are not comparable to published numbers.
"""

from .fid import (
    FeatureStats,
    InceptionFeatures,
    SqueezeCaffeFeatures,
    Stats,
    build_fid_features,
    frechet_distance,
    load_stats,
    save_stats,
)
from .fvd import I3DFeatures, fvd_from_features
from .lpips import LPIPS, build_lpips, build_perceptual
from .pixel import ms_ssim, ms_ssim_db, per_frame, psnr, ssim
from .tokens import TokenStats, raw_bpp

__all__ = [
    "FeatureStats",
    "I3DFeatures",
    "InceptionFeatures",
    "LPIPS",
    "SqueezeCaffeFeatures",
    "Stats",
    "TokenStats",
    "build_fid_features",
    "build_lpips",
    "build_perceptual",
    "frechet_distance",
    "fvd_from_features",
    "load_stats",
    "ms_ssim",
    "ms_ssim_db",
    "per_frame",
    "psnr",
    "raw_bpp",
    "save_stats",
    "ssim",
]
