"""One entry point for every tokenizer: build one from a config, load one from a directory.

``config.arch`` picks the class: ``vit`` -> :class:`BSQViT` (also configs written before ``arch``
existed), ``cnn`` -> :class:`BSQCNN`. Code that takes any tokenizer builds and loads through these.
"""

from __future__ import annotations

from ..config import from_dict
from ..nn.pretrained import ModelLoadError, load_pretrained, read_config, resolve_files
from .bsqvit import BSQViT
from .cnn import BSQCNN
from .config import BSQViTConfig
from .tokenizer import Tokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {"vit": BSQViT, "cnn": BSQCNN}


def tokenizer_class(arch: str) -> type[Tokenizer]:
    if arch not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer arch {arch!r}; known: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[arch]


def build_tokenizer(config: BSQViTConfig | dict, **overrides) -> Tokenizer:
    """A freshly initialised tokenizer of ``config.arch``."""
    if isinstance(config, dict):
        config = from_dict(BSQViTConfig, config)
    arch = overrides.get("arch", config.arch)
    return tokenizer_class(arch)(config, **overrides)


def load_tokenizer(model_id, map_location="cpu", strict: bool = True, **hub_kwargs) -> Tokenizer:
    """A saved tokenizer (directory with ``config.json`` + ``model.safetensors``, or a Hub id) as
    the class its config's ``arch`` names, in eval mode."""
    cfg_path, _ = resolve_files(model_id, **hub_kwargs)
    arch = read_config(cfg_path).get("arch", "vit")
    if arch not in TOKENIZERS:
        raise ModelLoadError(f"{cfg_path}: unknown tokenizer arch {arch!r} (known: {', '.join(TOKENIZERS)})")
    return load_pretrained(TOKENIZERS[arch], model_id, map_location=map_location, strict=strict, **hub_kwargs)
