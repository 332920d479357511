"""Building blocks shared by every bsqvit model: the pretrained-module base and its file format."""

from .pretrained import ModelLoadError, PretrainedModule, load_pretrained, weights_hash

__all__ = ["ModelLoadError", "PretrainedModule", "load_pretrained", "weights_hash"]
