"""Binary Spherical Quantization (BSQ) and its sphere-less sibling, LFQ.

BSQ projects a vector onto the unit sphere and snaps it to the nearest of the 2^L hypercube
corners scaled onto the sphere, ``c in {-1/sqrt(L), +1/sqrt(L)}^L``. No codebook is stored.

The entropy regulariser (Jansen et al. 2019; Zhao et al. 2025) uses the soft assignment
``q(c|u) = softmax_c(2 tau <u, c>)``. It factorises over bits, so

* per-sample entropy ``E_u[H(q(.|u))]`` is computed exactly, either over the 2^g sub-codes of
  each group of g bits (``group_size=g``) or analytically per bit (``group_size=1``);
* codebook entropy ``H(E_u[q(.|u)])`` is computed per group of g bits and summed. ``g = L`` is
  exact; smaller groups give an upper bound (they cannot see correlations between groups);
  ``g = 1`` is the paper's "factorised" form.

All statistics are computed in fp32 (even under autocast) and the batch-averaged
distribution is averaged over data-parallel ranks when ``torch.distributed`` is initialised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    Quantizer,
    QuantizerOutput,
    binary_entropy_from_logits,
    bits_to_indices,
    distributed_mean,
    entropy,
    indices_to_bits,
)


def check_nested_bits(levels, dim: int) -> tuple[int, ...] | None:
    """The kept-bit counts L' of a nested ("variable rate") quantizer, increasing, ending at L."""
    if levels is None:
        return None
    levels = tuple(int(v) for v in levels)
    if not levels or list(levels) != sorted(set(levels)) or levels[0] < 1 or levels[-1] != dim:
        raise ValueError(f"nested_bits must be increasing, distinct, >= 1 and end at dim {dim}; got {list(levels)}")
    return levels


def keep_bits(indices: Tensor, dim: int, bits: int) -> Tensor:
    """Token indices with only their first ``bits`` bits kept (channel 0 = most significant)."""
    return indices & (((1 << bits) - 1) << (dim - bits))


def default_group_size(dim: int, largest: int = 9) -> int:
    """Largest divisor of ``dim`` that is at most ``largest`` (9 for L = 18 and 36)."""
    return max(g for g in range(1, min(dim, largest) + 1) if dim % g == 0)


