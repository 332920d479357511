"""Quantizers behind one interface: BSQ (the method), and LFQ, VQ, FSQ baselines."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Quantizer, QuantizerOutput, bits_to_indices, indices_to_bits
from .bsq import BinarySphericalQuantizer, LookupFreeQuantizer
from .fsq import FiniteScalarQuantizer
from .vq import VectorQuantizer


@dataclass
class QuantizerConfig:
    """Which quantizer sits in the bottleneck, and its settings.

    ``dim`` is the bottleneck width: the number of bits L for bsq/lfq, the code dimension for
    vq; for fsq it is ``len(levels)``.
    """

    type: str = "bsq"  # bsq | lfq | vq | fsq
    dim: int = 18
    group_size: int | None = None  # bsq/lfq entropy groups (1 = factorised)
    inv_temperature: float = 1.0
    gamma0: float = 1.0
    gamma: float = 1.0
    zeta: float = 1.0
    commitment_weight: float = 0.0  # bsq/lfq: beta; vq: commitment beta (0.25 typical)
    codebook_size: int = 16384  # vq
    ema: bool = True  # vq: EMA codebook updates (else learned with a codebook loss)
    decay: float = 0.99  # vq EMA decay
    dead_code_threshold: float = 1.0  # vq: codes whose EMA usage falls below this are restarted
    levels: list[int] | None = None  # fsq, e.g. [8, 8, 8, 5, 5, 5]

    def __post_init__(self):
        if self.type not in ("bsq", "lfq", "vq", "fsq"):
            raise ValueError(f"quantizer.type must be one of bsq, lfq, vq, fsq; got {self.type!r}")
        if self.type == "fsq":
            if not self.levels:
                raise ValueError("quantizer.levels is required for fsq")
            self.dim = len(self.levels)


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
    return FiniteScalarQuantizer(list(cfg.levels))


__all__ = [
    "Quantizer",
    "QuantizerOutput",
    "QuantizerConfig",
    "BinarySphericalQuantizer",
    "LookupFreeQuantizer",
    "VectorQuantizer",
    "FiniteScalarQuantizer",
    "build_quantizer",
    "bits_to_indices",
    "indices_to_bits",
]
