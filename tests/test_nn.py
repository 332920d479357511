"""The pretrained-module base: save/load round trip, weights_hash, strict loading."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from bsqvit.config import ConfigError
from bsqvit.nn import ModelLoadError, PretrainedModule


@dataclass
class TinyConfig:
    width: int = 4
    depth: int = 1
    checkpointing: bool = False


class Tiny(PretrainedModule, tags=["test-tiny"]):
    config_class = TinyConfig
    _HASH_IGNORED = ("checkpointing",)

    def __init__(self, config: TinyConfig | dict | None = None, **overrides):
        super().__init__(config, **overrides)
        self.layers = nn.ModuleList(nn.Linear(self.config.width, self.config.width) for _ in range(self.config.depth))


def test_round_trip_through_a_directory(tmp_path):
    torch.manual_seed(0)
    m = Tiny(width=6, depth=2)
    m.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == {"width": 6, "depth": 2, "checkpointing": False}
    back = Tiny.from_pretrained(tmp_path / "m")
    assert isinstance(back, Tiny) and not back.training
    assert back.config == m.config
    for (ka, a), (kb, b) in zip(m.state_dict().items(), back.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    assert back.weights_hash() == m.weights_hash()
    assert back.num_parameters() == m.num_parameters() == 2 * (6 * 6 + 6)


def test_subclass_metadata_reaches_the_hub_mixin():
    card = Tiny._hub_mixin_info.model_card_data
    assert card.library_name == "bsqvit"
    assert "test-tiny" in card.tags and "pytorch_model_hub_mixin" in card.tags
    assert "test-tiny" not in PretrainedModule._hub_mixin_info.model_card_data.tags


def test_weights_hash_is_stable_and_follows_the_weights():
    torch.manual_seed(0)
    m = Tiny()
    h = m.weights_hash()
    assert h == m.weights_hash() and len(h) == 64
    torch.manual_seed(0)
    assert Tiny(checkpointing=True).weights_hash() == h  # an ignored field does not count
    before = m.layers[0].weight.detach().clone()
    with torch.no_grad():
        m.layers[0].weight.add_(1.0)  # an in-place update invalidates the cached hash
    assert m.weights_hash() != h
    with torch.no_grad():
        m.layers[0].weight.copy_(before)
    assert m.weights_hash() == h


def test_unknown_config_key_is_an_error(tmp_path):
    Tiny().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "bogus": 1}))
    with pytest.raises(ConfigError, match="bogus"):
        Tiny.from_pretrained(tmp_path)


def test_missing_tensor_or_file_is_a_model_load_error(tmp_path):
    Tiny().save_pretrained(tmp_path)
    w = tmp_path / "model.safetensors"
    state = load_file(str(w))
    state.pop("layers.0.bias")
    save_file(state, str(w))
    with pytest.raises(ModelLoadError, match="layers.0.bias"):
        Tiny.from_pretrained(tmp_path)
    w.unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        Tiny.from_pretrained(tmp_path)
    with pytest.raises(ModelLoadError):
        Tiny.from_pretrained(tmp_path / "nowhere")


def test_old_import_path_still_works():
    from bsqvit.models import io
    from bsqvit.nn import pretrained

    assert io.ModelLoadError is pretrained.ModelLoadError
    assert io.load_pretrained is pretrained.load_pretrained and io.weights_hash is pretrained.weights_hash
