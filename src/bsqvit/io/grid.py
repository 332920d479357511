"""Image grids: the one function that tiles uint8 ``(H, W, 3)`` images into a single picture
(:func:`tile`), and the same with a caption above every image (:func:`captioned_tile`).

Used by the training sample grids, the generator's class grids, the demo and the evaluation reports.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["captioned_tile", "grid_layout", "tile"]

CAPTION_H = 14  # pixels above each image for its caption (Pillow's default bitmap font)


def grid_layout(shapes: Sequence[Sequence[tuple[int, int]]], gap: int = 2, border: int = 0,
                uniform: bool = True, caption_h: int = 0, cols: int = 0
                ) -> tuple[tuple[int, int], list[list[tuple[int, int]]]]:
    """Canvas size ``(H, W)`` and the top-left ``(x, y)`` of every cell (caption above the tile).

    ``shapes``: rows of tile sizes ``(h, w)``. ``uniform``: every cell is as large as the largest
    tile (a regular grid, at least ``cols`` cells wide); otherwise the tiles of a row are packed left to right and each row is
    as tall as its tallest tile. Cells are ``gap`` apart, ``border`` from the edges, and each
    reserves ``caption_h`` pixels above its tile.
    """
    if not any(len(r) for r in shapes):
        raise ValueError("no images to tile")
    if uniform:
        ch = max(h for r in shapes for h, _ in r)
        cw = max(w for r in shapes for _, w in r)
        heights = [ch for _ in shapes]
        xs = [[j * (cw + gap) for j in range(len(r))] for r in shapes]
        width = max(cols, *(len(r) for r in shapes)) * (cw + gap) - gap
    else:
        heights = [max((h for h, _ in r), default=0) for r in shapes]
        xs = [[sum(w + gap for _, w in r[:j]) for j in range(len(r))] for r in shapes]
        width = max(sum(w for _, w in r) + gap * (len(r) - 1) for r in shapes)
    positions, y = [], border
    for h, row_xs in zip(heights, xs):
        positions.append([(border + x, y) for x in row_xs])
        y += h + caption_h + gap
    size = (y - gap + border, width + 2 * border)
    return size, positions


def tile(rows: Sequence[Sequence[np.ndarray]], gap: int = 2, border: int = 0, fill=255,
         uniform: bool = True, caption_h: int = 0, cols: int = 0) -> np.ndarray:
    """Rows of uint8 ``(h, w, 3)`` images -> one uint8 ``(H, W, 3)`` image on a ``fill`` background
    (layout: :func:`grid_layout`; tiles sit at the top left of their cells, below the caption)."""
    shapes = [[a.shape[:2] for a in r] for r in rows]
    (H, W), positions = grid_layout(shapes, gap, border, uniform, caption_h, cols)
    out = np.empty((H, W, 3), np.uint8)
    out[:] = fill
    for row, row_pos in zip(rows, positions):
        for a, (x, y) in zip(row, row_pos):
            out[y + caption_h : y + caption_h + a.shape[0], x : x + a.shape[1]] = a
    return out


def captioned_tile(rows: Sequence[Sequence[tuple[str, np.ndarray]]], gap: int = 2, border: int = 2,
                   fill=(24, 24, 24), text_fill=(230, 230, 230), uniform: bool = False) -> np.ndarray:
    """Rows of ``(caption, uint8 image)`` -> one uint8 image, each caption above its image
    (shortened with ``...`` to the image's width)."""
    images = [[a for _, a in row] for row in rows]
    layout = dict(gap=gap, border=border, uniform=uniform, caption_h=CAPTION_H)
    canvas = Image.fromarray(tile(images, fill=fill, **layout))
    _, positions = grid_layout([[a.shape[:2] for a in row] for row in images], **layout)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for row, row_pos in zip(rows, positions):
        for (text, a), (x, y) in zip(row, row_pos):
            while len(text) > 4 and draw.textlength(text, font=font) > a.shape[1] - 4:
                text = text[:-4] + "..."
            draw.text((x + 2, y + 1), text, fill=text_fill, font=font)
    return np.asarray(canvas)
