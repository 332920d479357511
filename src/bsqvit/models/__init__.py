from .bsqvit import BSQViT, BSQViTConfig, BSQViTOutput
from .build import build_tokenizer, load_tokenizer, tokenizer_class
from .cnn import BSQCNN
from .io import ModelLoadError
from .presets import get_preset, preset_names
from .tokenizer import COMPILE_MODES, Tokenizer, TokenizerOutput

__all__ = ["COMPILE_MODES", "BSQCNN", "BSQViT", "BSQViTConfig", "BSQViTOutput", "ModelLoadError", "Tokenizer", "TokenizerOutput",
           "build_tokenizer", "get_preset", "load_tokenizer", "preset_names", "tokenizer_class"]
