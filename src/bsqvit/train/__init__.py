"""Training: the BSQ-ViT objective, the trainer, checkpoints and distributed set-up."""

from .config import LossConfig, OptimConfig, TrainConfig, load_train_config

__all__ = ["LossConfig", "OptimConfig", "TrainConfig", "load_train_config", "Trainer", "train"]


def __getattr__(name):
    if name in ("Trainer", "train"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
