"""Training: the generic loop, the BSQ-ViT objective and trainer, checkpoints and distributed set-up.

Module map: ``loop`` (the loop every trainer specialises: cadence, logging, checkpoints,
resume, NaN guard), ``optim`` (AdamW, warm-up + half-cosine, clipping, EMA), ``runlog``
(log.jsonl, eval.jsonl, TensorBoard), ``checkpoint`` (crash-safe files), ``distributed``,
``config``, ``trainer`` (the tokenizer trainer), ``objective`` (its loss), ``gan``,
``discriminator`` and ``stylegan_layers``, ``samples`` (PNG grids).
"""

from .config import LossConfig, OptimConfig, TrainConfig, load_train_config
from .loop import SingleModelLoop, TrainLoop
from .optim import adamw_warmup_cosine, ema_update, warmup_cosine
from .trainer import Trainer, train

__all__ = [
    "LossConfig",
    "OptimConfig",
    "SingleModelLoop",
    "TrainConfig",
    "TrainLoop",
    "Trainer",
    "adamw_warmup_cosine",
    "ema_update",
    "load_train_config",
    "train",
    "warmup_cosine",
]
