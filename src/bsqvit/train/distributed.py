"""torch.distributed set-up for torchrun: NCCL on GPU, gloo on CPU, rank-0 helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device: cuda requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, dev)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device) -> dict[str, float]:
    """Average a dict of floats over ranks (for logging)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_reduce_sum_int(value: int, device) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t.item())


def average_gradients(module: torch.nn.Module) -> None:
    """All-reduce (mean) the gradients of a module that is not wrapped in DDP.

    Used for the discriminator: its lazy R1 term needs double backward, which DDP's reducer
    does not support, so its gradients are averaged by hand (as StyleGAN2-ADA does).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def wrap_fsdp(model: torch.nn.Module, blocks) -> torch.nn.Module:
    """Shard every block of ``blocks``, then the model (FSDP2, in place)."""
    from torch.distributed.fsdp import fully_shard  # lazy: only multi-process FSDP runs need it

    for blk in blocks:
        fully_shard(blk)
    fully_shard(model)
    return model


def full_model_state(module: torch.nn.Module, fsdp: bool) -> dict:
    """The whole (unsharded, on CPU under FSDP) state dict of ``module``."""
    if not fsdp:
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # lazy: FSDP only

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optim_state(module: torch.nn.Module, opt: torch.optim.Optimizer, fsdp: bool) -> dict:
    if not fsdp:
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict  # lazy: FSDP only

    return get_optimizer_state_dict(module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(module: torch.nn.Module, opt: torch.optim.Optimizer, model_state: dict, optim_state: dict,
                    fsdp: bool) -> None:
    """Load what :func:`full_model_state` / :func:`full_optim_state` returned."""
    if not fsdp:
        module.load_state_dict(model_state)
        opt.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import (  # lazy: FSDP only
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(module, model_state, options=opts)
    set_optimizer_state_dict(module, opt, optim_state, options=opts)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
