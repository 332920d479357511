"""WebDataset-style tar shards read with Python's ``tarfile`` (no ``webdataset`` dependency).

A shard is a (optionally compressed) tar file; consecutive members sharing a key (the member
path up to the first ``.`` of its base name) form one sample, e.g. ``000123.jpg`` + ``000123.cls``.
The first image member of each sample is decoded with Pillow; other members are ignored.

Splitting: the shard list is split over ``world_size x num_workers`` readers. When there are
fewer shards than readers every reader scans all shards and keeps every ``readers``-th sample,
so each sample is still produced exactly once per epoch.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import re
import tarfile
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .images import IMAGE_EXTENSIONS, BadItemPolicy, open_rgb
from .transforms import ImageTransform, sample_generator, sample_seed, to_tensor

__all__ = ["expand_braces", "expand_shards", "is_shard_spec", "WebDatasetShards"]

log = logging.getLogger(__name__)

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``[a-000.tar, a-001.tar, a-002.tar]``; ``{x,y}`` lists too.
    Numeric ranges keep the zero padding of the first bound; several braces multiply out."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?", body)
    if rng:
        a, b = int(rng.group(1)), int(rng.group(2))
        step = int(rng.group(3) or 1)
        width = len(rng.group(1)) if rng.group(1).lstrip("-").startswith("0") else 0
        seq = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
        options = [str(v).zfill(width) for v in seq]
    else:
        options = body.split(",")
    head, tail = pattern[:m.start()], pattern[m.end():]
    out = []
    for o in options:
        out.extend(expand_braces(head + o + tail))
    return out


def is_shard_spec(spec: str) -> bool:
    """True for ``.tar`` files / brace or glob patterns of them."""
    s = os.fspath(spec).lower()
    return s.endswith(_TAR_SUFFIXES)


def expand_shards(specs: str | Sequence[str]) -> list[str]:
    """Shard specs (files, brace patterns, globs, folders of ``.tar``) -> list of paths
    (order kept; globs and folders sorted). Missing files raise ``FileNotFoundError``."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    out: list[str] = []
    for spec in specs:
        spec = os.fspath(spec)
        if "://" in spec or spec.startswith("pipe:"):
            raise ValueError(f"remote/pipe shard URLs are not supported: {spec}")
        if os.path.isdir(spec):
            found = sorted(os.path.join(spec, f) for f in os.listdir(spec)
                           if f.lower().endswith(_TAR_SUFFIXES))
            if not found:
                raise FileNotFoundError(f"no tar shards in {spec}")
            out.extend(found)
            continue
        for p in expand_braces(spec):
            if any(c in p for c in "*?["):
                g = sorted(glob.glob(p))
                if not g:
                    raise FileNotFoundError(f"no shards match {p}")
                out.extend(g)
            elif os.path.isfile(p):
                out.append(p)
            else:
                raise FileNotFoundError(f"shard not found: {p}")
    return out


def _split_member(name: str) -> tuple[str, str]:
    """``dir/abc.x.jpg`` -> (``dir/abc``, ``x.jpg``)."""
    d, base = os.path.split(name)
    if "." in base:
        stem, suffix = base.split(".", 1)
    else:
        stem, suffix = base, ""
    return (os.path.join(d, stem) if d else stem), suffix.lower()


def _is_image_suffix(suffix: str) -> bool:
    return ("." + suffix.rsplit(".", 1)[-1]) in IMAGE_EXTENSIONS if suffix else False


