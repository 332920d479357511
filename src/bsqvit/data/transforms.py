"""Image/clip transforms in pure torch + Pillow (no torchvision).

Every random decision is drawn from an explicit ``torch.Generator``; the data sets seed it
from ``(seed, epoch, sample index)`` with :func:`sample_generator`, so augmentations do not
depend on the number of workers, on the order in which workers run, or on a resume.

Protocols (see docs/REFERENCE.md):

* train: resize the short side to ``resize`` (default: the crop size, as the reference's
  ``Resize(256) + RandomCrop(256)``), random crop ``resolution``², optional horizontal flip;
* eval: Lanczos resize of the short side to ``resolution`` + centre crop (the paper's protocol).

All outputs are float32 tensors in [-1, 1]: images ``(3, H, W)``, clips ``(3, T, H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..io.image import to_rgb

__all__ = [
    "RESAMPLE",
    "CropParams",
    "ImageTransform",
    "train_transform",
    "eval_transform",
    "sample_seed",
    "sample_generator",
    "resize_short_side",
    "short_side_size",
    "random_crop_params",
    "center_crop_params",
    "crop",
    "hflip",
    "to_tensor",
    "frames_to_tensor",
]

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, epoch, index)`` (well mixed)."""
    h = _splitmix64(int(seed) & _MASK64)
    h = _splitmix64(h ^ (int(epoch) & _MASK64))
    h = _splitmix64(h ^ (int(index) & _MASK64))
    return h & ((1 << 63) - 1)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`sample_seed`."""
    g = torch.Generator()
    g.manual_seed(sample_seed(seed, epoch, index))
    return g


def _randint(generator: torch.Generator | None, high: int) -> int:
    """Uniform integer in ``[0, high)`` (``high >= 1``)."""
    if high <= 1:
        return 0
    return int(torch.randint(high, (1,), generator=generator).item())


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator).item())


# ----------------------------------------------------------------------------- functional


def short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(w, h)`` after scaling so that the short side is ``size`` (aspect ratio kept, rounded)."""
    if width <= height:
        return size, max(1, int(round(height * size / width)))
    return max(1, int(round(width * size / height))), size


def resize_short_side(img: Image.Image, size: int, resample: str = "lanczos") -> Image.Image:
    """Resize a PIL image so its short side is ``size``. Pillow's filters are antialiased
    (their support grows with the downscale factor), unlike plain strided sampling."""
    w, h = img.size
    nw, nh = short_side_size(w, h, size)
    if (nw, nh) == (w, h):
        return img
    return img.resize((nw, nh), RESAMPLE[resample])


def random_crop_params(height: int, width: int, size: int | tuple[int, int],
                       generator: torch.Generator | None = None) -> tuple[int, int]:
    """``(top, left)`` of a uniformly random ``size`` crop (crop must fit)."""
    ch, cw = (size, size) if isinstance(size, int) else size
    if ch > height or cw > width:
        raise ValueError(f"crop {ch}x{cw} larger than image {height}x{width}")
    top = _randint(generator, height - ch + 1)
    left = _randint(generator, width - cw + 1)
    return top, left


def center_crop_params(height: int, width: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """``(top, left)`` of the centred ``size`` crop (rounded like torchvision's CenterCrop)."""
    ch, cw = (size, size) if isinstance(size, int) else size
    if ch > height or cw > width:
        raise ValueError(f"crop {ch}x{cw} larger than image {height}x{width}")
    return int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))


def crop(img, top: int, left: int, height: int, width: int):
    """Crop a PIL image or a tensor ``(..., H, W)``."""
    if isinstance(img, Image.Image):
        return img.crop((left, top, left + width, top + height))
    return img[..., top:top + height, left:left + width]


def hflip(img):
    """Mirror a PIL image or a tensor ``(..., H, W)`` left-right."""
    if isinstance(img, Image.Image):
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img.flip(-1)


def _uint8_to_unit(arr: np.ndarray) -> torch.Tensor:
    """uint8 array -> float32 tensor ``x / 127.5 - 1`` (numpy: much faster than torch
    element-wise ops on small tensors on this CPU)."""
    x = arr.astype(np.float32)
    x /= 127.5
    x -= 1.0
    return torch.from_numpy(x)


