"""Labelled images -> cached BSQ tokens for the masked token model.

Labels come from file names: the class of ``n01440764_10026.JPEG`` is the prefix before the first
``_`` (an ImageNet wnid for Imagenette). Files whose prefix is not a known class are left out
(Imagenette's ``ILSVRC2012_val_*`` files carry no class in the name) and counted.

**Token cache format** (``OUTPUT_DIR/tokens/tokens-<key>.npz``, a NumPy ``.npz`` archive;
``<key>`` = the first 16 hex digits of a SHA-256 over the tokenizer's weights hash, the file list,
the resolution and the version, so that a different tokenizer or data never reuses a cache):

==============  ==================  ===============================================================
key             dtype / shape       content
==============  ==================  ===============================================================
``tokens``      int64 (N, V, h, w)  token indices of each image; view 0 = the image, view 1 = its
                                    horizontal flip (when ``flip``), so V is 1 or 2
``labels``      int64 (N,)          class index (position in ``classes``), -1 = unlabelled
``files``       str (N,)            source file of each row
``classes``     str (C,)            class ids (wnids), index = label
``meta``        str ()              JSON: tokenizer hash, resolution, patch size, bits, version
==============  ==================  ===============================================================

Images are resized to ``resolution x resolution`` (bicubic with antialiasing, aspect ratio not
kept: Imagenette's 224 x 224 files are already square) and tokenized in batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import ConfigError
from ..quantizers.base import index_bits
from ..io import atomic_path, from_uint8, load_square

log = logging.getLogger("bsqvit.generate.data")
CACHE_VERSION = 1

# Imagenette's ten classes: ImageNet wnid -> name (fast.ai's imagenette, in its order).
IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


def class_of(path: str | Path) -> str:
    """The class id of a file: its name's prefix before the first ``_``."""
    return Path(path).name.split("_", 1)[0]


def discover_classes(files: list[str]) -> list[str]:
    """Sorted class ids that look like ImageNet wnids (``n`` + 8 digits) among the files' prefixes."""
    ids = {class_of(f) for f in files}
    return sorted(i for i in ids if len(i) == 9 and i[0] == "n" and i[1:].isdigit())


def class_names(ids: list[str]) -> list[str]:
    return [IMAGENETTE_CLASSES.get(i, i) for i in ids]


def extract_gen_tokens(tokenizer, files: list[str], classes: list[str], resolution: int, cache_dir: Path,
                       flip: bool = True, batch: int = 64, progress: bool = True) -> dict:
    """Tokens of labelled images, cached (see the module docstring for the format)."""
    p = tokenizer.patch_size
    if resolution % p:
        raise ConfigError(f"resolution {resolution} is not a multiple of the tokenizer's patch size {p}")
    meta = {"tokenizer": tokenizer.weights_hash(), "resolution": resolution, "patch_size": p,
            "bits": index_bits(int(tokenizer.quantizer.codebook_size)), "flip": flip, "version": CACHE_VERSION}
    key = hashlib.sha256(json.dumps({**meta, "files": files, "classes": classes}, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"tokens-{key}.npz"
    if path.is_file():
        return load_token_cache(path)
    index = {c: i for i, c in enumerate(classes)}
    rows, labels, kept, skipped = [], [], [], 0
    buf: list[np.ndarray] = []

    def flush():
        x = torch.stack([from_uint8(a) for a in buf])
        with torch.no_grad():
            views = [tokenizer.encode(x)]
            if flip:
                views.append(tokenizer.encode(x.flip(-1)))
        rows.append(torch.stack(views, 1).numpy())
        buf.clear()

    for f in tqdm(files, desc="tokenize", disable=not progress, dynamic_ncols=True):
        try:
            a = load_square(f, resolution)
        except Exception as e:  # unreadable files are skipped and counted, as in training
            log.warning("skipping %s (%s)", f, type(e).__name__)
            skipped += 1
            continue
        buf.append(a)
        labels.append(index.get(class_of(f), -1))
        kept.append(str(f))
        if len(buf) == batch:
            flush()
    if buf:
        flush()
    g = resolution // p
    tokens = np.concatenate(rows) if rows else np.zeros((0, 2 if flip else 1, g, g), np.int64)
    meta["skipped"] = skipped
    out = {"tokens": tokens.astype(np.int64), "labels": np.asarray(labels, np.int64), "files": np.asarray(kept),
           "classes": np.asarray(classes), "meta": np.asarray(json.dumps(meta, sort_keys=True))}
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **out)
    return load_token_cache(path)


def load_token_cache(path: str | Path) -> dict:
    """Read a token cache written by :func:`extract_gen_tokens` (checked)."""
    with np.load(path, allow_pickle=False) as z:
        missing = {"tokens", "labels", "files", "classes", "meta"} - set(z.files)
        if missing:
            raise ConfigError(f"{path}: not a token cache (missing {sorted(missing)})")
        out = {k: z[k] for k in z.files}
    meta = json.loads(str(out["meta"]))
    if meta.get("version") != CACHE_VERSION:
        raise ConfigError(f"{path}: token cache version {meta.get('version')}, expected {CACHE_VERSION}")
    if out["tokens"].ndim != 4 or len(out["labels"]) != len(out["tokens"]):
        raise ConfigError(f"{path}: inconsistent token cache shapes")
    out["meta"] = meta
    out["classes"] = [str(c) for c in out["classes"]]
    return out
