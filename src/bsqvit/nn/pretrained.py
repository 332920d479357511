"""Our weight format and the base class of every model that uses it.

A saved model is a directory with ``config.json`` and ``model.safetensors``.
``Model.save_pretrained(dir)`` (from ``PyTorchModelHubMixin``) writes it;
``Model.from_pretrained(dir_or_hub_id)`` reads it, offline from a directory, or through
``huggingface_hub`` from the Hub when a repo id is given and the network is reachable.

:class:`PretrainedModule` gathers what the tokenizer, the token prior and the generator share:
strict loading, ``weights_hash()``, ``num_parameters()`` and the config the Hub mixin saves.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from safetensors.torch import load_file

from ..config import resolve_config, to_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ModelLoadError(RuntimeError):
    """A model directory or checkpoint is missing, incomplete or does not match its config."""


def weights_hash(module: torch.nn.Module, config: dict) -> str:
    """SHA-256 over ``config`` (JSON) and every tensor: identifies exact weights.

    Cached on the module against the parameters' version counters, so it is recomputed after
    any in-place update (optimizer step, ``load_state_dict``) and free otherwise.
    """
    versions = tuple(p._version for p in module.parameters())
    cached = getattr(module, "_weights_hash_cache", None)
    if cached is not None and cached[0] == versions:
        return cached[1]
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest = h.hexdigest()
    module._weights_hash_cache = (versions, digest)
    return digest


def resolve_files(model_id: str | Path, **hub_kwargs) -> tuple[Path, Path]:
    """Paths of (config.json, model.safetensors) for a local directory or a Hub repo id."""
    p = Path(model_id)
    if p.is_dir():
        cfg, w = p / CONFIG_NAME, p / WEIGHTS_NAME
        for f in (cfg, w):
            if not f.is_file():
                raise ModelLoadError(f"model directory {p} has no {f.name}")
        return cfg, w
    local_looking = str(model_id).startswith((".", "/", "~")) or p.parent.is_dir() and str(p.parent) != "."
    if p.exists() or local_looking or str(model_id).count("/") != 1:
        raise ModelLoadError(f"model not found: {model_id} (expected a directory with {CONFIG_NAME} and {WEIGHTS_NAME})")
    from huggingface_hub import hf_hub_download  # only when a Hub id is given

    kw = {k: v for k, v in hub_kwargs.items() if v is not None}
    try:
        cfg = hf_hub_download(str(model_id), CONFIG_NAME, **kw)
        w = hf_hub_download(str(model_id), WEIGHTS_NAME, **kw)
    except Exception as e:  # offline, missing repo, ...
        raise ModelLoadError(f"could not fetch {model_id} from the Hub: {type(e).__name__}") from None
    return Path(cfg), Path(w)


def read_config(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: unreadable config ({e})") from None


def load_state_dict_checked(model: torch.nn.Module, state: dict, strict: bool = True, source: str = "") -> None:
    own = model.state_dict()
    if strict:
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ModelLoadError(
                f"{source}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise ModelLoadError(f"{source}: {k} has shape {tuple(v.shape)}, config expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=strict)


def load_pretrained(cls, model_id, map_location="cpu", strict=True, **hub_kwargs):
    cfg_path, w_path = resolve_files(model_id, **hub_kwargs)
    config = read_config(cfg_path)
    model = cls(config)
    try:
        state = load_file(str(w_path), device=str(map_location) if map_location is not None else "cpu")
    except Exception as e:
        raise ModelLoadError(f"{w_path}: unreadable weights ({type(e).__name__}: {e})") from None
    load_state_dict_checked(model, state, strict=strict, source=str(w_path))
    model.eval()
    return model


class PretrainedModule(nn.Module, PyTorchModelHubMixin, library_name="bsqvit"):
    """A module built from one config dataclass and saved as ``config.json`` + ``model.safetensors``.

    Subclasses set ``config_class`` and start ``__init__`` with
    ``super().__init__(config, **overrides)``, which parses the config strictly into
    ``self.config``. Model-card metadata goes in the class statement, as with the Hub mixin
    (``class M(PretrainedModule, tags=[...])``); ``library_name`` is ``bsqvit`` unless given.
    """

    config_class: ClassVar[type]
    # config fields that do not change what the weights compute (left out of weights_hash)
    _HASH_IGNORED: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any = None, **overrides):
        super().__init__()
        self.config = resolve_config(self.config_class, config, **overrides)
        self._hub_mixin_config = self.config_dict()  # what save_pretrained writes as config.json

    def config_dict(self) -> dict:
        """The config as ``config.json`` holds it (and as ``weights_hash`` reads it)."""
        return to_dict(self.config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, map_location="cpu", strict: bool = True,
                        **hub_kwargs):
        """Load ``config.json`` + ``model.safetensors`` from a directory (offline) or a Hub repo id.

        Replaces the mixin's loader: the config is parsed strictly (unknown keys are errors) and
        missing or mismatched tensors raise :class:`ModelLoadError`.
        """
        return load_pretrained(cls, pretrained_model_name_or_path, map_location=map_location, strict=strict,
                               **hub_kwargs)

    def weights_hash(self) -> str:
        """SHA-256 over the config and the tensors: identifies the exact weights.

        Computed once and cached against the parameters' versions, so it is recomputed after
        any update. Config fields named in ``_HASH_IGNORED`` do not count.
        """
        config = {k: v for k, v in self.config_dict().items() if k not in self._HASH_IGNORED}
        return weights_hash(self, config)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def generate_model_card(self, *args, metrics: dict | None = None, recipe: str | None = None,
                            description: str | None = None, **kwargs) -> ModelCard:
        """The ``README.md`` that ``save_pretrained`` and ``push_to_hub`` write: what the model is,
        how to load it, its weights hash, size and config, and (``model_card_kwargs``) its
        ``metrics`` (name -> value), training ``recipe`` (e.g. the config YAML) and ``description``."""
        name = type(self).__name__
        doc = (type(self).__doc__ or "").strip().splitlines()
        lines = [f"# {name}", "", description or (doc[0] if doc else name), "",
                 "Made with bsqvit (`pip install bsqvit`):", "", "```python",
                 f"from {type(self).__module__} import {name}", "", f'model = {name}.from_pretrained("<repo id or folder>")',
                 "```", "", "| | |", "|---|---|", f"| weights hash (SHA-256 of config and tensors) | `{self.weights_hash()}` |",
                 f"| parameters | {self.num_parameters():,} |"]
        lines += [f"| {k} | {v} |" for k, v in (metrics or {}).items()]
        lines += ["", "## Config", "", "```json", json.dumps(self.config_dict(), indent=2, sort_keys=True), "```"]
        if recipe:
            lines += ["", "## Training recipe", "", "```yaml", recipe.strip(), "```"]
        data = self._hub_mixin_info.model_card_data
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")

    @property
    def device(self) -> torch.device:
        """Where the weights are (the device inputs must be moved to)."""
        return next(self.parameters()).device
