"""What the web demo computes for one image, as plain functions of the library API (no web code),
so that tests and scripts get the very numbers the page shows.

* :func:`read_upload` -- upload bytes -> (3, H, W) in [-1, 1]: the size is checked from the header
  (:func:`bsqvit.io.image.open_checked`) before any pixel is decoded, and the RGB policy is that of
  :func:`bsqvit.io.load_image` (EXIF orientation, alpha on white, 16-bit scaled).
* :func:`analyze` -- compress to ``.bsq`` and decompress it (the reconstruction is the file's, not
  a shortcut), JPEG and WebP at the largest quality whose file is not above the ``.bsq`` size
  (the settings of :mod:`bsqvit.evaluation.baselines`), PSNR / MS-SSIM of each, and the token
  grid's bit-planes (bit ``k`` of every token as an ``h x w`` image; plane 0 = most significant).
* :func:`class_samples` -- one generated image per class of the embedded generator.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..codec import CodecOptions, compress, decompress
from ..codec.api import token_bits
from ..codec.prior import default_prior
from ..evaluation.baselines import encode_bytes, pillow_codecs
from ..generate.model import MaskedTokenModel
from ..generate.train import generate_images
from ..io import InputError, from_uint8, load_image, to_rgb, to_uint8
from ..metrics.pixel import ms_ssim, psnr
from ..models import Tokenizer, load_tokenizer
from ..pretrained import default_dir, default_model_dir
from ..quantizers.base import indices_to_bits

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "Models",
    "Result",
    "analyze",
    "bit_planes",
    "center_crop",
    "class_samples",
    "encode_at_most",
    "load_models",
    "read_upload",
    "sample_files",
]

DEFAULT_MAX_PIXELS = 4_000_000  # 0.4 MP codes in 10-20 s on a busy CPU, so 4 MP takes minutes: the ceiling
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM")  # what an upload may be
OPTIONS = CodecOptions(prior_threads=1)  # the prior's one-token steps are fastest on one thread
QUALITY = {"jpeg": (1, 100), "webp": (0, 100)}  # Pillow's quality ranges


@dataclass
class Models:
    tokenizer: Tokenizer
    prior: object | None  # TokenPrior, or None: raw L-bit fields (no prior for this tokenizer)
    gen: MaskedTokenModel | None  # None: no generator ships for this tokenizer


@dataclass
class Result:
    """Everything the page shows for one image; ``files`` maps a download name to its bytes."""

    width: int
    height: int
    numbers: dict  # codec -> {bytes, bpp, psnr, ms_ssim, ...}
    planes: list[np.ndarray]  # bits x (h, w) uint8 in {0, 255}
    images: dict[str, np.ndarray] = field(default_factory=dict)  # original / reconstruction / jpeg / webp
    files: dict[str, bytes] = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def load_models(model_dir: str | None = None, device: str = "cpu") -> Models:
    """The tokenizer (``None``: the embedded default), the embedded prior and generator when they
    were trained for it (by weights hash); cached per process."""
    tok = load_tokenizer(str(model_dir or default_model_dir())).to(device).eval()
    gen = None
    gdir = default_dir("gen")
    if gdir is not None:
        g = MaskedTokenModel.from_pretrained(str(gdir)).to(device).eval()
        if g.config.tokenizer_hash in (None, tok.weights_hash()):
            gen = g
    return Models(tok, default_prior(tok), gen)


def read_upload(data: bytes, name: str = "upload", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Image file bytes -> float32 (3, H, W) in [-1, 1], or an :class:`InputError` naming ``name``:
    not an image, a type outside :data:`FORMATS`, over ``max_pixels`` (from the header, before
    decoding) or corrupt."""
    if not data:
        raise InputError(f"{name}: empty file")
    buf = io.BytesIO(data)
    buf.name = name  # load_image names the upload in its messages
    return load_image(buf, max_pixels, formats=FORMATS)


