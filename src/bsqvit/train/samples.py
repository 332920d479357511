"""PNG sample grids: originals above reconstructions (first frame of videos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..io.files import atomic_path
from ..io.grid import tile
from ..io.image import to_uint8


def _img(t: torch.Tensor) -> np.ndarray:
    if t.ndim == 4:  # (3, T, H, W): first frame
        t = t[:, 0]
    return to_uint8(t)


def save_grid(pairs, path: Path, pad: int = 2) -> None:
    """``pairs``: list of (original, reconstruction) tensors in [-1, 1]; written atomically."""
    if not pairs:
        return
    rows = [[_img(a) for a, _ in pairs], [_img(b) for _, b in pairs]]
    grid = tile(rows, gap=pad, border=pad)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
