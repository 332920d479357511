"""Fréchet distances (FID, rFID, and the FVD of :mod:`bsqvit.metrics.fvd`) and feature statistics.

* :func:`frechet_distance` — ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})`` in float64 with
  ``scipy.linalg.sqrtm``. As in the pytorch-fid reference: if the square root is not finite
  (singular product), ``eps * I`` is added to both covariances and it is recomputed; the real
  part is kept (a warning is issued if the imaginary part is not negligible). ``method="symmetric"``
  computes the same trace with symmetric eigendecompositions (TF-GAN's formulation), much faster
  on a CPU (``sqrtm`` of a 512 x 512 product takes seconds here, 2048 x 2048 minutes).
* :class:`FeatureStats` — streaming mean / unbiased covariance (``np.cov`` semantics, N - 1) in
  float64, saved to / loaded from ``.npz`` (``mu``, ``sigma``, ``n``, ``feature``, ``meta``).
* Feature networks (images in [-1, 1], any size; each has ``name``, ``dim``, ``label`` and
  ``comparable_to_published``):

  - :class:`InceptionFeatures` — the FID InceptionV3 pool3 (2048-d) with pytorch-fid's
    ``pt_inception-2015-12-05`` weights: the network of published FID / rFID numbers;
  - :class:`SqueezeCaffeFeatures` — an offline **stand-in**: 512-d global average pool of the
    last Fire module of the Caffe SqueezeNet v1.1 (weights from ``$BSQVIT_WEIGHTS_DIR``). An "FID-like" score,
    **not comparable to published numbers**.

FID from few samples is strongly biased upwards (the covariance is estimated from N samples in
2048 or 512 dimensions); published rFID uses 50,000 ImageNet images. Every output names N.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..extras import require
from ..io import atomic_path
from ..nets.backbones import WeightsNotFound, build_backbone
from ..nets.inception import load_fid_inception

__all__ = [
    "frechet_distance",
    "FD_METHODS",
    "FeatureStats",
    "Stats",
    "save_stats",
    "load_stats",
    "FeatureExtractor",
    "InceptionFeatures",
    "SqueezeCaffeFeatures",
    "build_fid_features",
    "FID_KINDS",
    "STAND_IN_NOTE",
]

STAND_IN_NOTE = "not comparable to published numbers"
FID_KINDS = ("auto", "inception", "squeeze-caffe", "none")


# ---- BLAS threads -------------------------------------------------------------------------------
def blas_threads(n: int | None = None):
    """Context manager: limit the BLAS threads of NumPy/SciPy to ``n`` (default: torch's thread
    count, i.e. ``--threads``), restoring them afterwards (threadpoolctl). On a loaded machine
    OpenBLAS's default (all cores, busy-waiting) makes ``sqrtm``/``eigh`` 10-30x slower."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(n if n is not None else torch.get_num_threads())), user_api="blas")


# ---- the distance -----------------------------------------------------------------------------
def _sqrtm(a: np.ndarray) -> np.ndarray:
    linalg = require("scipy.linalg", "the sqrtm Fréchet distance")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm's "singular matrix" warnings: handled below
        return linalg.sqrtm(a)


FD_METHODS = ("sqrtm", "symmetric")


def _trace_sqrt_product_symmetric(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((S1 S2)^{1/2}) = tr((S1^{1/2} S2 S1^{1/2})^{1/2}) for symmetric PSD S1, S2 (TF-GAN's
    formulation), with symmetric eigendecompositions (negative round-off eigenvalues clipped)."""
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r @ s2 @ r
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64.

    ``method="sqrtm"`` (default): pytorch-fid's computation, ``scipy.linalg.sqrtm(sigma1 @ sigma2)``
    with the ``eps * I`` fallback and the real part. ``method="symmetric"``: the same quantity via
    ``tr((S1^{1/2} S2 S1^{1/2})^{1/2})`` with symmetric eigendecompositions (TF-GAN's formulation),
    10-100x faster on a CPU; the two agree to ~1e-9 relative on well-conditioned covariances
    (tested) and to round-off level when the covariances are rank-deficient (few samples).
    """
    if method == "sqrtm":
        # load SciPy's BLAS before limiting the threads of every loaded BLAS
        require("scipy.linalg", "the sqrtm Fréchet distance")
    with blas_threads():
        return _frechet_distance(mu1, sigma1, mu2, sigma2, eps, method)


def _frechet_distance(mu1, sigma1, mu2, sigma2, eps: float, method: str) -> float:
    if method not in FD_METHODS:
        raise ValueError(f"method must be one of {FD_METHODS}, got {method!r}")
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    if method == "symmetric":
        return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_product_symmetric(s1, s2))
    covmean = _sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag)) if covmean.size else 0.0
        if imag > 1e-3:
            warnings.warn(f"Fréchet distance: sqrtm has an imaginary component up to {imag:.3g}; "
                          "keeping the real part (too few samples for the feature dimension?)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ---- statistics -------------------------------------------------------------------------------
@dataclass
class Stats:
    """Gaussian statistics of a feature set."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    feature: str = ""
    meta: dict = field(default_factory=dict)

    def distance(self, other: "Stats", method: str = "sqrtm") -> float:
        if self.feature and other.feature and self.feature != other.feature:
            raise ValueError(f"statistics of different features: {self.feature!r} vs {other.feature!r}")
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma, method=method)


class FeatureStats:
    """Streaming float64 mean and covariance of feature vectors (rows).

    Sums are taken around a shift (the first batch's mean) to avoid cancellation; the covariance
    is the unbiased one (``np.cov(features, rowvar=False)``).
    """

    def __init__(self, feature: str = "", dim: int | None = None):
        self.feature = feature
        self.dim = dim
        self.n = 0
        self._shift: np.ndarray | None = None
        self._s1: np.ndarray | None = None
        self._s2: np.ndarray | None = None

    def update(self, feats) -> None:
        if isinstance(feats, torch.Tensor):
            feats = feats.detach().to("cpu", torch.float64).numpy()
        f = np.asarray(feats, dtype=np.float64)
        if f.ndim == 1:
            f = f[None]
        if f.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {f.shape}")
        if f.shape[0] == 0:
            return
        if self.dim is None:
            self.dim = f.shape[1]
        if f.shape[1] != self.dim:
            raise ValueError(f"feature dimension {f.shape[1]} != {self.dim}")
        if self._shift is None:
            self._shift = f.mean(0)
            self._s1 = np.zeros(self.dim)
            self._s2 = np.zeros((self.dim, self.dim))
        d = f - self._shift
        self._s1 += d.sum(0)
        with blas_threads():
            self._s2 += d.T @ d
        self.n += f.shape[0]

    @property
    def mean(self) -> np.ndarray:
        if not self.n:
            raise ValueError("no features accumulated")
        return self._shift + self._s1 / self.n

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"the covariance needs at least 2 feature vectors, have {self.n}")
        m = self._s1 / self.n
        return (self._s2 - self.n * np.outer(m, m)) / (self.n - 1)

    def stats(self, **meta) -> Stats:
        return Stats(self.mean, self.cov, self.n, self.feature, dict(meta))


def save_stats(path: str | os.PathLike, stats: Stats) -> None:
    """Write ``mu``, ``sigma``, ``n``, ``feature``, ``meta`` (JSON) to ``path`` (.npz), atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n), feature=np.str_(stats.feature),
                     meta=np.str_(json.dumps(stats.meta, sort_keys=True)))


