"""Images as ``(3, H, W)`` float32 tensors in [-1, 1], read and written with Pillow.

Conversion rules of :func:`load_image` (every Pillow-readable format):

* EXIF orientation is applied first (``PIL.ImageOps.exif_transpose``), so the tensor is the
  image as a viewer shows it.
* Transparency (RGBA, LA, PA, La/RGBa, and P/L/RGB with a ``transparency`` entry) is
  **composited onto a white background** (``rgb * a + 1 * (1 - a)``, in float, no extra
  rounding): what a viewer shows on a white page, and no black fringes from dropped alpha.
* 16-bit grayscale (``I;16*``) keeps its precision: ``value / 65535``. Pillow's 32-bit
  integer mode ``I`` is treated the same way (clipped to 0..65535). Float mode ``F`` follows
  Pillow's own convention (0..255 scale, clipped). Grayscale is replicated to 3 channels.
* Everything else (1, L, P, CMYK, YCbCr, LAB, HSV, RGBX, ...) goes through Pillow's
  ``convert("RGB")``. Embedded ICC profiles are not applied (CMYK conversion is Pillow's naive one).

Size limit: an image (or a video frame, :mod:`.video`) of more than ``max_pixels`` pixels,
:data:`MAX_PIXELS` (64 MP) by default, is refused from its header, before anything is decoded.
Pillow's own decompression-bomb warning is silenced: this limit is the one that applies.
"""

from __future__ import annotations

import contextlib

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import InputError, atomic_path, one_line

# The one table of image suffixes: formats Pillow can read (video-like or vector formats such as
# .mpg/.pdf/.eps left out). Used to discover images in folders and to tell image outputs from
# videos; which of them can be *written* is Pillow's registry's call (:func:`image_format`).
IMAGE_SUFFIXES: frozenset[str] = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".webp", ".tif", ".tiff",
    ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".pfm", ".tga", ".qoi", ".avif", ".jp2", ".j2k",
    ".j2c", ".jpc", ".jpf", ".jpx", ".ico", ".sgi", ".rgb", ".rgba", ".bw", ".pcx", ".mpo",
    ".dds", ".icns", ".im", ".msp", ".ras", ".xbm", ".xpm", ".blp", ".ftc", ".ftu",
})

MAX_PIXELS = 64_000_000  # default limit on the pixels of an input image or video frame (64 MP)

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


