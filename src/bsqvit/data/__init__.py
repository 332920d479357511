"""Data pipeline: image folders, tar shards, video clips, transforms and resumable loaders.

See :mod:`bsqvit.data.loader` for the determinism / resume contract.
"""

from .images import IMAGE_EXTENSIONS, ImageFolderDataset, find_images, open_rgb, to_rgb
from .loader import (
    DataConfig,
    DataPosition,
    ResumableDistributedSampler,
    WorkerInit,
    build_dataloader,
    build_dataset,
    count_skipped,
    infinite_batches,
)
from .transforms import (
    CropParams,
    ImageTransform,
    eval_transform,
    sample_generator,
    sample_seed,
    train_transform,
)
from .video import VIDEO_EXTENSIONS, VideoClipDataset, count_frames, find_videos, read_frames
from .webdataset import WebDatasetShards, expand_braces, expand_shards

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "CropParams",
    "DataConfig",
    "DataPosition",
    "ImageFolderDataset",
    "ImageTransform",
    "ResumableDistributedSampler",
    "VideoClipDataset",
    "WebDatasetShards",
    "WorkerInit",
    "build_dataloader",
    "build_dataset",
    "count_frames",
    "count_skipped",
    "eval_transform",
    "expand_braces",
    "expand_shards",
    "find_images",
    "find_videos",
    "infinite_batches",
    "open_rgb",
    "read_frames",
    "sample_generator",
    "sample_seed",
    "to_rgb",
    "train_transform",
]