def load_stats(path: str | os.PathLike) -> Stats:
    """Read statistics written by :func:`save_stats` (also accepts pytorch-fid's ``mu``/``sigma`` files)."""
    p = Path(path)
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: cannot read statistics ({' '.join(str(e).split())})") from None
    if not hasattr(z, "files"):
        raise ValueError(f"{p}: not a statistics file (an .npz archive with mu and sigma)")
    with z:
        if "mu" not in z.files or "sigma" not in z.files:
            raise ValueError(f"{p}: not a statistics file (needs mu and sigma, has {z.files})")
        mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
        n = int(z["n"]) if "n" in z.files else 0
        feature = str(z["feature"]) if "feature" in z.files else ""
        try:
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        except json.JSONDecodeError:
            meta = {}
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(f"{p}: bad shapes mu {mu.shape}, sigma {sigma.shape}")
    return Stats(mu, sigma, n, feature, meta)


# ---- feature networks -------------------------------------------------------------------------
class FeatureExtractor(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] -> features (B, dim), float32, no gradients."""

    name: str = ""
    dim: int = 0
    comparable_to_published: bool = False
    label: str = ""

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)


class InceptionFeatures(FeatureExtractor):
    """FID InceptionV3 pool3 (2048-d), pytorch-fid weights: the network of published FID."""

    name = "inception-v3-fid-pool3"
    dim = 2048
    comparable_to_published = True
    label = "FID (InceptionV3 pool3, pytorch-fid weights)"

    def __init__(self, weights: str | os.PathLike | None = None, search_dirs: Iterable = ()):
        super().__init__()
        self.net = load_fid_inception(weights, search_dirs)
        self.weights_file = weights
        self.requires_grad_(False)
        super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


_CAFFE_BGR_MEAN = (104.006, 116.669, 122.679)


class SqueezeCaffeFeatures(FeatureExtractor):
    """Stand-in: Caffe SqueezeNet v1.1 (ImageNet), input resized to 224x224 (bilinear), Caffe
    preprocessing (0-255, BGR, mean subtraction), global average pool of the last Fire module
    (512-d). FID-like scores on it are NOT comparable to published FID."""

    name = "squeezenet1_1-caffe-gap512"
    dim = 512
    comparable_to_published = False
    label = f"FID-like (SqueezeNet-Caffe GAP-512 stand-in, {STAND_IN_NOTE})"

    def __init__(self, weights: str | os.PathLike | None = None, search_dirs: Iterable = (), size: int = 224):
        super().__init__()
        self.features = build_backbone("squeezenet1_1_caffe", weights, list(search_dirs)).features
        self.size = size
        self.register_buffer("mean", torch.tensor(_CAFFE_BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(x.shape)}")
        x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = ((x.clamp(-1, 1) + 1) * 127.5).flip(1) - self.mean
        return self.features(x).mean(dim=(2, 3))


def build_fid_features(kind: str = "auto", inception_weights: str | os.PathLike | None = None,
                       search_dirs: Iterable = ()) -> FeatureExtractor:
    """``inception`` (real FID; :class:`~bsqvit.nets.backbones.WeightsNotFound` if absent),
    ``squeeze-caffe`` (stand-in) or ``auto`` (Inception when its weights are found, else the stand-in)."""
    search_dirs = [d for d in search_dirs if d]
    if kind == "inception":
        return InceptionFeatures(inception_weights, search_dirs)
    if kind == "squeeze-caffe":
        return SqueezeCaffeFeatures(None, search_dirs)
    if kind == "auto":
        try:
            return InceptionFeatures(inception_weights, search_dirs)
        except WeightsNotFound:
            if inception_weights is not None:
                raise
            return SqueezeCaffeFeatures(None, search_dirs)
    raise ValueError(f"unknown FID features {kind!r}; expected one of {FID_KINDS[:-1]}")
