"""The interface every quantizer implements, and the helpers they share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """What a quantizer returns.

    ``quantized`` has the shape of the input (last dim = code dim). ``indices`` has the input's
    shape without the last dim. Scalars are fp32 tensors; entropies are in nats.
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    group_indices: Tensor | None = None
    per_sample_entropy: Tensor | None = None
    codebook_entropy: Tensor | None = None
    commit_loss: Tensor | None = None
    entropy_loss: Tensor | None = None
    # diagnostics (detached)
    bit_usage: Tensor | None = None  # (L,) fraction of +1 per bit, for binary quantizers
    used_codes: Tensor | None = None  # number of distinct codes in this batch
    extras: dict = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """Loggable floats."""
        out = {}
        for name in ("loss", "per_sample_entropy", "codebook_entropy", "commit_loss", "entropy_loss", "used_codes"):
            v = getattr(self, name)
            if v is not None:
                out[name] = float(v.detach().float())
        return out


def bits_per_token(codebook_size: int) -> float:
    """Bits per token of a raw fixed-length index: ``log2(codebook_size)`` (the one formula)."""
    return math.log2(codebook_size)


def index_bits(codebook_size: int) -> int:
    """Whole bits of a stored index field: :func:`bits_per_token` rounded up, at least 1."""
    return max(1, math.ceil(bits_per_token(codebook_size)))


class Quantizer(nn.Module):
    """Base class. Subclasses set ``dim`` (input/code dim) and ``codebook_size``."""

    dim: int
    codebook_size: int

    @property
    def bits(self) -> float:
        """Bits per token of a raw fixed-length index."""
        return bits_per_token(self.codebook_size)

    def indices_to_codes(self, indices: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, z: Tensor) -> QuantizerOutput:  # pragma: no cover - interface
        raise NotImplementedError


def distributed_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over data-parallel ranks, differentiable.

    The backward all-reduces the gradient too, so after DDP averages parameter gradients the
    result equals the gradient of the loss on the global batch.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _AllReduceSum.apply(x) / dist.get_world_size()


class _AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce (sum): the backward all-reduces the incoming gradient.

    Written here rather than imported from ``torch.distributed.nn.functional``: that module is
    deprecated (a FutureWarning on every call), and importing it lazily after
    ``init_process_group`` made gloo worker processes abort at exit ("terminate called without
    an active exception") in about 1 run in 15 on torch 2.13.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def entropy(probs: Tensor, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """Shannon entropy in nats, -sum p log p (``eps`` guards log(0))."""
    return -(probs * torch.log(probs + eps)).sum(dim=dim)


def binary_entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of Bernoulli(sigmoid(logits)), computed stably."""
    p = torch.sigmoid(logits)
    # H = softplus(l) - p*l  ==  -p log p - (1-p) log(1-p)
    return nn.functional.softplus(logits) - p * logits


def bits_to_indices(bits: Tensor) -> Tensor:
    """(..., L) bool/0-1 tensor -> int64 index, channel 0 = most significant bit. L <= 63."""
    L = bits.shape[-1]
    if L > 63:
        raise ValueError(f"{L} bits do not fit in int64")
    shifts = torch.arange(L - 1, -1, -1, device=bits.device, dtype=torch.int64)
    return (bits.to(torch.int64) << shifts).sum(dim=-1)


def indices_to_bits(indices: Tensor, L: int) -> Tensor:
    """Inverse of ``bits_to_indices``: int64 (...) -> (..., L) int64 in {0, 1}."""
    if L > 63:
        raise ValueError(f"{L} bits do not fit in int64")
    shifts = torch.arange(L - 1, -1, -1, device=indices.device, dtype=torch.int64)
    return (indices.to(torch.int64).unsqueeze(-1) >> shifts) & 1


def split_groups(tokens: Tensor, bits: int, group_bits: int) -> Tensor:
    """int64 token indices (...) -> group indices (..., G) of ``group_bits`` bits each,
    G = bits / group_bits; group 0 holds the most significant bits (channel 0 first)."""
    G = bits // group_bits
    shifts = torch.arange(G - 1, -1, -1, device=tokens.device, dtype=torch.int64) * group_bits
    return (tokens.unsqueeze(-1) >> shifts) & ((1 << group_bits) - 1)


def join_groups(groups: Tensor, bits: int, group_bits: int) -> Tensor:
    """Inverse of :func:`split_groups`."""
    G = bits // group_bits
    shifts = torch.arange(G - 1, -1, -1, device=groups.device, dtype=torch.int64) * group_bits
    return (groups.to(torch.int64) << shifts).sum(-1)
