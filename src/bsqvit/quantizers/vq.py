"""Vector quantization with an l2-normalised codebook (the VQ baseline of ViT-VQGAN / BSQ).

Inputs and codes live on the unit sphere; the nearest code is the one with the largest cosine
similarity. The codebook is either updated by exponential moving averages (``ema=True``, the
default) or learned by gradient descent with a codebook loss (``ema=False``). Codes that fall
out of use are restarted from vectors of the current batch.

All arithmetic runs in fp32, even under autocast.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Quantizer, QuantizerOutput


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(Quantizer):
    """Cosine-similarity VQ with a straight-through estimator.

    Args:
        codebook_size: number of codes K.
        dim: code dimension.
        ema: update the codebook by EMA of cluster sizes and summed (normalised) inputs;
            otherwise the codebook is an ``nn.Parameter`` trained by ``||sg(u) - q||^2``.
        decay: EMA decay for cluster sizes and sums.
        commitment_weight: beta of the commitment loss ``beta * ||u - sg(q)||^2``.
        dead_code_threshold: in training, codes whose EMA cluster size is below this are
            replaced by random (normalised) input vectors of the current batch. ``0`` disables.
            EMA cluster sizes start at 0, so the first training step restarts every code from
            the data (a data-dependent initialisation).
        eps: Laplace smoothing of the cluster sizes.
        chunk_size: the nearest-code search handles at most ``chunk_size`` x K similarities at
            once (default: about 4M entries).

    Losses are squared distances summed over the code dimension and averaged over tokens.
    With ``torch.distributed`` initialised, the EMA statistics are summed across ranks and the
    restarted vectors are broadcast from rank 0, so every rank keeps the same codebook.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        ema: bool = True,
        decay: float = 0.99,
        commitment_weight: float = 0.25,
        dead_code_threshold: float = 1.0,
        eps: float = 1e-5,
        chunk_size: int | None = None,
    ):
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be positive, got {codebook_size}, {dim}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.ema = ema
        self.decay = decay
        self.commitment_weight = commitment_weight
        self.dead_code_threshold = dead_code_threshold
        self.eps = eps
        self.chunk_size = chunk_size or max(1, (1 << 22) // codebook_size)
        init = F.normalize(torch.randn(codebook_size, dim), dim=-1)
        if ema:
            self.register_buffer("embed", init)  # normalised codebook
            self.register_buffer("embed_sum", init.clone())
        else:
            self.embed = nn.Parameter(init)  # normalised on use
        self.register_buffer("cluster_size", torch.zeros(codebook_size))

    # ---- codebook ------------------------------------------------------------------------
    @property
    def codebook(self) -> Tensor:
        """(K, dim) unit-norm codes (differentiable in learned mode)."""
        return self.embed if self.ema else F.normalize(self.embed.float(), dim=-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """int64 indices (...) -> unit-norm code vectors (..., dim)."""
        return F.embedding(indices, self.codebook)

    @torch.no_grad()
    def nearest(self, u: Tensor) -> Tensor:
        """Index of the code with the largest cosine similarity, for (N, dim) unit vectors."""
        cb = self.codebook.detach().float()
        out = torch.empty(u.shape[0], dtype=torch.int64, device=u.device)
        for s in range(0, u.shape[0], self.chunk_size):
            out[s : s + self.chunk_size] = (u[s : s + self.chunk_size] @ cb.t()).argmax(dim=-1)
        return out

    # ---- training-time updates --------------------------------------------------------------
    @torch.no_grad()
    def _update(self, u: Tensor, idx: Tensor, counts: Tensor) -> None:
        counts = counts.float()
        sums = None
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, u)
        if _dist_on():
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
            self.embed.copy_(F.normalize(self.embed_sum / smoothed.clamp_min(1e-12)[:, None], dim=-1))
        self._restart_dead(u)

    @torch.no_grad()
    def _restart_dead(self, u: Tensor) -> None:
        if self.dead_code_threshold <= 0:
            return
        n = u.shape[0]
        dead = (self.cluster_size < self.dead_code_threshold) & (n > 0)
        distributed = _dist_on()
        if distributed:  # rank 0 decides and supplies the vectors, so every rank agrees
            flag = dead.to(torch.uint8)
            dist.broadcast(flag, src=0)
            dead = flag.bool()
        num = int(dead.sum())
        if num == 0:
            return
        if not distributed or dist.get_rank() == 0:
            pick = torch.randperm(n, device=u.device)[:num] if n >= num else torch.randint(0, n, (num,), device=u.device)
            new = u[pick].contiguous()
        else:
            new = u.new_empty(num, self.dim)
        if distributed:
            dist.broadcast(new, src=0)
        new = F.normalize(new, dim=-1)
        self.cluster_size[dead] = self.dead_code_threshold
        if self.ema:
            self.embed[dead] = new
            self.embed_sum[dead] = new * self.dead_code_threshold
        else:
            self.embed.data[dead] = new.to(self.embed.dtype)

    # ---- forward --------------------------------------------------------------------------
    def forward(self, z: Tensor) -> QuantizerOutput:
        if z.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            u = F.normalize(z.float(), dim=-1)
            flat = u.reshape(-1, self.dim)
            idx = self.nearest(flat.detach())
            codebook = self.codebook
            q = F.embedding(idx, codebook).view_as(u)
            zq = u + (q - u).detach()  # straight-through
            commit = ((u - q.detach()) ** 2).sum(-1).mean()
            loss = self.commitment_weight * commit
            extras = {}
            if not self.ema:
                codebook_loss = ((u.detach() - q) ** 2).sum(-1).mean()
                loss = loss + codebook_loss
                extras["codebook_loss"] = codebook_loss.detach()
            counts = torch.bincount(idx, minlength=self.codebook_size)
            probs = counts.float() / max(idx.numel(), 1)
            codebook_entropy = -torch.special.xlogy(probs, probs).sum()  # nats, 0 log 0 = 0
            used = (counts > 0).sum().float()
            if self.training:
                self._update(flat.detach(), idx, counts)
        return QuantizerOutput(
            quantized=zq.to(z.dtype) if z.dtype != torch.float32 else zq,
            indices=idx.view(u.shape[:-1]),
            loss=loss,
            per_sample_entropy=None,
            codebook_entropy=codebook_entropy.detach(),
            commit_loss=commit,
            used_codes=used,
            extras=extras,
        )

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, dim={self.dim}, ema={self.ema}"
