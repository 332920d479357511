"""Many images through a tokenizer in batches: the folder paths of ``bsqvit tokenize`` and
``bsqvit compress``.

Images are grouped by size (read from their headers, before any decoding) and encoded ``batch``
at a time, so that a folder of same-size photos costs one forward pass per batch instead of one
per image. Within a size the order is the folder's sorted order. A batch holds the tokens of a
single-image call up to float rounding at exact ties of the quantizer (tested equal on real
images), as between devices; what a file holds is always the tokens that were coded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.images import find_images
from ..io import InputError, load_image
from ..io.image import MAX_PIXELS, image_size

__all__ = ["encode_images", "image_folder", "output_names"]

MAX_BATCH = 1024


def image_folder(folder: str | os.PathLike) -> list[Path]:
    """The images under ``folder`` (searched recursively, sorted by relative path), or an error."""
    files = [Path(f) for f in find_images(str(folder))]
    if not files:
        raise InputError(f"{folder}: no images found")
    return files


def output_names(files: Sequence[Path], root: Path, suffix: str) -> list[Path]:
    """Relative output paths: each file's path under ``root`` with ``suffix``; two images that
    would share one (``a.png`` and ``a.jpg``) are an error before any work."""
    names = [f.relative_to(root).with_suffix(suffix) for f in files]
    seen: dict[Path, Path] = {}
    for f, n in zip(files, names):
        if n in seen:
            raise InputError(f"{seen[n]} and {f} would both be written to {n}")
        seen[n] = f
    return names


def _groups_by_size(files: Sequence[Path], max_pixels: int | None) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, f in enumerate(files):
        groups.setdefault(image_size(f, max_pixels), []).append(i)
    return groups


@torch.no_grad()
def encode_images(model, files: Sequence[Path], batch: int = 8, amp: bool = False, bits: int | None = None,
                  max_pixels: int | None = MAX_PIXELS) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Yield ``(index into files, H, W, tokens (h, w) int64)`` for every image, ``batch`` images
    of one size per forward pass. Memory: ``batch`` decoded images at a time."""
    if not 1 <= batch <= MAX_BATCH:
        raise InputError(f"--batch must be in 1..{MAX_BATCH}, got {batch}")
    kw = {} if bits is None else {"bits": bits}
    for group in _groups_by_size(files, max_pixels).values():
        for s in range(0, len(group), batch):
            part = group[s : s + batch]
            xs = [load_image(files[i], max_pixels=max_pixels) for i in part]
            by_shape: dict[tuple[int, ...], list[int]] = {}  # EXIF rotation can change a header's size
            for j, x in enumerate(xs):
                by_shape.setdefault(tuple(x.shape), []).append(j)
            for shape, js in by_shape.items():
                idx = model.encode(torch.stack([xs[j] for j in js]).to(model.device), amp=amp, **kw).cpu().numpy()
                for j, tokens in zip(js, idx):
                    yield part[j], shape[-2], shape[-1], tokens.astype(np.int64)
