"""Building blocks shared by every bsqvit model: the transformer block and the pretrained-module base."""

from .pretrained import ModelLoadError, PretrainedModule, load_pretrained, weights_hash
from .transformer import Attention, Block, init_gpt, use_flat_block_names

__all__ = ["Attention", "Block", "ModelLoadError", "init_gpt", "PretrainedModule", "load_pretrained", "use_flat_block_names", "weights_hash"]