def to_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    """8-bit RGB PIL image / HWC uint8 array -> float32 ``(3, H, W)`` in [-1, 1]."""
    if isinstance(img, Image.Image):
        arr = np.asarray(to_rgb(img))
    else:
        arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return _uint8_to_unit(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def frames_to_tensor(frames: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
    """List of T equally sized RGB frames -> ``(3, T, H, W)`` in [-1, 1]."""
    arrs = [np.asarray(to_rgb(f) if isinstance(f, Image.Image) else f)
            for f in frames]
    x = np.stack(arrs, 0)  # T,H,W,3
    return _uint8_to_unit(np.ascontiguousarray(x.transpose(3, 0, 1, 2)))


# ----------------------------------------------------------------------------- transform


@dataclass(frozen=True)
class CropParams:
    """The geometric decisions for one image / one clip (shared by all its frames)."""

    resized: tuple[int, int]  # (w, h) after the short-side resize
    top: int
    left: int
    flip: bool


class ImageTransform:
    """Short-side resize -> (random | centre) crop -> optional random hflip -> [-1, 1] tensor.

    Args:
        resolution: output size (square crop ``resolution``²).
        resize: short side after the resize. ``None`` -> ``resolution``; ``0`` -> no resize
            (images whose short side is below ``resolution`` are still upscaled to fit).
            Values below ``resolution`` are rejected.
        random_crop: random (train) or centred (eval) crop.
        flip: apply a horizontal flip with probability 0.5.
        resample: Pillow filter for the resize: lanczos | bicubic | bilinear | box | ...
        draft: let the JPEG decoder downscale by 1/2, 1/4 or 1/8 in the DCT domain while the
            result stays >= the resize target (large speed-up on big JPEGs; the final Pillow
            resize still runs). Only used through :meth:`draft`.
    """

    def __init__(self, resolution: int, resize: int | None = None, random_crop: bool = False,
                 flip: bool = False, resample: str = "lanczos", draft: bool = False):
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if resize is None:
            resize = resolution
        if resize != 0 and resize < resolution:
            raise ValueError(f"resize ({resize}) must be >= resolution ({resolution}) or 0")
        if resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(RESAMPLE)}, got {resample!r}")
        self.resolution = int(resolution)
        self.resize = int(resize)
        self.random_crop = bool(random_crop)
        self.flip = bool(flip)
        self.resample = resample
        self.use_draft = bool(draft)

    def __repr__(self) -> str:
        return (f"ImageTransform(resolution={self.resolution}, resize={self.resize}, "
                f"random_crop={self.random_crop}, flip={self.flip}, resample={self.resample!r}, "
                f"draft={self.use_draft})")

    # -- geometry
    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """``(w, h)`` after the resize step."""
        short = min(width, height)
        if self.resize == 0:
            if short >= self.resolution:
                return width, height
            return short_side_size(width, height, self.resolution)
        return short_side_size(width, height, self.resize)

    def params(self, width: int, height: int, generator: torch.Generator | None = None) -> CropParams:
        """Draw the crop/flip for an input of ``width x height`` (in this order: crop, flip)."""
        rw, rh = self.target_size(width, height)
        r = self.resolution
        if self.random_crop:
            top, left = random_crop_params(rh, rw, r, generator)
        else:
            top, left = center_crop_params(rh, rw, r)
        flip = self.flip and _rand(generator) < 0.5
        return CropParams((rw, rh), top, left, flip)

    def draft(self, img: Image.Image) -> None:
        """Call on a freshly opened (not yet loaded) image to enable JPEG DCT downscaling."""
        if not self.use_draft or getattr(img, "format", None) not in ("JPEG", "MPO"):
            return
        w, h = img.size
        rw, rh = self.target_size(w, h)
        if rw >= w:
            return
        try:
            img.draft(img.mode if img.mode in ("L", "RGB") else None, (rw, rh))
        except Exception:  # pragma: no cover - draft is an optimisation only
            pass

    def apply_pil(self, img: Image.Image, p: CropParams) -> Image.Image:
        """Apply ``p`` to an RGB PIL image; returns a PIL image ``resolution``²."""
        if img.size != p.resized:
            img = img.resize(p.resized, RESAMPLE[self.resample])
        r = self.resolution
        img = crop(img, p.top, p.left, r, r)
        if p.flip:
            img = hflip(img)
        return img

    def apply(self, img: Image.Image, p: CropParams) -> torch.Tensor:
        return to_tensor(self.apply_pil(img, p))

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """PIL image -> ``(3, resolution, resolution)`` in [-1, 1]."""
        p = self.params(img.width, img.height, generator)
        return self.apply(img, p)

    def apply_frames(self, frames: Sequence[Image.Image],
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """The same crop/flip on every frame -> ``(3, T, resolution, resolution)``. Geometry is
        drawn from the first frame's size; frames of another size are resized to match."""
        if not frames:
            raise ValueError("no frames")
        w, h = frames[0].size
        p = self.params(w, h, generator)
        return frames_to_tensor([self.apply_pil(f, p) for f in frames])


def train_transform(resolution: int, resize: int | None = None, hflip: bool = True,
                    resample: str = "bilinear", draft: bool = True) -> ImageTransform:
    """Resize short side to ``resize`` (default ``resolution``) + random crop + optional flip.

    ``bilinear`` (antialiased) matches torchvision's ``Resize`` default used by the reference.
    """
    return ImageTransform(resolution, resize, random_crop=True, flip=hflip, resample=resample,
                          draft=draft)


def eval_transform(resolution: int, resize: int | None = None,
                   resample: str = "lanczos") -> ImageTransform:
    """Lanczos resize of the short side (default to ``resolution``) + centre crop; no draft,
    so it is the exact protocol (full decode, one Lanczos resize)."""
    return ImageTransform(resolution, resize, random_crop=False, flip=False, resample=resample,
                          draft=False)
