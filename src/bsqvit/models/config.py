"""The architecture of a BSQ-ViT tokenizer as a typed config (what ``config.json`` holds)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..quantizers import QuantizerConfig
from .transformer import MASK_TYPES


@dataclass
class BSQViTConfig:
    """Architecture of a BSQ-ViT tokenizer.

    ``image_size`` is the training resolution (the grid of the learned spatial embeddings);
    other sizes work through interpolated embeddings. ``num_frames`` is the maximum T for video
    (learned temporal embeddings); 1 builds an image-only model. ``mask_block_size`` is in frames.
    """

    image_size: list[int] = field(default_factory=lambda: [128, 128])
    patch_size: int = 8
    num_frames: int = 1
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    decoder_width: int | None = None  # default: width
    decoder_layers: int | None = None  # default: layers
    decoder_heads: int | None = None  # default: heads
    head_dim: int | None = None  # hidden width of the Linear-Tanh-Linear head; default 4 * decoder width
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    mask_type: str = "none"  # none | full | block-causal | causal (temporal attention)
    mask_block_size: int = 1  # frames per causal block
    pad_mode: str = "replicate"  # how inputs are padded to a multiple of the patch size
    grad_checkpointing: bool = False

    def __post_init__(self):
        if isinstance(self.image_size, int):
            self.image_size = [self.image_size, self.image_size]
        self.image_size = list(self.image_size)
        if len(self.image_size) != 2:
            raise ValueError(f"image_size must be one int or [H, W], got {self.image_size}")
        if self.patch_size < 1 or any(s % self.patch_size for s in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {self.mask_type!r}")
        if self.pad_mode not in ("replicate", "reflect", "constant"):
            raise ValueError(f"pad_mode must be replicate, reflect or constant, got {self.pad_mode!r}")
        if self.num_frames < 1:
            raise ValueError("num_frames must be >= 1")

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def dec_width(self) -> int:
        return self.decoder_width or self.width
