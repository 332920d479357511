"""bsqvit: BSQ-ViT image/video tokenizer with Binary Spherical Quantization, and what is built on its tokens."""

from .models import BSQViT, BSQViTConfig, ModelLoadError, get_preset, preset_names
from .quantizers import (
    BinarySphericalQuantizer,
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    QuantizerConfig,
    VectorQuantizer,
)

from .version import __version__

__all__ = [
    "BSQViT",
    "BSQViTConfig",
    "ModelLoadError",
    "get_preset",
    "preset_names",
    "BinarySphericalQuantizer",
    "LookupFreeQuantizer",
    "VectorQuantizer",
    "FiniteScalarQuantizer",
    "QuantizerConfig",
]
