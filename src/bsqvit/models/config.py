"""The architecture of a tokenizer as a typed config (what ``config.json`` holds).

One config class for both tokenizers: ``arch: vit`` (:class:`~bsqvit.models.BSQViT`, the default,
so config files written before ``arch`` existed load as before) and ``arch: cnn``
(:class:`~bsqvit.models.BSQCNN`, fields ``cnn_*``). Fields of the other architecture are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..config import ConfigError, to_dict
from ..quantizers import QuantizerConfig
from .transformer import MASK_TYPES

ARCHS = ("vit", "cnn")


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
    # ---- arch: vit (BSQViT) | cnn (BSQCNN); the cnn_* fields are read by cnn only -------------
    arch: str = "vit"
    cnn_channels: int = 128  # channels of the first stage
    cnn_channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])  # per stage; 2x down between stages
    cnn_res_blocks: int = 2  # ResBlocks per stage (and in the middle)
    cnn_norm_groups: int = 32  # GroupNorm groups (gcd with the channels when they do not divide)

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
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.arch == "cnn":
            self._check_cnn()
        elif any(getattr(self, k) != v for k, v in CNN_DEFAULTS.items()):
            changed = sorted(k for k, v in CNN_DEFAULTS.items() if getattr(self, k) != v)
            raise ConfigError(f"{', '.join(changed)}: cnn_* fields need arch: cnn (this config is arch vit)")

    def _check_cnn(self) -> None:
        mult = self.cnn_channel_mult
        if not mult or any(m < 1 for m in mult):
            raise ConfigError(f"cnn_channel_mult must be a non-empty list of ints >= 1, got {mult}")
        if self.cnn_channels < 1 or self.cnn_res_blocks < 1 or self.cnn_norm_groups < 1:
            raise ConfigError("cnn_channels, cnn_res_blocks and cnn_norm_groups must be >= 1")
        if self.patch_size != 2 ** (len(mult) - 1):
            raise ConfigError(f"arch cnn: patch_size {self.patch_size} must equal the downsampling "
                              f"2**(len(cnn_channel_mult)-1) = {2 ** (len(mult) - 1)} (cnn_channel_mult {mult})")
        if self.num_frames != 1:
            raise ConfigError(f"arch cnn: num_frames must be 1 (2-D convolutions; videos are coded frame by frame), "
                              f"got {self.num_frames}")

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def dec_width(self) -> int:
        return self.decoder_width or self.width


CNN_DEFAULTS = {f.name: f.default_factory() if callable(f.default_factory) else f.default
                for f in fields(BSQViTConfig) if f.name.startswith("cnn_")}
# fields that do not change what a CNN's weights compute
VIT_ONLY = ("width", "layers", "heads", "mlp_ratio", "decoder_width", "decoder_layers", "decoder_heads",
            "head_dim", "mask_type", "mask_block_size", "grad_checkpointing")


def config_dict(cfg: BSQViTConfig) -> dict:
    """``cfg`` as saved in ``config.json`` and hashed by ``weights_hash``, without the fields
    added after models were shipped while they hold their defaults: ``arch`` and ``cnn_*`` of an
    arch vit config, ``quantizer.nested_bits`` when null. A model that does not use them is
    described byte for byte as before they existed: its weights hash (which the embedded prior,
    generator and .bsq files record) is unchanged, and older versions still read its config."""
    d = to_dict(cfg)
    if cfg.arch == "vit":
        d = {k: v for k, v in d.items() if k != "arch" and k not in CNN_DEFAULTS}
    if d["quantizer"].get("nested_bits", 0) is None:
        d["quantizer"] = {k: v for k, v in d["quantizer"].items() if k != "nested_bits"}
    return d
