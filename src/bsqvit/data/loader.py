"""Data configuration, a resumable distributed sampler and DataLoader construction.

Determinism contract:
* the sample order of an epoch is a function of ``(seed, epoch, rank, world_size)``;
* the augmentation of a sample is a function of ``(seed, epoch, sample index)`` only: the
  sampler yields ``(epoch, index)`` keys (so persistent workers see the right epoch) and the
  data sets seed a ``torch.Generator`` from them. Results do not depend on ``num_workers``;
* resuming from a checkpointed ``(epoch, batches_consumed)`` skips exactly those batches
  without decoding them (:meth:`ResumableDistributedSampler.set_start`).

Bad files: each sample dict has ``skipped`` (files skipped to produce it); sum
``batch["skipped"]`` in the main process (:func:`count_skipped`) to get the run-wide count.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ..config import ConfigError
from .images import ImageFolderDataset
from .transforms import eval_transform, sample_seed, train_transform
from .video import VideoClipDataset
from .webdataset import WebDatasetShards, is_shard_spec

__all__ = [
    "DataConfig",
    "DataPosition",
    "ResumableDistributedSampler",
    "WorkerInit",
    "build_dataset",
    "build_dataloader",
    "infinite_batches",
    "count_skipped",
]


@dataclass
class DataConfig:
    """Data section of a training config (parsed strictly by ``bsqvit.config.from_dict``).

    ``train`` / ``val`` entries: image folders or files, tar shards (``.tar`` files, brace
    patterns ``shards-{000..009}.tar``, globs, folders of ``.tar``; image kind only), video
    files or folders of videos / frame folders (video kind).
    ``train_resize``: short side before the random crop (``None`` -> ``resolution``, as the
    reference's Resize(256)+RandomCrop(256); ``0`` -> no resize). ``batch_size`` is per rank.
    ``val_limit``: use only the first N validation items (sorted order).
    """

    train: list[str] = field(default_factory=list)
    val: list[str] | None = None
    kind: Literal["image", "video"] = "image"
    resolution: int = 256
    train_resize: int | None = None
    hflip: bool = True
    num_frames: int = 16
    frame_stride: int = 1
    batch_size: int = 32
    num_workers: int = 2
    pin_memory: bool = True  # page-locked batches, only when CUDA is available
    prefetch_factor: int | None = None  # batches each worker keeps ready (None: PyTorch's 2)
    val_limit: int | None = None
    val_resolution: int | None = None  # centre-crop size of the val protocol (default: resolution)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("image", "video"):
            raise ConfigError(f"data.kind must be 'image' or 'video', got {self.kind!r}")
        if self.resolution <= 0:
            raise ConfigError(f"data.resolution must be positive, got {self.resolution}")
        if self.train_resize is not None and self.train_resize != 0 and self.train_resize < self.resolution:
            raise ConfigError(f"data.train_resize ({self.train_resize}) must be >= resolution "
                              f"({self.resolution}) or 0 (no resize)")
        if self.num_frames < 1 or self.frame_stride < 1:
            raise ConfigError("data.num_frames and data.frame_stride must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            raise ConfigError(f"data.prefetch_factor must be >= 1 or null, got {self.prefetch_factor}")
        if self.val_limit is not None and self.val_limit < 1:
            raise ConfigError(f"data.val_limit must be >= 1 or null, got {self.val_limit}")


@dataclass
class DataPosition:
    """Where a data stream stands: ``batch`` batches of ``epoch`` have been consumed."""

    epoch: int = 0
    batch: int = 0

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)


class ResumableDistributedSampler(Sampler):
    """``DistributedSampler`` with a resumable start position and ``(epoch, index)`` keys.

    Per epoch the order is ``randperm(dataset_len)`` seeded by ``(seed, epoch)`` (or
    ``range`` without shuffle). Then, like torch's ``DistributedSampler``: with
    ``drop_last`` the tail that does not divide by ``world_size`` is dropped, otherwise (with
    ``pad``) the list is padded by repeating its head; rank ``r`` takes ``order[r::world]``.
    ``pad=False`` (evaluation) shards without padding, so ranks may differ by one item.

    ``set_epoch(e)`` selects the epoch and resets the start; ``set_start(b, batch_size)``
    (after ``set_epoch``) skips the first ``b`` batches of this rank's share, nothing decoded.
    With ``yield_epoch`` the sampler yields ``(epoch, index)`` tuples (the data sets accept
    both forms).
    """

    def __init__(self, dataset_len: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, pad: bool = True, yield_epoch: bool = False):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank/world_size {rank}/{world_size}")
        if dataset_len < 0:
            raise ValueError("dataset_len must be >= 0")
        self.dataset_len = int(dataset_len)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.pad = bool(pad)
        self.yield_epoch = bool(yield_epoch)
        self.epoch = 0
        self.start = 0  # samples of this rank's share to skip

    @property
    def num_samples(self) -> int:
        """Samples per rank per epoch (before ``set_start``)."""
        n, w = self.dataset_len, self.world_size
        if self.drop_last:
            return n // w
        if self.pad:
            return math.ceil(n / w)
        return len(range(self.rank, n, w))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, batch_index: int, batch_size: int) -> None:
        """Resume after ``batch_index`` consumed batches of size ``batch_size`` in this epoch."""
        if batch_index < 0 or batch_size < 1:
            raise ValueError("batch_index must be >= 0 and batch_size >= 1")
        self.start = min(int(batch_index) * int(batch_size), self.num_samples)

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        """This rank's full index list for ``epoch`` (ignores the start)."""
        epoch = self.epoch if epoch is None else epoch
        n, w = self.dataset_len, self.world_size
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(sample_seed(self.seed, epoch, -2))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            order = order[: (n // w) * w]
        elif self.pad and n % w and n > 0:
            total = math.ceil(n / w) * w
            reps = math.ceil(total / n)
            order = (order * reps)[:total]
        return order[self.rank::w]

    def __iter__(self) -> Iterator:
        idx = self.epoch_indices()[self.start:]
        if self.yield_epoch:
            e = self.epoch
            return iter([(e, i) for i in idx])
        return iter(idx)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)

    def batches_per_epoch(self, batch_size: int, drop_last: bool = True) -> int:
        n = self.num_samples
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.start = int(state.get("start", 0))


class WorkerInit:
    """``worker_init_fn``: seeds python/numpy/torch per (seed, rank, worker) for any incidental
    randomness (the augmentations do not use it) and limits each worker to one torch thread."""

    def __init__(self, seed: int, rank: int = 0):
        self.seed = int(seed)
        self.rank = int(rank)

    def __call__(self, worker_id: int) -> None:
        s = sample_seed(self.seed, self.rank, 1_000_000 + worker_id)
        random.seed(s)
        np.random.seed(s % (2**32))
        torch.manual_seed(s)
        torch.set_num_threads(1)


def _entries(cfg: DataConfig, split: str) -> list[str]:
    if split == "train":
        entries = cfg.train
    elif split == "val":
        entries = cfg.val
    else:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if not entries:
        raise ConfigError(f"data.{split} is empty")
    return list(entries)


def build_dataset(cfg: DataConfig, split: str = "train", rank: int = 0, world_size: int = 1,
                  seed: int | None = None) -> Dataset:
    """The data set for ``split`` (``ImageFolderDataset``, ``WebDatasetShards`` or
    ``VideoClipDataset``) with the train (random) or val (Lanczos + centre crop) transform."""
    entries = _entries(cfg, split)
    seed = cfg.seed if seed is None else int(seed)
    train = split == "train"
    if cfg.kind == "video":
        return VideoClipDataset(entries, num_frames=cfg.num_frames, stride=cfg.frame_stride,
                                resolution=cfg.resolution if train else (cfg.val_resolution or cfg.resolution),
                                train=train,
                                train_resize=cfg.train_resize, hflip=cfg.hflip, seed=seed)
    tf = (train_transform(cfg.resolution, cfg.train_resize, hflip=cfg.hflip) if train
          else eval_transform(cfg.val_resolution or cfg.resolution))
    shards = [is_shard_spec(e) for e in entries]
    if all(shards):
        return WebDatasetShards(entries, tf, seed=seed, shuffle=train, rank=rank,
                                world_size=world_size,
                                limit=None if train else cfg.val_limit)
    if any(shards):
        raise ConfigError(f"data.{split}: mixing tar shards and image folders is not supported")
    return ImageFolderDataset(entries, tf, seed=seed)


def build_dataloader(cfg: DataConfig, split: str = "train", rank: int = 0, world_size: int = 1,
                     epoch_seed: int | None = None, *, epoch: int = 0, start_batch: int = 0,
                     dataset: Dataset | None = None, num_workers: int | None = None,
                     batch_size: int | None = None) -> DataLoader:
    """A ``DataLoader`` for ``split`` on ``rank`` of ``world_size``.

    Args:
        epoch_seed: base seed of shuffling and augmentation (default ``cfg.seed``).
        epoch, start_batch: initial position (resume: the checkpointed ``(epoch,
            batches_consumed)``); :func:`infinite_batches` moves it on.
        dataset: reuse an already built data set (e.g. to avoid re-indexing videos).
        num_workers, batch_size: override the config.

    Train: shuffled, padded across ranks, ``drop_last`` batches. Val: in order, sharded
    without padding, first ``val_limit`` items, last partial batch kept. ``pin_memory`` only
    when CUDA is available; persistent workers for map-style data sets when ``num_workers>0``.
    The sampler is ``loader.sampler`` (a :class:`ResumableDistributedSampler`) for map-style
    data sets; tar shards are an ``IterableDataset`` with their own ``set_epoch/set_start``.
    """
    seed = cfg.seed if epoch_seed is None else int(epoch_seed)
    train = split == "train"
    ds = dataset if dataset is not None else build_dataset(cfg, split, rank, world_size, seed)
    nw = cfg.num_workers if num_workers is None else int(num_workers)
    bs = cfg.batch_size if batch_size is None else int(batch_size)
    pin = bool(cfg.pin_memory and torch.cuda.is_available())
    common: dict[str, Any] = dict(batch_size=bs, num_workers=nw, pin_memory=pin,
                                  drop_last=train, worker_init_fn=WorkerInit(seed, rank) if nw else None)
    if nw and cfg.prefetch_factor is not None:
        common["prefetch_factor"] = cfg.prefetch_factor
    if isinstance(ds, IterableDataset):
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        if start_batch and hasattr(ds, "set_start"):
            ds.set_start(start_batch, bs)
        # non-persistent: each epoch's workers are forked with the current epoch / start
        return DataLoader(ds, persistent_workers=False, **common)
    n = len(ds)
    if not train and cfg.val_limit is not None:
        n = min(n, cfg.val_limit)
    sampler = ResumableDistributedSampler(n, rank, world_size, shuffle=train, seed=seed,
                                          drop_last=False, pad=train, yield_epoch=True)
    sampler.set_epoch(epoch)
    if start_batch:
        sampler.set_start(start_batch, bs)
    return DataLoader(ds, sampler=sampler, persistent_workers=nw > 0, **common)


def _position_loader(loader: DataLoader, epoch: int, batch: int) -> None:
    s = loader.sampler
    if isinstance(s, ResumableDistributedSampler):
        s.set_epoch(epoch)
        if batch:
            s.set_start(batch, loader.batch_size)
        return
    ds = loader.dataset
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    if batch and hasattr(ds, "set_start"):
        ds.set_start(batch, loader.batch_size)
    elif hasattr(s, "set_epoch"):  # e.g. torch's DistributedSampler (no resume support)
        s.set_epoch(epoch)


def infinite_batches(loader: DataLoader, start_epoch: int = 0, start_batch: int = 0,
                     max_epochs: int | None = None) -> Iterator[tuple[Any, DataPosition]]:
    """Yield ``(batch, DataPosition(epoch, batches_consumed))`` forever (or ``max_epochs``).

    Save the position of the last consumed batch in the checkpoint and resume with
    ``infinite_batches(loader, pos.epoch, pos.batch)``: the skipped batches are not decoded.
    """
    epoch, b = int(start_epoch), int(start_batch)
    end = None if max_epochs is None else start_epoch + max_epochs
    while end is None or epoch < end:
        _position_loader(loader, epoch, b)
        got = 0
        for batch in loader:
            b += 1
            got += 1
            yield batch, DataPosition(epoch, b)
        if got == 0 and b == 0:
            raise RuntimeError("the data loader produced no batch in a whole epoch "
                               "(data set smaller than one batch per rank with drop_last?)")
        epoch, b = epoch + 1, 0


def count_skipped(batch: Any) -> int:
    """Files skipped (corrupt/unreadable) while producing ``batch`` (sum over its samples)."""
    if isinstance(batch, dict) and "skipped" in batch:
        s = batch["skipped"]
        return int(s.sum().item()) if isinstance(s, torch.Tensor) else int(sum(s))
    return 0
