"""Token statistics: code usage, per-bit usage, empirical entropy (bits per token)."""

from __future__ import annotations

import torch
from torch import Tensor


class TokenStats:
    """Accumulates token indices over a data set.

    ``bits`` is log2 of the codebook size; binary codes (BSQ/LFQ) also get per-bit statistics
    and per-group entropies (``group_size`` bits per group).
    """

    def __init__(self, bits: float, binary: bool = True, group_size: int | None = None, codebook_size: int | None = None):
        self.bits = bits
        self.binary = binary and float(bits).is_integer()
        self.L = int(bits) if self.binary else None
        self.codebook_size = codebook_size or int(round(2**bits))
        self.group_size = group_size if group_size else (min(9, self.L) if self.binary else None)
        self.counts: dict[int, int] = {}
        self.ones = torch.zeros(self.L, dtype=torch.float64) if self.binary else None
        self.group_counts = None
        self.n = 0

    def update(self, indices: Tensor) -> None:
        idx = indices.reshape(-1).to(torch.int64).cpu()
        self.n += idx.numel()
        u, c = torch.unique(idx, return_counts=True)
        for a, b in zip(u.tolist(), c.tolist()):
            self.counts[a] = self.counts.get(a, 0) + b
        if self.binary:
            shifts = torch.arange(self.L - 1, -1, -1, dtype=torch.int64)
            bits = (idx.unsqueeze(-1) >> shifts) & 1
            self.ones += bits.sum(0).double()
            if self.L % self.group_size == 0:
                G = self.L // self.group_size
                gs = torch.arange(self.group_size - 1, -1, -1, dtype=torch.int64)
                g = (bits.view(-1, G, self.group_size) << gs).sum(-1)
                if self.group_counts is None:
                    self.group_counts = torch.zeros(G, 2**self.group_size, dtype=torch.float64)
                for k in range(G):
                    self.group_counts[k] += torch.bincount(g[:, k], minlength=2**self.group_size).double()

    @staticmethod
    def _entropy_bits(counts) -> float:
        c = torch.as_tensor(counts, dtype=torch.float64)
        p = c[c > 0] / c.sum()
        return float(-(p * torch.log2(p)).sum())

    def summary(self) -> dict:
        out = {
            "tokens": self.n,
            "codebook_size": self.codebook_size,
            "used_codes": len(self.counts),
            "code_usage": len(self.counts) / self.codebook_size,
            # the usage ceiling: with N tokens at most min(N, K) codes can appear
            "code_usage_of_possible": len(self.counts) / max(1, min(self.n, self.codebook_size)),
            "entropy_bits": self._entropy_bits(list(self.counts.values())) if self.counts else 0.0,
            "raw_bits": float(self.bits),
        }
        if self.binary and self.n:
            p = (self.ones / self.n).clamp(0, 1)
            h = -(p * torch.log2(p.clamp_min(1e-12)) + (1 - p) * torch.log2((1 - p).clamp_min(1e-12)))
            out["bit_usage"] = [round(float(v), 4) for v in p]
            out["bit_entropy_sum"] = float(h.sum())
            if self.group_counts is not None:
                ge = [self._entropy_bits(g) for g in self.group_counts]
                out["group_entropy_bits"] = ge
                out["group_entropy_sum"] = float(sum(ge))
        return out


def raw_bpp(bits_per_token: float, patch_size: int, frames_per_token: int = 1) -> float:
    """Bits per pixel of raw fixed-length tokens: L / p^2."""
    return bits_per_token / (patch_size * patch_size * frames_per_token)


__all__ = ["TokenStats", "raw_bpp"]
