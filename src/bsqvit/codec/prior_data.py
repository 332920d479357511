"""The token prior's training data: tokens of random crops of images and of pairs of consecutive
video frames, extracted once with the tokenizer and cached (``bsqvit train-prior``, step 1 of
:mod:`bsqvit.codec.train_prior`). With ``prior.temporal_copy`` the second frame of every pair is
also kept as the video encoder sends it at each rate (:mod:`bsqvit.codec.temporal`)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..config import ConfigError
from ..data.images import find_images
from ..io import InputError, atomic_path, from_uint8, is_video_path, iter_video_frames, to_rgb
from ..models.frames import encode_frames, encode_frames_latent
from .temporal import copy_tokens

log = logging.getLogger("bsqvit.codec.train_prior")


@dataclass
class PriorDataConfig:
    train: list[str] = field(default_factory=list)  # folders of training images (or data.video)
    video: list[str] = field(default_factory=list)  # video files or frame folders (for video priors)
    crop: int = 256  # pixels (a multiple of the tokenizer's patch, >= tile * patch)
    crops_per_image: int = 2
    pairs_per_video: int = 32  # pairs of consecutive frames per video source ...
    pair_stride: int = 6  # ... starting every pair_stride frames
    video_fraction: float = 0.5  # share of batches made of video pairs (when there are any)
    val_fraction: float = 0.05
    limit: int | None = None  # at most this many images
    encode_batch: int = 16


def _crop_positions(seed: int, index: int, n: int, H: int, W: int, crop: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng([seed, index])
    return [(int(rng.integers(0, H - crop + 1)), int(rng.integers(0, W - crop + 1))) for _ in range(n)]


def _encode_batches(model, crops: list[np.ndarray], batch: int) -> np.ndarray:
    """uint8 crops (H, W, 3) or clips (T, H, W, 3) -> int64 tokens."""
    out = []
    for i in range(0, len(crops), batch):
        chunk = crops[i : i + batch]
        if chunk[0].ndim == 3:
            x = torch.stack([from_uint8(c) for c in chunk])
            out.append(model.encode(x).numpy())
        else:
            out.append(np.stack([encode_frames(model, from_uint8(c)).numpy() for c in chunk]))
    return np.concatenate(out) if out else np.zeros((0,), np.int64)


def _encode_copied_pairs(model, clips: list[np.ndarray], rates: list[int | None], threshold: float):
    """Clips (2, H, W, 3) -> their plain tokens (M, 2, h, w) and, per rate, the second frame's
    tokens with temporal copying from the first (R, M, h, w): what the video encoder sends."""
    plain, copied = [], []
    dim = model.quantizer.dim
    for c in clips:
        z = encode_frames_latent(model, from_uint8(c))
        plain.append(copy_tokens(z, dim, None, 0.0).numpy())
        copied.append(np.stack([copy_tokens(z, dim, r, threshold)[1].numpy() for r in rates]))
    return np.stack(plain), np.stack(copied, 1)


def _video_sources(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_file() and is_video_path(p):
            out.append(p)
        elif p.is_dir():
            subdirs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
            files = sorted(f for f in p.iterdir() if f.is_file() and is_video_path(f))
            out.extend(files)
            # a folder of frames is a source; a folder of folders holds sources
            if not files and not subdirs:
                out.append(p)
            out.extend(_video_sources([str(d) for d in subdirs]))
        else:
            raise ConfigError(f"video source not found: {p}")
    return out


def _iter_source_frames(src: Path):
    if src.is_dir():
        for f in find_images(src):
            with Image.open(f) as im:
                yield np.asarray(to_rgb(im))
    else:
        yield from iter_video_frames(src)


def _video_pairs(src: Path, pairs: int, stride: int, crop: int, seed: int, j: int) -> list[np.ndarray]:
    """Crops (2, crop, crop, 3) of frames (i, i+1) for i = 0, stride, 2*stride, ...; streamed, so
    only the crops are kept in memory."""
    out, cur, pos = [], None, None
    for i, f in enumerate(_iter_source_frames(src)):
        if min(f.shape[:2]) < crop:
            return []
        if i % stride == 0:
            top, left = _crop_positions(seed, 1_000_000 + 10_000 * j + i // stride, 1, *f.shape[:2], crop)[0]
            pos, cur = (top, left), [f[top : top + crop, left : left + crop]]
        elif i % stride == 1 and cur is not None:
            top, left = pos
            out.append(np.stack([cur[0], f[top : top + crop, left : left + crop]]))
            cur = None
            if len(out) >= pairs:
                break
    return out


def extract_tokens(model, d: PriorDataConfig, seed: int, copy: float, cache_dir: Path, progress: bool = True,
                   rates: list[int] | None = None) -> dict:
    """Tokens of the training crops, cached: ``{"images": (N, h, w), "pairs": (M, 2, h, w)}``;
    with a temporal copy threshold ``copy`` also ``"copied"`` (R, M, h, w): each pair's second
    frame as the encoder sends it at each of ``rates`` (None: the full rate only)."""
    rates = list(rates) if rates else [None]
    p = model.patch_size
    if d.crop % p:
        raise ConfigError(f"data.crop {d.crop} is not a multiple of the patch size {p}")
    if not d.train and not d.video:
        raise ConfigError("data.train (folders of training images) or data.video is required")
    files = find_images(d.train) if d.train else []
    if d.limit is not None:
        files = files[: d.limit]
    videos = _video_sources(d.video) if d.video else []
    key = hashlib.sha256(json.dumps({
        "tokenizer": model.weights_hash(), "files": files, "videos": [str(v) for v in videos], "crop": d.crop,
        "crops": d.crops_per_image, "pairs": d.pairs_per_video, "stride": d.pair_stride, "seed": seed, "v": 1,
        **({"copy": copy, "rates": rates} if copy else {}),
    }, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"tokens-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    images, crops = [], []
    for i, f in enumerate(tqdm(files, desc="tokenize", disable=not progress, dynamic_ncols=True)):
        try:
            with Image.open(f) as im:
                a = np.asarray(to_rgb(im))
        except Exception as e:  # unreadable files are skipped, as in training
            log.warning("skipping %s (%s)", f, type(e).__name__)
            continue
        H, W = a.shape[:2]
        if min(H, W) < d.crop:
            continue
        for top, left in _crop_positions(seed, i, d.crops_per_image, H, W, d.crop):
            crops.append(np.ascontiguousarray(a[top : top + d.crop, left : left + d.crop]))
        if len(crops) >= 256:
            images.append(_encode_batches(model, crops, d.encode_batch))
            crops = []
    if crops:
        images.append(_encode_batches(model, crops, d.encode_batch))
    g = d.crop // p
    img_tokens = np.concatenate(images) if images else np.zeros((0, g, g), np.int64)
    pairs, copied = [], []
    for j, src in enumerate(tqdm(videos, desc="tokenize video", disable=not progress or not videos, dynamic_ncols=True)):
        try:
            clips = _video_pairs(src, d.pairs_per_video, d.pair_stride, d.crop, seed, j)
        except (InputError, OSError) as e:  # an undecodable source is skipped, as in training
            log.warning("skipping %s (%s)", src, e)
            continue
        if clips and copy:
            p, c = _encode_copied_pairs(model, clips, rates, copy)
            pairs.append(p)
            copied.append(c)
        elif clips:
            pairs.append(_encode_batches(model, clips, d.encode_batch).reshape(-1, 2, g, g))
    out = {"images": img_tokens, "pairs": np.concatenate(pairs) if pairs else np.zeros((0, 2, g, g), np.int64)}
    if copy:
        out["copied"] = np.concatenate(copied, 1) if copied else np.zeros((len(rates), 0, g, g), np.int64)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **out)
    return out
