from .bsqvit import BSQViT, BSQViTConfig, BSQViTOutput
from .io import ModelLoadError
from .presets import get_preset, preset_names

__all__ = ["BSQViT", "BSQViTConfig", "BSQViTOutput", "ModelLoadError", "get_preset", "preset_names"]