# ---- uint8 <-> [-1, 1] --------------------------------------------------------------------------
def to_uint8(t: torch.Tensor) -> np.ndarray:
    """[-1, 1] tensor, channels first -> uint8 array, channels last (clamped, ``round()``-ed).

    ``(3, H, W) -> (H, W, 3)`` and ``(3, T, H, W) -> (T, H, W, 3)``.
    """
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.ndim not in (3, 4) or t.shape[0] != 3:
        raise ValueError(f"expected (3,H,W) or (3,T,H,W), got shape {tuple(t.shape)}")
    u = ((t.detach().to("cpu", torch.float32).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u.movedim(0, -1).contiguous().numpy()


def from_uint8(a: np.ndarray) -> torch.Tensor:
    """uint8 array, channels last -> float32 tensor in [-1, 1], channels first.

    ``(H, W, 3) -> (3, H, W)`` and ``(T, H, W, 3) -> (3, T, H, W)``. Exact inverse of
    :func:`to_uint8` on uint8 data.
    """
    a = np.asarray(a)
    if a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"expected (H,W,3) or (T,H,W,3), got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {a.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(a)).movedim(-1, 0).to(torch.float32)
    return (t / 127.5 - 1).contiguous()


# ---- reading ------------------------------------------------------------------------------------
def _needs_float(img: Image.Image) -> bool:
    """Modes that ``convert("RGB")`` would get wrong: alpha, 16/32-bit integers, float."""
    mode = img.mode
    return (mode in _SIXTEEN_BIT or mode in ("I", "F") or mode in _ALPHA_MODES
            or "transparency" in img.info)


def to_rgb01(img: Image.Image) -> np.ndarray:
    """Any Pillow image -> float32 (H, W, 3) in [0, 1] (rules in the module docstring).

    The one RGB policy of the package: :func:`to_rgb` (8-bit Pillow image) rounds this.
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        a = np.asarray(img).astype(np.float32)
        a = np.clip(a, 0, 65535) / 65535.0
        return np.repeat(a[..., None], 3, axis=-1)
    if mode == "F":
        a = np.clip(np.asarray(img, dtype=np.float32), 0, 255) / 255.0
        return np.repeat(a[..., None], 3, axis=-1)
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:4]
        return rgba[..., :3] * alpha + (1.0 - alpha)  # composite on white
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB Pillow image under the rules of :func:`to_rgb01` (rounded)."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if not _needs_float(img):
        return img.convert("RGB")
    a = np.clip(to_rgb01(img) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(a, "RGB")


def check_pixels(path, width: int, height: int, max_pixels: int | None = MAX_PIXELS) -> None:
    """Refuse a ``width x height`` picture over ``max_pixels`` (None: no limit) with one line."""
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(f"{path}: {width}x{height} = {width * height:,} pixels, over the limit of "
                         f"{max_pixels:,} (raise it with --max-pixels)")


def open_checked(src, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """``Image.open(src)`` (lazy: only the header is read), refused over ``max_pixels``.

    This limit replaces Pillow's decompression-bomb check, which warns above about 89 MP and
    raises above twice that before the size can be checked here.
    """
    old = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None
            img = Image.open(src)
    finally:
        Image.MAX_IMAGE_PIXELS = old
    try:
        check_pixels(getattr(src, "name", src), img.width, img.height, max_pixels)
    except InputError:
        img.close()
        raise
    return img


@contextlib.contextmanager
def _read_errors(name):
    """Pillow's and the decoder's exceptions while reading ``name`` -> one-line :class:`InputError`."""
    try:
        yield
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image (not a format Pillow reads)") from None
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise InputError(f"{name}: corrupt or truncated image ({one_line(e)})") from None


def _checked_path(src: str | os.PathLike) -> Path:
    src = Path(src)
    if not src.is_file():
        raise InputError(f"{src}: no such file" if not src.exists() else f"{src}: not a regular file")
    return src


def image_size(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from an image file's header (nothing decoded), with :func:`load_image`'s
    errors and ``max_pixels`` check. EXIF rotation is not applied."""
    path = _checked_path(path)
    with _read_errors(path), open_checked(path, max_pixels) as img:
        return img.size


def load_image(src, max_pixels: int | None = MAX_PIXELS, formats: tuple[str, ...] | None = None) -> torch.Tensor:
    """Read an image -> float32 tensor (3, H, W) in [-1, 1]. ``src``: a path, or a binary file
    object (its ``name``, when it has one, names it in messages). Raises :class:`InputError`:
    missing, not an image, a Pillow format outside ``formats`` (None: any), over ``max_pixels``
    (checked from the header, before decoding), corrupt or empty."""
    if isinstance(src, (str, os.PathLike)):
        src = name = _checked_path(src)
    else:
        name = getattr(src, "name", "image")
    with _read_errors(name), open_checked(src, max_pixels) as img:
        if formats is not None and img.format not in formats:
            raise InputError(f"{name}: {img.format} images are not accepted (use {', '.join(formats)})")
        img.load()
        rgb = to_rgb01(ImageOps.exif_transpose(img))
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(f"{name}: empty image")
    t = torch.from_numpy(np.ascontiguousarray(rgb)).movedim(-1, 0)
    return (t * 2 - 1).clamp(-1, 1).contiguous()


# ---- writing ------------------------------------------------------------------------------------
def image_format(path: str | os.PathLike) -> str:
    """Pillow format name from the suffix: PNG when there is none; unknown suffixes are errors."""
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "PNG"
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(f"{path}: cannot write images with suffix {suffix!r}")
    return fmt


def save_image(t: torch.Tensor, path: str | os.PathLike, quality: int = 95) -> None:
    """Write a (3, H, W) tensor in [-1, 1] to ``path`` atomically (values ``round()``-ed to uint8).

    The format follows the suffix (PNG if there is none); ``quality`` is used by JPEG/WebP.
    """
    fmt = image_format(path)
    a = to_uint8(t)
    if a.ndim != 3:
        raise ValueError(f"save_image expects one image (3,H,W), got shape {tuple(t.shape)}")
    img = Image.fromarray(a)
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **kwargs)


def load_square(path: str | Path, resolution: int) -> np.ndarray:
    """uint8 (resolution, resolution, 3): the image resized (bicubic, antialiased) to a square."""
    im = Image.fromarray(to_uint8(load_image(path)))
    if im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.array(im)