class _BinaryQuantizer(Quantizer):
    spherical: bool = True

    def __init__(
        self,
        dim: int,
        group_size: int | None = None,
        inv_temperature: float = 1.0,
        gamma0: float = 1.0,
        gamma: float = 1.0,
        zeta: float = 1.0,
        commitment_weight: float = 0.0,
        entropy_weight: float = 1.0,
        sync_stats: bool = True,
        nested_bits: list[int] | tuple[int, ...] | None = None,
    ):
        super().__init__()
        if dim < 1 or dim > 62:
            raise ValueError(f"dim must be in [1, 62] so indices fit in int64, got {dim}")
        group_size = default_group_size(dim) if group_size is None else group_size
        if group_size < 1 or dim % group_size:
            raise ValueError(f"group_size {group_size} must divide dim {dim}")
        if group_size > 24:
            raise ValueError(f"group_size {group_size} needs 2^{group_size} probabilities per token; use <= 24")
        self.dim = dim
        self.group_size = group_size
        self.num_groups = dim // group_size
        self.codebook_size = 2**dim
        self.inv_temperature = inv_temperature
        self.gamma0, self.gamma, self.zeta = gamma0, gamma, zeta
        self.commitment_weight = commitment_weight
        self.entropy_weight = entropy_weight
        self.sync_stats = sync_stats
        self.scale = self._scale(dim)  # code entries +-scale: 1/sqrt(L) on the sphere (BSQ), 1 (LFQ)
        self.nested_bits = check_nested_bits(nested_bits, dim)
        if group_size > 1:
            # (2^g, g) sub-codes, most significant bit first, entries +-scale
            codes = indices_to_bits(torch.arange(2**group_size), group_size).float() * 2 - 1
            self.register_buffer("group_codebook", codes * self.scale, persistent=False)

    # ---- index <-> code mappings -------------------------------------------------------
    def codes_to_indices(self, codes: Tensor) -> Tensor:
        return bits_to_indices(codes > 0)

    def codes_to_group_indices(self, codes: Tensor) -> Tensor:
        bits = (codes > 0).unflatten(-1, (self.num_groups, self.group_size))
        return bits_to_indices(bits)

    def indices_to_codes(self, indices: Tensor, bits: int | None = None) -> Tensor:
        """int64 indices (...) -> quantized vectors (..., L), entries +-1/sqrt(L) (BSQ) or +-1 (LFQ).

        ``bits=L'`` (nested quantizers): the code of the first L' bits, renormalised onto the
        sphere of the kept bits (entries +-1/sqrt(L')), with the dropped bits 0.
        """
        L = self.check_bits(bits)
        codes = (indices_to_bits(indices, self.dim).float() * 2 - 1) * self._scale(L)
        if L < self.dim:
            codes[..., L:] = 0
        return codes

    def check_bits(self, bits: int | None) -> int:
        """``bits`` (None = all) as an int, checked against the nested levels."""
        if bits is None or bits == self.dim:
            return self.dim
        if self.nested_bits is None:
            raise ValueError(f"this quantizer codes all {self.dim} bits; it was not trained with nested_bits")
        if bits not in self.nested_bits:
            raise ValueError(f"bits must be one of the trained levels {list(self.nested_bits)}, got {bits}")
        return int(bits)

    def _scale(self, bits: int) -> float:
        return 1.0 / math.sqrt(bits) if self.spherical else 1.0

    def keep_bits(self, indices: Tensor, bits: int | None) -> Tensor:
        """Indices of the first ``bits`` bits, the others cleared (what a rate-L' token is)."""
        return keep_bits(indices, self.dim, self.check_bits(bits))

    def sample_bits(self) -> int:
        """A training level L', uniform over ``nested_bits`` (the global torch generator)."""
        levels = self.nested_bits
        return levels[int(torch.randint(len(levels), ()))]

    def group_indices_to_codes(self, group_indices: Tensor) -> Tensor:
        """(..., G) group indices -> (..., L) quantized vectors."""
        bits = indices_to_bits(group_indices, self.group_size).flatten(-2)
        return (bits.float() * 2 - 1) * self.scale

    def group_indices_to_indices(self, group_indices: Tensor) -> Tensor:
        return bits_to_indices(indices_to_bits(group_indices, self.group_size).flatten(-2))

    def indices_to_group_indices(self, indices: Tensor) -> Tensor:
        bits = indices_to_bits(indices, self.dim).unflatten(-1, (self.num_groups, self.group_size))
        return bits_to_indices(bits)

    # ---- forward ------------------------------------------------------------------------
    def project(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=-1) if self.spherical else z

    def quantize(self, u: Tensor, bits: int | None = None) -> Tensor:
        """Binarise with a straight-through gradient. sign(0) -> -1, as in the reference.

        ``bits=L' < L``: the first L' channels are renormalised (onto their own sphere for BSQ)
        and binarised to +-1/sqrt(L'); the others are 0 and pass no gradient.
        """
        L = self.dim if bits is None else bits
        if L < self.dim:
            u = torch.cat([self.project(u[..., :L]), torch.zeros_like(u[..., L:])], -1)
        s = self._scale(L)
        zhat = torch.where(u > 0, s, -s).to(u.dtype)
        if L < self.dim:
            zhat[..., L:] = 0
        return u + (zhat - u).detach()

    def entropy_terms(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """(per-sample entropy, codebook entropy) in nats for flattened (N, L) inputs."""
        tau = self.inv_temperature
        if self.group_size == 1:
            # q(bit_d = 1 | u) = sigmoid(4 tau u_d s), s = code scale
            logits = 4.0 * tau * self.scale * u
            per_sample = binary_entropy_from_logits(logits).sum(-1).mean()
            p_mean = distributed_mean(torch.sigmoid(logits).mean(0)) if self.sync_stats and self.training else torch.sigmoid(logits).mean(0)
            p_mean = p_mean.clamp(0.0, 1.0)
            probs = torch.stack([p_mean, 1 - p_mean], dim=-1)
            codebook = entropy(probs).sum()
            return per_sample, codebook
        ug = u.unflatten(-1, (self.num_groups, self.group_size))  # (N, G, g)
        logits = 2.0 * tau * torch.einsum("ngc,kc->ngk", ug, self.group_codebook.to(u.dtype))
        logp = torch.log_softmax(logits, dim=-1)
        p = logp.exp()
        per_sample = -(p * logp).sum(-1).sum(-1).mean()
        avg = p.mean(0)  # (G, 2^g)
        if self.sync_stats and self.training:  # eval may run on one rank only: no collectives
            avg = distributed_mean(avg)
        codebook = entropy(avg).sum()
        return per_sample, codebook

    def forward(self, z: Tensor, bits: int | None = None) -> QuantizerOutput:
        """``bits=L'`` keeps the first L' bits (nested quantizers). In training mode a nested
        quantizer draws L' from ``nested_bits`` for every call unless ``bits`` is given; in
        evaluation mode it keeps all of them. ``indices`` are those of the kept bits."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got {tuple(z.shape)}")
        if bits is None and self.nested_bits is not None and self.training:
            bits = self.sample_bits()
        L = self.check_bits(bits)
        with torch.autocast(device_type=z.device.type, enabled=False):
            u = self.project(z.float())
            zq = self.quantize(u, L if L < self.dim else None)
            bits = u.detach() > 0
            if L < self.dim:
                bits[..., L:] = False
            indices = bits_to_indices(bits)
            group_indices = bits_to_indices(bits.unflatten(-1, (self.num_groups, self.group_size)))
            flat = u.reshape(-1, self.dim)
            zero = u.new_zeros(())
            per_sample, codebook = self.entropy_terms(flat)
            entropy_loss = self.zeta * (self.gamma0 * per_sample - self.gamma * codebook) / self.inv_temperature
            commit = ((zq.detach() - u) ** 2).sum(-1).mean() if self.commitment_weight > 0 else zero
            loss = self.entropy_weight * entropy_loss + self.commitment_weight * commit
        return QuantizerOutput(
            quantized=zq.to(z.dtype) if z.dtype != torch.float32 else zq,
            indices=indices,
            group_indices=group_indices,
            loss=loss,
            per_sample_entropy=per_sample,
            codebook_entropy=codebook,
            commit_loss=commit,
            entropy_loss=entropy_loss,
            bit_usage=bits.reshape(-1, self.dim).float().mean(0),
            used_codes=torch.unique(indices).numel() * torch.ones((), device=z.device),
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, group_size={self.group_size}, inv_temperature={self.inv_temperature}"


class BinarySphericalQuantizer(_BinaryQuantizer):
    """BSQ: l2-normalise, then binarise to +-1/sqrt(dim) with a straight-through gradient.

    Args:
        dim: number of bits L (1..62).
        group_size: g for the entropy terms; ``1`` is the factorised (per-bit) form, ``dim`` is
            exact. Default: the largest divisor of ``dim`` <= 9 (the reference uses 9).
        inv_temperature: tau in the soft assignment ``softmax(2 tau <u, c>)``.
        gamma0, gamma, zeta: entropy loss ``zeta * (gamma0 H_sample - gamma H_codebook) / tau``.
        commitment_weight: weight of ``||sg(zq) - u||^2`` (0 = off, as in every released config).
        entropy_weight: multiplies the entropy loss inside ``loss`` (the trainer ramps its own).
        sync_stats: all-reduce the codebook statistics across data-parallel ranks (training mode
            only: evaluation may run on a single rank, so it never issues a collective).
    """

    spherical = True


class LookupFreeQuantizer(_BinaryQuantizer):
    """LFQ (MAGVIT-v2): binarise to +-1 without the sphere. Exact entropy by default (g = L).

    Use small ``dim`` for the exact form: memory grows as N * 2^dim.
    """

    spherical = False

    def __init__(self, dim: int, group_size: int | None = None, **kwargs):
        super().__init__(dim, group_size=dim if group_size is None else group_size, **kwargs)
