"""PNG sample grids: originals above reconstructions (first frame of videos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _img(t: torch.Tensor) -> np.ndarray:
    if t.ndim == 4:  # (3, T, H, W): first frame
        t = t[:, 0]
    return ((t.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def save_grid(pairs, path: Path, pad: int = 2) -> None:
    """``pairs``: list of (original, reconstruction) tensors in [-1, 1]; written atomically."""
    if not pairs:
        return
    tiles = [(_img(a), _img(b)) for a, b in pairs]
    h = max(a.shape[0] for a, _ in tiles)
    w = max(a.shape[1] for a, _ in tiles)
    grid = np.full((2 * h + 3 * pad, len(tiles) * (w + pad) + pad, 3), 255, np.uint8)
    for i, (a, b) in enumerate(tiles):
        x0 = pad + i * (w + pad)
        grid[pad : pad + a.shape[0], x0 : x0 + a.shape[1]] = a
        grid[2 * pad + h : 2 * pad + h + b.shape[0], x0 : x0 + b.shape[1]] = b
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(grid).save(tmp, format="PNG")
    tmp.replace(path)
