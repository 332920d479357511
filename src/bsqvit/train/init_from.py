"""``init_from``: start a tokenizer's training from another model's weights."""

from __future__ import annotations

import torch

from ..models import Tokenizer, build_tokenizer, load_tokenizer
from ..models.config import BSQViTConfig


def adapt_init(init_from: str, config: BSQViTConfig) -> Tokenizer:
    """Fine-tune from a pretrained model: image -> video (temporal embeddings start at 0), or a
    wider bottleneck (L -> L' > L bits, e.g. to train nested bits from a fixed-L model): the
    first L channels of the bottleneck layers (ViT: ``quant_embed`` / ``post_quant_embed``; CNN:
    ``encoder.conv_out`` / ``decoder.conv_in``) are copied, the new encoder rows keep their
    initialisation and the new decoder columns start at 0. Both models must have the same arch."""
    base = load_tokenizer(init_from)
    model = build_tokenizer(config)
    own = model.state_dict()
    state = {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}
    for k, v in base.state_dict().items():
        side = next((cols for prefix, cols in _BOTTLENECK.items() if k.startswith(prefix)), None)
        if k in own and k not in state and side is not None and v.ndim == own[k].ndim:
            state[k] = _widen(own[k], v, side)
    missing = [k for k in own if k not in state]
    bad = [k for k in missing if "temporal_embed" not in k]
    if bad:
        raise ValueError(f"init_from {init_from}: incompatible with the model config ({bad[:3]})")
    model.load_state_dict(state, strict=False)
    return model


# the layers next to the quantizer -> whether L is their input (columns) or output (rows) axis
_BOTTLENECK = {"quant_embed.": False, "post_quant_embed.": True, "encoder.conv_out.": False, "decoder.conv_in.": True}


def _widen(own: torch.Tensor, old: torch.Tensor, columns: bool) -> torch.Tensor:
    """``old`` copied into the leading rows (or columns) of ``own``; the decoder's new columns are 0."""
    out = own.clone()
    if columns:
        if old.shape[0] != own.shape[0] or old.shape[1] > own.shape[1]:
            raise ValueError(f"cannot widen {tuple(old.shape)} to {tuple(own.shape)}")
        out[:, old.shape[1]:] = 0
        out[:, : old.shape[1]] = old
    else:
        if old.shape[1:] != own.shape[1:] or old.shape[0] > own.shape[0]:
            raise ValueError(f"cannot widen {tuple(old.shape)} to {tuple(own.shape)}")
        out[: old.shape[0]] = old
    return out
