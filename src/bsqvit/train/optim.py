"""Optimisation pieces shared by the trainers: AdamW, the warm-up + half-cosine learning-rate
schedule, gradient clipping and the exponential moving average (EMA) of the weights."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from contextlib import contextmanager

import torch

from ..config import ConfigError


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


def use_fused(params: list[torch.nn.Parameter], fused: bool | None = None) -> bool:
    """Whether AdamW should use its fused CUDA kernel: ``fused`` None = when every parameter is
    a floating-point CUDA tensor; True = required (ConfigError otherwise)."""
    ok = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
    if fused and not ok:
        raise ConfigError("optim.fused: true needs every parameter to be a floating-point CUDA tensor")
    return ok if fused is None else bool(fused)


def adamw(params: Iterable[torch.nn.Parameter], o, lr: float) -> torch.optim.AdamW:
    """AdamW over ``params`` (``o``: betas, weight_decay, eps and optionally fused, see
    :func:`use_fused`) at learning rate ``lr``."""
    params = list(params)
    fused = use_fused(params, getattr(o, "fused", None))
    return torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps,
                             fused=True if fused else None)


@contextmanager
def keeping_fused(opt: torch.optim.Optimizer):
    """Load a state dict into ``opt`` inside this context to keep ``opt``'s own fused setting
    (a saved param group carries its run's): a checkpoint resumes with fused on or off."""
    flags = [g.get("fused") for g in opt.param_groups]
    yield
    for g, f in zip(opt.param_groups, flags):
        g["fused"] = f
    for p, st in opt.state.items():  # fused wants float32 steps on the device, foreach on the CPU
        if torch.is_tensor(st.get("step")):
            st["step"] = st["step"].to(p.device if any(flags) else "cpu", torch.float32)


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


__all__ = ["adamw", "adamw_warmup_cosine", "clip_grad_norm", "ema_update", "keeping_fused", "make_ema", "use_fused", "warmup_cosine", "warmup_cosine_lr"]
