"""What ``bsqvit eval`` is asked to do (:class:`EvalConfig`), its checks, and the protocol text
stated in every output.

Protocols:

* ``resize="lanczos"`` (the paper's; also ``bilinear``/``bicubic``): the short side is resized to
  ``resolution`` with Pillow's antialiased filter, then the centre ``resolution``² crop is taken;
* ``resize="none"``: original resolution; the model pads to a multiple of its patch size and crops
  back; items of different sizes are never batched together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..io import InputError

__all__ = ["EvalConfig", "RESIZE_CHOICES", "LPIPS_CHOICES", "FID_CHOICES", "STAND_IN", "SMALL_N_NOTE",
           "default_weight_dirs", "check_config", "data_protocol", "protocol_string"]

RESIZE_CHOICES = ("lanczos", "bilinear", "bicubic", "none")
LPIPS_CHOICES = ("auto", "vgg", "alex", "squeeze", "squeeze-caffe", "none")
FID_CHOICES = ("auto", "inception", "squeeze-caffe", "none")
STAND_IN = "not comparable to published numbers"
SMALL_N_NOTE = "FID from few items is biased upwards (published rFID uses 50,000 images)"


@dataclass
class EvalConfig:
    data: str
    video: bool = False
    resolution: int | None = None  # None: the model's training size (resize protocols only)
    resize: str = "lanczos"
    limit: int | None = None
    batch: int = 1
    amp: bool = False
    device: str = "cpu"
    lpips: str = "auto"
    fid: str = "auto"
    fid_ref: str | None = None
    fid_method: str = "sqrtm"  # sqrtm (pytorch-fid) | symmetric (TF-GAN formulation, faster)
    inception_weights: str | None = None
    i3d_weights: str | None = None
    weights_dir: str | None = None
    frames: int | None = None
    clips_per_video: int = 1
    report: str | None = None
    report_items: int = 4
    progress: bool = True


def default_weight_dirs(extra: str | os.PathLike | None = None) -> list[str]:
    """Directories searched for metric weights besides the loaders' own ``$BSQVIT_WEIGHTS_DIR``
    and torch-hub cache: ``extra`` (``--weights-dir``) when given."""
    return [str(extra)] if extra else []


def _check_ranges(cfg: EvalConfig) -> None:
    if cfg.resolution is not None and cfg.resolution < 1:
        raise InputError(f"--resolution must be >= 1, got {cfg.resolution}")
    if cfg.batch < 1:
        raise InputError(f"--batch must be >= 1, got {cfg.batch}")
    if cfg.limit is not None and cfg.limit < 1:
        raise InputError(f"--limit must be >= 1, got {cfg.limit}")
    if cfg.frames is not None and cfg.frames < 1:
        raise InputError(f"--frames must be >= 1, got {cfg.frames}")
    if cfg.clips_per_video < 1:
        raise InputError(f"--clips-per-video must be >= 1, got {cfg.clips_per_video}")


def check_config(cfg: EvalConfig) -> None:
    """Raise :class:`InputError` on the first setting out of its range (in the order of the options)."""
    if cfg.resize not in RESIZE_CHOICES:
        raise InputError(f"--resize must be one of {', '.join(RESIZE_CHOICES)}, got {cfg.resize!r}")
    if cfg.resize == "none" and cfg.resolution is not None:
        raise InputError("--resolution applies to the resize protocols; drop it or use --resize lanczos|bilinear")
    _check_ranges(cfg)
    if cfg.lpips not in LPIPS_CHOICES:
        raise InputError(f"--lpips must be one of {', '.join(LPIPS_CHOICES)}, got {cfg.lpips!r}")
    if cfg.fid not in FID_CHOICES:
        raise InputError(f"--fid must be one of {', '.join(FID_CHOICES)}, got {cfg.fid!r}")
    if cfg.fid_method not in ("sqrtm", "symmetric"):
        raise InputError(f"--fid-method must be sqrtm or symmetric, got {cfg.fid_method!r}")
    if not Path(cfg.data).exists():
        raise InputError(f"{cfg.data}: no such file or directory")


def data_protocol(cfg: EvalConfig, resolution: int | None) -> str:
    """The input side of the protocol (what reference statistics depend on)."""
    if cfg.resize == "none":
        return "original resolution (no resize)"
    return f"short side resized to {resolution} px ({cfg.resize}, Pillow antialiased), centre crop {resolution}x{resolution}"


def protocol_string(cfg: EvalConfig, model, resolution: int | None, T: int | None) -> str:
    """The whole protocol of a run: inputs, model-side padding, clips, metric conventions."""
    s = data_protocol(cfg, resolution)
    if cfg.resize == "none":
        s += f"; the model pads to a multiple of {model.patch_size} px ({model.config.pad_mode}) and crops back"
    if T is not None:
        s += f"; clips of {T} consecutive frames from frame 0 ({cfg.clips_per_video} per video), metrics per frame averaged"
    s += "; metrics on 8-bit values, PSNR per item on [0, 255] averaged over items"
    if cfg.amp:
        s += "; bf16 autocast"
    return s
