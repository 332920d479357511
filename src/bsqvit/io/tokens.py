"""Token files (``bsqvit tokenize`` / ``bsqvit detokenize``).

A token file is an ``.npz`` archive with ``indices`` (int64, (h, w) for an image or (T, h, w)
for a video), ``height``, ``width`` (pixels of the original), ``frames`` (T; 0 for an image),
``fps`` (0.0 for an image), ``bits`` (bits per token, L), ``patch_size``, ``model_hash``
(``BSQViT.weights_hash()``) and ``version`` (1).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from . import InputError, atomic_path, one_line

TOKEN_FORMAT_VERSION = 1
TOKEN_KEYS = ("indices", "height", "width", "frames", "fps", "bits", "patch_size", "model_hash")


def save_tokens(path: str | os.PathLike, indices, *, height: int, width: int, frames: int, fps: float,
                bits: float, patch_size: int, model_hash: str) -> None:
    """Write a token file atomically (no partial file on failure)."""
    record = dict(
        indices=np.asarray(indices, dtype=np.int64),
        height=np.int64(height),
        width=np.int64(width),
        frames=np.int64(frames),
        fps=np.float64(fps),
        bits=np.float64(bits),
        patch_size=np.int64(patch_size),
        model_hash=np.str_(model_hash),
        version=np.int64(TOKEN_FORMAT_VERSION),
    )
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **record)


def _read_npz(path: Path) -> dict:
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a token file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, pickle refusals, truncated files, ...
        raise InputError(f"{path}: not a token file ({type(e).__name__}: {one_line(e)})") from None


def _check_geometry(path: Path, out: dict) -> None:
    idx = out["indices"]
    p, (h, w) = out["patch_size"], idx.shape[-2:]
    if p < 1 or not (0 < out["height"] <= h * p and out["height"] > (h - 1) * p) or not (
        0 < out["width"] <= w * p and out["width"] > (w - 1) * p
    ):
        raise InputError(f"{path}: token grid {h}x{w} (patch {p}) does not match the size {out['width']}x{out['height']}")
    expected_frames = idx.shape[0] if idx.ndim == 3 else 0
    if out["frames"] != expected_frames:
        raise InputError(f"{path}: frames={out['frames']} but indices have shape {idx.shape}")
    if idx.ndim == 3 and not (0 < out["fps"] < 1000):
        raise InputError(f"{path}: bad fps {out['fps']}")


def load_tokens(path: str | os.PathLike) -> dict:
    """Read and check the structure of a token file (not yet against a model)."""
    path = Path(path)
    data = _read_npz(path)
    missing = [k for k in TOKEN_KEYS if k not in data]
    if missing:
        raise InputError(f"{path}: token file lacks {', '.join(missing)}")
    idx = data["indices"]
    if idx.dtype.kind not in "iu" or idx.ndim not in (2, 3) or idx.size == 0:
        raise InputError(f"{path}: indices must be a non-empty integer array (h,w) or (T,h,w), got {idx.dtype} {idx.shape}")
    try:
        out = {
            "indices": idx.astype(np.int64),
            "height": int(data["height"]),
            "width": int(data["width"]),
            "frames": int(data["frames"]),
            "fps": float(data["fps"]),
            "bits": float(data["bits"]),
            "patch_size": int(data["patch_size"]),
            "model_hash": str(data["model_hash"]),
        }
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: malformed token file ({one_line(e)})") from None
    _check_geometry(path, out)
    return out
