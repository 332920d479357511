"""Our weight format: a directory with ``config.json`` and ``model.safetensors``.

The code lives in :mod:`bsqvit.nn.pretrained` (with the :class:`~bsqvit.nn.PretrainedModule`
base every model inherits); this module keeps the old import path working.
"""

from __future__ import annotations

from ..nn.pretrained import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ModelLoadError,
    load_pretrained,
    load_state_dict_checked,
    read_config,
    resolve_files,
    weights_hash,
)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "ModelLoadError",
    "load_pretrained",
    "load_state_dict_checked",
    "read_config",
    "resolve_files",
    "weights_hash",
]