class WebDatasetShards(BadItemPolicy, IterableDataset):
    """Iterate the images in tar shards.

    Args:
        urls: shard files / brace patterns (``shards-{000..009}.tar``) / globs / folders.
        transform: ``ImageTransform`` or callable ``(PIL, generator) -> tensor``; ``None`` ->
            the full image.
        seed: base seed (augmentations use ``(seed, epoch, sample id)``; shard order too).
        shuffle: shuffle the shard order each epoch (deterministic in ``(seed, epoch)``).
        rank, world_size: distributed split (combined with the DataLoader workers).
        limit: about this many samples in all (each of the R readers stops after
            ``ceil(limit / R)``; ``None``: all).

    Yields ``{"image", "index", "skipped", "key"}``; ``index`` is a stable id
    ``shard_number * 2**32 + position in shard`` (shard_number in the expanded list).
    """

    def __init__(self, urls: str | Sequence[str], transform: Callable | None = None,
                 seed: int = 0, shuffle: bool = False, rank: int = 0, world_size: int = 1,
                 epoch: int = 0, limit: int | None = None):
        self._init_bad()
        self.shards = expand_shards(urls)
        if not self.shards:
            raise FileNotFoundError(f"no shards in {urls}")
        self.transform = transform
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = int(epoch)
        self.limit = limit
        self._start_batches = 0
        self._batch_size = 1

    def set_epoch(self, epoch: int) -> None:
        """Set before creating the DataLoader iterator (use non-persistent workers)."""
        self.epoch = int(epoch)
        self._start_batches = 0

    def set_start(self, batches_consumed: int, batch_size: int) -> None:
        """Resume inside the current epoch: skip the samples of the first ``batches_consumed``
        batches without decoding them. DataLoader takes worker batches round robin from
        worker 0, so worker roles are rotated by ``b`` and logical worker ``w`` of ``W`` skips
        ``ceil((b - w) / W)`` batches. Exact as long as no worker has run out of samples
        before batch ``b`` and no skipped sample was corrupt; needs the same ``num_workers``
        and ``batch_size`` as the interrupted run (tar streams depend on the worker count)."""
        self._start_batches = int(batches_consumed)
        self._batch_size = int(batch_size)

    # -- helpers
    def shard_order(self) -> list[int]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(len(order), generator=g).tolist()
        return order

    def _decode(self, data: bytes, sid: int) -> torch.Tensor:
        t = self.transform
        g = sample_generator(self.seed, self.epoch, sid)
        if isinstance(t, ImageTransform):
            img, (w, h) = open_rgb(io.BytesIO(data), t)
            return t.apply(img, t.params(w, h, g))
        img, _ = open_rgb(io.BytesIO(data))
        return to_tensor(img) if t is None else t(img, g)

    def _samples(self, path: str, want: Callable[[], bool]) -> Iterator[tuple[str, bytes | None]]:
        """``(key, image bytes or None)`` per sample; bytes are read only when ``want()``
        says this reader keeps the sample (called once per sample, in order)."""
        cur_key: str | None = None
        keep = False
        data: bytes | None = None
        with tarfile.open(path, mode="r|*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, suffix = _split_member(m.name)
                if key != cur_key:
                    if cur_key is not None:
                        yield cur_key, data
                    cur_key, data = key, None
                    keep = want()
                if keep and data is None and _is_image_suffix(suffix):
                    f = tf.extractfile(m)
                    data = f.read() if f is not None else b""
        if cur_key is not None:
            yield cur_key, data

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        nw, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        b = self._start_batches
        # DataLoader takes batch k from worker k % nw, always starting at worker 0; after a
        # resume at batch b, physical worker w plays the role of logical worker (w + b) % nw.
        lw = (wid + b) % nw
        readers = self.world_size * nw
        me = self.rank * nw + lw
        order = self.shard_order()
        if len(order) >= readers:
            mine = order[me::readers]
            stride, offset = 1, 0
        else:
            mine, stride, offset = order, readers, me
        # resume: this logical worker's share of the consumed batches
        skip = (max(0, -(-(b - lw) // nw)) * self._batch_size) if b > 0 else 0
        produced = 0
        my_limit = None if self.limit is None else -(-int(self.limit) // readers)
        pending_skips = 0
        counter = 0  # samples seen across my shards (for the modulo split)

        for shard_no in mine:
            path = self.shards[shard_no]
            pos = -1

            def want() -> bool:
                nonlocal counter, pos, skip
                pos += 1
                ok = (counter % stride) == offset
                counter += 1
                if ok and skip > 0:
                    skip -= 1
                    return False
                return ok

            try:
                for key, data in self._samples(path, want):
                    if data is None:
                        continue  # not mine, skipped for resume, or no image member
                    sid = (shard_no << 32) + pos
                    try:
                        x = self._decode(data, sid)
                    except Exception as e:  # noqa: BLE001
                        self._record_bad(f"{path}:{key}", e)
                        pending_skips += 1
                        continue
                    yield {"image": x, "index": sid, "skipped": pending_skips, "key": key}
                    pending_skips = 0
                    produced += 1
                    if my_limit is not None and produced >= my_limit:
                        return
            except (tarfile.TarError, OSError, EOFError) as e:
                self._record_bad(path, e)
                pending_skips += 1