def encode_at_most(a: np.ndarray, codec: str, max_bytes: int) -> tuple[int, bytes, bool]:
    """Binary search of Pillow's quality for the largest file not above ``max_bytes``:
    (quality, file, fits). When even the lowest quality is larger, that file with ``fits=False``."""
    lo, hi = QUALITY[codec]
    best = None
    while lo <= hi:
        q = (lo + hi) // 2
        data = encode_bytes(a, codec, q)
        if len(data) <= max_bytes:
            best, lo = (q, data), q + 1
        else:
            hi = q - 1
    if best is None:
        q = QUALITY[codec][0]
        return q, encode_bytes(a, codec, q), False
    return best[0], best[1], True


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(to_rgb(im))


def _quality(x: torch.Tensor, y: torch.Tensor) -> dict:
    """PSNR (dB) and MS-SSIM (None below 161 px a side) of one reconstruction."""
    m = ms_ssim(x[None], y[None])
    return {"psnr": float(psnr(x[None], y[None])[0]), "ms_ssim": None if m is None else float(m[0])}


def bit_planes(indices: torch.Tensor, bits: int) -> list[np.ndarray]:
    """Token indices (h, w) -> ``bits`` uint8 images (h, w), 255 where bit ``k`` is set; plane 0 is
    the most significant bit."""
    b = (indices_to_bits(indices.cpu(), bits) * 255).to(torch.uint8)
    return [b[..., k].numpy() for k in range(bits)]


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def analyze(x: torch.Tensor, models: Models) -> Result:
    """Everything the page shows for one image (3, H, W) in [-1, 1] (module docstring)."""
    tok, prior = models.tokenizer, models.prior
    H, W = x.shape[-2:]
    with torch.no_grad():
        res = compress(x, tok, prior, options=OPTIONS)
        y = decompress(res.data, tok, prior, options=OPTIONS)
        indices = tok.encode(x[None].to(tok.device))[0]
    original = to_uint8(x)
    ref = from_uint8(original)  # what was compared is the 8-bit picture
    numbers = {"bsq": {"bytes": len(res.data), "bpp": res.stats["bpp"], "bits_per_token": res.stats["bits_per_token"],
                       "coder": res.stats["coder"], **_quality(ref, y)}}
    images = {"original": original, "reconstruction": to_uint8(y)}
    files = {"image.bsq": res.data, "reconstruction.png": _png(images["reconstruction"])}
    for codec in ("jpeg", "webp"):
        if codec not in pillow_codecs():
            continue
        q, data, fits = encode_at_most(original, codec, len(res.data))
        images[codec] = _decode(data)
        numbers[codec] = {"bytes": len(data), "bpp": 8 * len(data) / (H * W), "quality": q, "fits": fits,
                          **_quality(ref, from_uint8(images[codec]))}
        files[f"{codec}.{'jpg' if codec == 'jpeg' else 'webp'}"] = data
    return Result(W, H, numbers, bit_planes(indices, token_bits(tok)), images, files)


def class_samples(models: Models, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """One generated image per class (name, uint8 (h, w, 3)); empty when no generator fits."""
    gen = models.gen
    if gen is None:
        return []
    c = gen.config
    labels = torch.arange(c.num_classes) if c.num_classes else torch.full((1,), -1)
    with torch.no_grad():
        _, images = generate_images(gen, models.tokenizer, labels, seed=seed, steps=12, guidance=2.0)
    names = list(c.class_names or c.class_ids) if c.num_classes else ["unconditional"]
    return list(zip(names, images))


def center_crop(x: torch.Tensor, side: int | None) -> torch.Tensor:
    """The central ``side x side`` pixels of (3, H, W) (less where the image is smaller); None or 0:
    the whole image."""
    if not side:
        return x
    H, W = x.shape[-2:]
    h, w = min(side, H), min(side, W)
    top, left = (H - h) // 2, (W - w) // 2
    return x[:, top : top + h, left : left + w].contiguous()


def sample_files(folder: Path) -> list[Path]:
    """The shipped sample photos the page offers (sorted)."""
    return sorted(p for p in Path(folder).glob("*.png"))
