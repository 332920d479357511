"""Optional dependencies: each is imported where it is needed, and a missing one is a one-line
error that names the pip extra to install (``pip install 'bsqvit[eval]'``), never a traceback.

The base install (no extras) tokenizes, reconstructs, compresses, decompresses and generates
with the embedded models; the extras add what evaluation and training reports need.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# module -> (distribution, extra)
OPTIONAL = {
    "scipy": ("scipy", "eval"),
    "bjontegaard": ("bjontegaard", "eval"),
    "matplotlib": ("matplotlib", "eval"),
    "pytorch_msssim": ("pytorch-msssim", "eval"),
    "torch.utils.tensorboard": ("tensorboard", "train"),
    "omegaconf": ("omegaconf", "official"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "flask": ("flask", "serve"),
    "werkzeug": ("flask", "serve"),  # comes with flask
}


class MissingDependency(ImportError):
    """An optional dependency is not installed (the message says which extra brings it)."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (a key of :data:`OPTIONAL`, or a submodule of one) for ``purpose``."""
    root = next((k for k in OPTIONAL if module == k or module.startswith(k + ".")), None)
    if root is None:
        raise KeyError(f"{module} is not a declared optional dependency")
    try:
        return importlib.import_module(module)
    except ImportError:
        dist, extra = OPTIONAL[root]
        raise MissingDependency(f"{purpose} needs {dist}, which is not installed "
                                f"(pip install '{dist}' or 'bsqvit[{extra}]')") from None


def available(module: str) -> bool:
    """Whether an optional dependency can be imported (for fallbacks that do not need it)."""
    try:
        require(module, "")
    except MissingDependency:
        return False
    return True


__all__ = ["OPTIONAL", "MissingDependency", "require", "available"]
