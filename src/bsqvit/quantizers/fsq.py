"""Finite Scalar Quantization (Mentzer et al. 2023, arXiv 2309.15505).

Each of the ``d = len(levels)`` channels is bounded with a tanh to ``levels[i]`` values, rounded
with a straight-through gradient and rescaled so that the grid lies in [-1, 1]:

* odd ``l``: values ``{-1, ..., 0, ..., 1}`` in steps of ``2 / (l - 1)``;
* even ``l``: the bound is shifted by half a step (as in the paper), values ``k / (l // 2)`` for
  ``k = -l/2, ..., l/2 - 1``, i.e. from -1 to ``1 - 2/l``.

Index convention (the FSQ paper's): mixed radix with the **first channel least significant**,
``index = sum_i digit_i * prod_{j<i} levels[j]`` with ``digit_i in [0, levels[i])``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Quantizer, QuantizerOutput


class FiniteScalarQuantizer(Quantizer):
    """FSQ with ``codebook_size = prod(levels)`` and no auxiliary loss.

    Args:
        levels: number of values per channel, e.g. ``[8, 8, 8, 5, 5, 5]`` (each >= 2).
        eps: keeps the tanh bound strictly inside the outermost rounding interval.
    """

    def __init__(self, levels: list[int], eps: float = 1e-3):
        super().__init__()
        levels = [int(l) for l in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {levels}")
        self.levels = levels
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        if self.codebook_size >= 2**63:
            raise ValueError("prod(levels) does not fit in int64")
        self.eps = eps
        lv = torch.tensor(levels, dtype=torch.int64)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.int64), dim=0)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        half_l = (lv.double() - 1) * (1 - eps) / 2
        offset = (lv % 2 == 0).double() * 0.5
        self.register_buffer("_half_l", half_l.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        # shift so that bound(0) = 0 for even levels (the paper writes tan; atanh is the exact
        # inverse). For l = 2 no shift reaches 0, so none is applied and 0 is the bin boundary.
        ratio = offset / half_l
        shift = torch.where(ratio < 1, torch.atanh(ratio.clamp(max=0.999)), torch.zeros_like(ratio))
        self.register_buffer("_shift", shift.float(), persistent=False)
        self.register_buffer("_half_width", (lv // 2).float(), persistent=False)

    def bound(self, z: Tensor) -> Tensor:
        """Squash each channel into the range that rounds to ``levels[i]`` integers."""
        return torch.tanh(z + self._shift) * self._half_l - self._offset

    def quantize(self, z: Tensor) -> Tensor:
        """Bound, round (straight-through) and rescale to [-1, 1]."""
        b = self.bound(z)
        r = b + (torch.round(b) - b).detach()
        return r / self._half_width

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        digits = torch.round(codes.float() * self._half_width + self._half_width).to(torch.int64)
        return (digits * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """int64 indices (...) -> codes (..., d) on the grid in [-1, 1]."""
        digits = (indices.to(torch.int64).unsqueeze(-1) // self._basis) % self._levels
        return (digits.float() - self._half_width) / self._half_width

    def forward(self, z: Tensor) -> QuantizerOutput:
        if z.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            zq = self.quantize(z.float())
            indices = self.codes_to_indices(zq.detach())
            flat = indices.reshape(-1)
            if self.codebook_size <= 1 << 22:
                counts = torch.bincount(flat, minlength=self.codebook_size)
                counts = counts[counts > 0]
            else:
                counts = torch.unique(flat, return_counts=True)[1]
            probs = counts.float() / max(flat.numel(), 1)
            codebook_entropy = -(probs * probs.log()).sum()
        return QuantizerOutput(
            quantized=zq.to(z.dtype) if z.dtype != torch.float32 else zq,
            indices=indices,
            loss=zq.new_zeros(()),
            codebook_entropy=codebook_entropy,
            used_codes=torch.tensor(float(counts.numel()), device=z.device),
        )

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
