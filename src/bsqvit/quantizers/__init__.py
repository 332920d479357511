"""Quantizers behind one interface: BSQ (the method), LFQ, VQ, FSQ baselines, and Λ24-SQ (leech)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Quantizer, QuantizerOutput, bits_to_indices, indices_to_bits
from .bsq import BinarySphericalQuantizer, LookupFreeQuantizer, check_nested_bits
from .fsq import FiniteScalarQuantizer
from .leech import LeechQuantizer
from .vq import VectorQuantizer


@dataclass
class QuantizerConfig:
    """Which quantizer sits in the bottleneck, and its settings.

    ``dim`` is the bottleneck width: the number of bits L for bsq/lfq, the code dimension for
    vq; for fsq it is ``len(levels)``; for leech (Λ24-SQ, the fixed 196,560-code spherical Leech
    codebook) it must be 24.
    """

    type: str = "bsq"  # bsq | lfq | vq | fsq | leech
    dim: int = 18
    group_size: int | None = None  # bsq/lfq entropy groups (1 = factorised)
    inv_temperature: float = 1.0
    gamma0: float = 1.0
    gamma: float = 1.0
    zeta: float = 1.0
    commitment_weight: float = 0.0  # bsq/lfq/leech: beta (0 = off); vq: commitment beta (0.25 typical)
    codebook_size: int = 16384  # vq
    ema: bool = True  # vq: EMA codebook updates (else learned with a codebook loss)
    decay: float = 0.99  # vq EMA decay
    dead_code_threshold: float = 1.0  # vq: codes whose EMA usage falls below this are restarted
    levels: list[int] | None = None  # fsq, e.g. [8, 8, 8, 5, 5, 5]
    # bsq/lfq "nested bits" (variable rate): training draws L' from these per batch and keeps only
    # the first L' bits (renormalised); e.g. [6, 12, 18, 24, 30, 36] for dim 36. None: fixed L.
    nested_bits: list[int] | None = None

    def __post_init__(self):
        if self.type not in ("bsq", "lfq", "vq", "fsq", "leech"):
            raise ValueError(f"quantizer.type must be one of bsq, lfq, vq, fsq, leech; got {self.type!r}")
        if self.type == "leech" and self.dim != 24:
            raise ValueError(f"quantizer.dim must be 24 for leech, got {self.dim}")
        if self.type == "fsq":
            if not self.levels:
                raise ValueError("quantizer.levels is required for fsq")
            self.dim = len(self.levels)
        if self.nested_bits is not None:
            if self.type not in ("bsq", "lfq"):
                raise ValueError(f"quantizer.nested_bits is for bsq/lfq, not {self.type}")
            check_nested_bits(self.nested_bits, self.dim)
            self.nested_bits = [int(v) for v in self.nested_bits]


def build_quantizer(cfg: QuantizerConfig) -> Quantizer:
    if cfg.type in ("bsq", "lfq"):
        cls = BinarySphericalQuantizer if cfg.type == "bsq" else LookupFreeQuantizer
        return cls(
            cfg.dim,
            group_size=cfg.group_size,
            inv_temperature=cfg.inv_temperature,
            gamma0=cfg.gamma0,
            gamma=cfg.gamma,
            zeta=cfg.zeta,
            commitment_weight=cfg.commitment_weight,
            nested_bits=cfg.nested_bits,
        )
    if cfg.type == "vq":
        return VectorQuantizer(
            cfg.codebook_size,
            cfg.dim,
            ema=cfg.ema,
            decay=cfg.decay,
            commitment_weight=cfg.commitment_weight if cfg.commitment_weight > 0 else 0.25,
            dead_code_threshold=cfg.dead_code_threshold,
        )
    if cfg.type == "leech":
        return LeechQuantizer(cfg.dim, commitment_weight=cfg.commitment_weight)
    return FiniteScalarQuantizer(list(cfg.levels))


__all__ = [
    "Quantizer",
    "QuantizerOutput",
    "QuantizerConfig",
    "BinarySphericalQuantizer",
    "LookupFreeQuantizer",
    "VectorQuantizer",
    "FiniteScalarQuantizer",
    "LeechQuantizer",
    "build_quantizer",
    "bits_to_indices",
    "indices_to_bits",
]
