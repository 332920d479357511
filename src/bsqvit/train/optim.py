"""Optimisation pieces shared by the trainers: AdamW, the warm-up + half-cosine learning-rate
schedule, gradient clipping and the exponential moving average (EMA) of the weights."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch


def warmup_cosine(step: int, warmup: int, total: int, start: float, end: float) -> float:
    """LR multiplier: linear ``start -> 1`` over ``warmup`` steps, then half-cosine ``1 -> end``."""
    if step < warmup:
        return start + (1.0 - start) * step / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + 0.5 * (1.0 - end) * (1 + math.cos(math.pi * t))


def warmup_cosine_lr(opt: torch.optim.Optimizer, o, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`warmup_cosine` as a scheduler of ``opt`` (``o``: warmup_steps, warmup_start, min_lr_ratio).

    The multiplier is a closure, not a callable object, so the scheduler's state dict (and hence
    the checkpoint) holds no copy of it."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, o.warmup_steps, total_steps, o.warmup_start, o.min_lr_ratio))


def _decays(name: str, p: torch.nn.Parameter) -> bool:
    return p.ndim >= 2 and "emb" not in name


def adamw_warmup_cosine(module: torch.nn.Module, o, total_steps: int):
    """AdamW (weight decay on matrices, not on embeddings, norms or biases) and its warm-up +
    half-cosine schedule (``o``: lr, betas, weight_decay, warmup_steps, warmup_start, min_lr_ratio).
    Used by the token-prior and generator trainers."""
    decay = [p for n, p in module.named_parameters() if _decays(n, p)]
    other = [p for n, p in module.named_parameters() if not _decays(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=o.lr, betas=tuple(o.betas))
    return opt, warmup_cosine_lr(opt, o, total_steps)


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the gradients' global norm to ``max_norm`` (``<= 0``: no clipping); the norm before
    clipping is returned either way (for the log)."""
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf")))


def make_ema(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` in eval mode, to be updated with :func:`ema_update`."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


__all__ = ["adamw_warmup_cosine", "clip_grad_norm", "ema_update", "make_ema", "warmup_cosine", "warmup_cosine_lr"]
