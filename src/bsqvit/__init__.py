"""bsqvit: BSQ-ViT image/video tokenizer with Binary Spherical Quantization, and what is built on its tokens."""

from .models import BSQCNN, BSQViT, BSQViTConfig, ModelLoadError, Tokenizer, build_tokenizer, get_preset, load_tokenizer, preset_names
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
    "BSQCNN",
    "BSQViTConfig",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
    "ModelLoadError",
    "get_preset",
    "preset_names",
    "BinarySphericalQuantizer",
    "LookupFreeQuantizer",
    "VectorQuantizer",
    "FiniteScalarQuantizer",
    "QuantizerConfig",
]
