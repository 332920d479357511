"""Starting a prior from a trained one: the image prior is where a video prior of the same
tokenizer family begins (``init_from`` in a ``train-prior`` config)."""

from __future__ import annotations

import torch

from ..config import ConfigError
from ..nn.pretrained import ModelLoadError, load_state_dict_checked
from .prior import TokenPrior

__all__ = ["warm_start"]

_SAME_ARCH = ("kind", "bits", "group_bits", "width", "layers", "heads", "mlp_ratio", "tile", "rates")


def warm_start(prior: TokenPrior, source) -> list[str]:
    """Copy the weights of the prior saved in ``source`` into ``prior`` -> the names it did not have.

    The two must have the same architecture (kind, bits, groups, width, depth, tile, rates); only
    the video conditioning may be new. A new previous-frame convolution starts at zero, so the
    warm-started video prior predicts exactly what the source prior does and learns from there
    how much to take from the previous frame."""
    try:
        src = TokenPrior.from_pretrained(str(source))
    except (OSError, ValueError, ModelLoadError) as e:
        raise ConfigError(f"init_from: {source}: {e}") from None
    diff = [k for k in _SAME_ARCH if getattr(src.config, k) != getattr(prior.config, k)]
    if diff or (src.config.video and not prior.config.video):
        raise ConfigError(f"init_from: {source} is another architecture ({', '.join(diff) or 'video'} differ)")
    state = src.state_dict()
    new = sorted(set(prior.state_dict()) - set(state))
    load_state_dict_checked(prior, state, strict=False, source=str(source))
    if prior.config.video and not src.config.video:
        torch.nn.init.zeros_(prior.prev_conv.weight)
        torch.nn.init.zeros_(prior.prev_conv.bias)
    return new
