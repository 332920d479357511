"""Visual evaluation reports: PNG grids (original | reconstruction | error map), video frame strips
and side-by-side MP4s. Tiles are downscaled (Lanczos) to at most ``max_side`` pixels.

Error maps: mean absolute error over RGB on the [0, 255] scale, multiplied by ``gain`` (default
4, so an error of 64 levels saturates), mapped through the ``inferno`` colour map (matplotlib's
when installed, else a built-in approximation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..io import VideoWriter, atomic_path
from ..io.grid import captioned_tile

__all__ = ["error_map", "image_grid", "frame_strip", "side_by_side_video", "ERROR_GAIN"]

ERROR_GAIN = 4.0
# inferno at 0, .25, .5, .75, 1 (fallback when matplotlib is missing)
_INFERNO = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)


def _colormap(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB (..., 3)."""
    try:
        from matplotlib import colormaps  # optional and heavy: imported only when a report is drawn

        return (colormaps["inferno"](v)[..., :3] * 255 + 0.5).astype(np.uint8)
    except Exception:  # noqa: BLE001 - matplotlib is optional
        x = np.clip(v, 0, 1) * (len(_INFERNO) - 1)
        i = np.minimum(x.astype(int), len(_INFERNO) - 2)
        t = (x - i)[..., None]
        return (_INFERNO[i] * (1 - t) + _INFERNO[i + 1] * t + 0.5).astype(np.uint8)


def error_map(a: np.ndarray, b: np.ndarray, gain: float = ERROR_GAIN) -> np.ndarray:
    """uint8 (..., H, W, 3) pair -> colour-mapped |a - b| (mean over RGB, x gain), uint8 (..., H, W, 3)."""
    err = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(-1)
    return _colormap(np.clip(err * gain / 255.0, 0, 1))


def _fit(a: np.ndarray, max_side: int) -> Image.Image:
    img = Image.fromarray(a)
    s = max(img.size)
    if s > max_side:
        img = img.resize((max(1, round(img.width * max_side / s)), max(1, round(img.height * max_side / s))),
                         Image.Resampling.LANCZOS)
    return img


def image_grid(rows: Sequence[tuple[str, np.ndarray, np.ndarray, str]], path: str | Path, max_side: int = 256,
               gain: float = ERROR_GAIN) -> None:
    """PNG with one row per item: original | reconstruction | error map.

    ``rows``: (name, original uint8 (H, W, 3), reconstruction uint8 (H, W, 3), note e.g. "25.1 dB").
    """
    tiles = []
    for name, a, b, note in rows:
        e = error_map(a, b, gain)
        tiles.append([(f"{name}", _fit(a, max_side)), (f"reconstruction {note}", _fit(b, max_side)),
                      (f"|error| x{gain:g}", _fit(e, max_side))])
    _save_rows(tiles, path)


def _save_rows(tiles: list[list[tuple[str, Image.Image]]], path) -> None:
    canvas = Image.fromarray(captioned_tile([[(cap, np.asarray(t)) for cap, t in row] for row in tiles]))
    with atomic_path(path, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG", optimize=True)


def frame_strip(name: str, a: np.ndarray, b: np.ndarray, path: str | Path, max_frames: int = 8, max_side: int = 160,
                gain: float = ERROR_GAIN) -> None:
    """PNG: rows original / reconstruction / error for up to ``max_frames`` evenly spaced frames.
    ``a``, ``b``: uint8 (T, H, W, 3)."""
    T = a.shape[0]
    idx = sorted({int(round(i * (T - 1) / max(1, min(max_frames, T) - 1))) for i in range(min(max_frames, T))})
    e = error_map(a[idx], b[idx], gain)
    tiles = [
        [(f"{name} t={t}" if j == 0 else f"t={t}", _fit(a[t], max_side)) for j, t in enumerate(idx)],
        [("reconstruction" if j == 0 else f"t={t}", _fit(b[t], max_side)) for j, t in enumerate(idx)],
        [(f"|error| x{gain:g}" if j == 0 else f"t={t}", _fit(e[j], max_side)) for j, t in enumerate(idx)],
    ]
    _save_rows(tiles, path)


def side_by_side_video(a: np.ndarray, b: np.ndarray, path: str | Path, fps: float, max_side: int = 256,
                       gain: float = ERROR_GAIN) -> None:
    """MP4 (H.264): original | reconstruction | error map, each tile at most ``max_side`` px."""
    e = error_map(a, b, gain)
    frames = []
    for t in range(a.shape[0]):
        row = [np.asarray(_fit(v[t], max_side)) for v in (a, b, e)]
        frames.append(np.concatenate(row, axis=1))
    with VideoWriter(path, fps) as w:
        w.write(np.stack(frames))
