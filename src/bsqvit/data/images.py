"""Image folders as map-style data sets.

* Recursive, sorted (deterministic) discovery of every Pillow-readable file under the roots.
* Every image is converted to 8-bit RGB by :func:`bsqvit.io.image.to_rgb` (the package's one RGB
  policy: EXIF orientation applied, alpha composited on white, 16-bit/CMYK handled) and returned
  as float32 ``(3, H, W)`` in [-1, 1].
* A corrupt or unreadable file never stops a run: it is logged once (``logging.warning``),
  counted in ``bad_files`` and the next index (``index + 1 mod N``) is returned instead. Each
  sample carries ``skipped`` (how many files were skipped to produce it) so a trainer can sum
  the counts across workers in the main process.
* Keys are ``index`` or ``(epoch, index)`` (what :class:`~bsqvit.data.loader.ResumableDistributedSampler`
  yields with ``yield_epoch=True``); augmentation randomness is seeded from
  ``(seed, epoch, index)`` only.

:func:`open_rgb` adds what data loading needs on top of :mod:`bsqvit.io.image` (file objects,
JPEG draft decoding, the full-resolution size for crop geometry).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from PIL import Image, ImageFile, ImageOps

from ..io.image import IMAGE_SUFFIXES, open_checked, to_rgb
from .transforms import ImageTransform, sample_generator, to_tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "open_rgb",
    "to_rgb",
    "find_images",
    "ImageFolderDataset",
    "BadItemPolicy",
]

log = logging.getLogger(__name__)

# The image suffix table lives in io (one table for reading, writing and discovery).
IMAGE_EXTENSIONS: frozenset[str] = IMAGE_SUFFIXES

# Full decode: truncated files must raise, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def open_rgb(src: str | os.PathLike | Any, transform: ImageTransform | None = None
             ) -> tuple[Image.Image, tuple[int, int]]:
    """Decode an image file (path or binary file object) to RGB.

    Returns ``(image, (width, height))`` where the size is that of the full-resolution image
    after EXIF orientation. With a ``transform`` whose ``draft`` is on, JPEGs may be decoded
    at 1/2..1/8 scale (never below the transform's resize target); crop geometry must then be
    drawn from the returned full-resolution size.
    Raises on any decode problem (the data sets catch it).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF / DecompressionBomb / palette warnings
        img = open_checked(src)  # refused over the pixel limit, before decoding
        w, h = img.size
        if transform is not None:
            transform.draft(img)
        img.load()
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:
            orientation = 1
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        if orientation != 1:
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:
                if orientation in (5, 6, 7, 8):
                    w, h = h, w
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img = to_rgb(img)
    return img, (w, h)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(roots: str | os.PathLike | Sequence[str | os.PathLike],
                extensions: Iterable[str] | None = None) -> list[str]:
    """Image files under ``roots`` (folders, searched recursively, or single files).

    Order: roots in the given order; inside a root, paths sorted by their relative path
    (so the list is identical on every machine). Hidden files/folders are skipped.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    exts = {e.lower() if e.startswith(".") else "." + e.lower()
            for e in (extensions or IMAGE_EXTENSIONS)}
    out: list[str] = []
    for root in roots:
        root = os.fspath(root)
        if os.path.isfile(root):
            out.append(root)
            continue
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image root not found: {root}")
        found = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
            for fn in filenames:
                if not _is_hidden(fn) and os.path.splitext(fn)[1].lower() in exts:
                    found.append(os.path.join(dirpath, fn))
        found.sort(key=lambda p: Path(os.path.relpath(p, root)).parts)
        out.extend(found)
    return out


class BadItemPolicy:
    """Shared skip-and-count logic: ``bad_files`` maps path -> times skipped in this process
    (each DataLoader worker has its own copy; sum the per-sample ``skipped`` field instead)."""

    max_consecutive_bad = 1000

    def _init_bad(self) -> None:
        self.bad_files: dict[str, int] = {}
        self._warned: set[str] = set()

    def _record_bad(self, name: str, err: BaseException) -> None:
        self.bad_files[name] = self.bad_files.get(name, 0) + 1
        if name not in self._warned:
            self._warned.add(name)
            log.warning("skipping unreadable file %s (%s: %s)", name, type(err).__name__, err)

    @property
    def num_bad(self) -> int:
        """Total skips in this process."""
        return sum(self.bad_files.values())

    def _get_with_skip(self, index: int, n: int, load: Callable[[int], Any]) -> tuple[Any, int, int]:
        """``load(i)`` for i = index, index+1, ... (mod n) until one succeeds.

        Returns ``(item, used_index, skipped)``; raises RuntimeError only if
        ``max_consecutive_bad`` (or all n) items in a row fail.
        """
        if n == 0:
            raise IndexError("empty data set")
        limit = min(n, self.max_consecutive_bad)
        last: BaseException | None = None
        for k in range(limit):
            i = (index + k) % n
            try:
                return load(i), i, k
            except (KeyboardInterrupt, SystemExit):
                raise
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - any decode error skips the file
                self._record_bad(self._item_name(i), e)
                last = e
        raise RuntimeError(f"{limit} consecutive items from index {index} could not be read "
                           f"(last error: {last!r})")

    def _item_name(self, i: int) -> str:  # pragma: no cover - overridden
        return str(i)


def _split_key(key) -> tuple[int, int]:
    """``index`` or ``(epoch, index)`` -> ``(epoch, index)``."""
    if isinstance(key, (tuple, list)):
        epoch, index = key
        return int(epoch), int(index)
    if isinstance(key, torch.Tensor):
        key = key.item()
    return 0, int(key)


class ImageFolderDataset(BadItemPolicy, torch.utils.data.Dataset):
    """All images under ``roots`` (recursive, sorted).

    Args:
        roots: a folder, an image file, or a list of them.
        transform: an :class:`~bsqvit.data.transforms.ImageTransform` (or any callable
            ``(PIL image, generator) -> tensor``); ``None`` returns the full image.
        extensions: file name endings to accept (default :data:`IMAGE_EXTENSIONS`).
        seed: base seed of the per-sample augmentation generator.
        epoch: default epoch for integer keys (keys ``(epoch, index)`` override it).

    ``ds[i]`` -> ``{"image": (3,H,W) float in [-1,1], "index": int, "skipped": int}``; ``index``
    is the index actually returned (differs from ``i`` when files were skipped).
    """

    def __init__(self, roots: str | os.PathLike | Sequence[str | os.PathLike],
                 transform: Callable | None = None, extensions: Iterable[str] | None = None,
                 seed: int = 0, epoch: int = 0):
        self._init_bad()
        self.roots = [os.fspath(roots)] if isinstance(roots, (str, os.PathLike)) else [
            os.fspath(r) for r in roots]
        self.files = find_images(self.roots, extensions)
        if not self.files:
            raise FileNotFoundError(f"no image files found under {self.roots}")
        self.transform = transform
        self.seed = int(seed)
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Default epoch for integer keys (does not reach already-started persistent workers;
        the loader passes ``(epoch, index)`` keys instead)."""
        self.epoch = int(epoch)

    def _item_name(self, i: int) -> str:
        return self.files[i]

    def load(self, i: int, epoch: int | None = None) -> torch.Tensor:
        """Decode + transform file ``i`` (raises on errors)."""
        epoch = self.epoch if epoch is None else epoch
        t = self.transform
        if isinstance(t, ImageTransform):
            img, (w, h) = open_rgb(self.files[i], t)
            p = t.params(w, h, sample_generator(self.seed, epoch, i))
            return t.apply(img, p)
        img, _ = open_rgb(self.files[i])
        if t is None:
            return to_tensor(img)
        return t(img, sample_generator(self.seed, epoch, i))

    def __getitem__(self, key) -> dict:
        epoch, index = _split_key(key)
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        x, used, skipped = self._get_with_skip(index, n, lambda i: self.load(i, epoch))
        return {"image": x, "index": used, "skipped": skipped}
