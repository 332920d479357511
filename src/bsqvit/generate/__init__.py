"""Generation over BSQ tokens: a masked token model (MaskGIT), its sampler, training and metrics.

* :mod:`.model` -- :class:`MaskedTokenModel` / :class:`GenConfig`, :func:`masked_token_loss`;
* :mod:`.sampling` -- :func:`sample_tokens` (cosine unmasking, guidance), :func:`fill_canvas`
  (inpainting / outpainting on any canvas);
* :mod:`.data` -- labels from file names and the token cache;
* :mod:`.train` -- ``bsqvit train-gen``; :mod:`.metrics` -- FID, IS, precision / recall;
* :mod:`.cli` -- ``train-gen``, ``generate``, ``eval-gen``.

See docs/GENERATION.md.
"""

from .model import GenConfig, MaskedTokenModel, masked_token_loss
from .sampling import fill_canvas, sample_tokens

__all__ = ["GenConfig", "MaskedTokenModel", "fill_canvas", "masked_token_loss", "sample_tokens"]
