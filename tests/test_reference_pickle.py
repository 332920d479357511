"""Reference checkpoints read as plain data: configs pickled by OmegaConf 2.3 and 2.4 (files made by
tests/data/reference/make_configs.py), with or without OmegaConf installed, and hostile pickles refused."""

from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bsqvit.models.io import ModelLoadError
from bsqvit.models.official import config_from_reference
from bsqvit.models.reference_pickle import load_reference_checkpoint, resolve_interpolations

DATA = Path(__file__).resolve().parent / "data" / "reference"
EXPECTED = json.loads((DATA / "config.json").read_text())


def _plain_expected():
    cfg = json.loads(json.dumps(EXPECTED))
    cfg["lr"] = cfg["model"]["params"]["beta"]  # "${model.params.beta}" resolved
    return cfg


@pytest.mark.parametrize("version", ["2.3", "2.4"])
def test_configs_of_both_omegaconf_versions_read_as_plain_data(version):
    ckpt = load_reference_checkpoint(DATA / f"config-omegaconf-{version}.pt")
    cfg = ckpt["config"]
    clamp = cfg["model"]["params"].pop("clamp_range")
    # 2.3 turns the tuple into a ListConfig, 2.4 keeps a TupleConfig: both read back as (-1, 1)
    assert list(clamp) == [-1, 1] and isinstance(clamp, tuple if version == "2.4" else list)
    assert cfg == _plain_expected()
    assert torch.equal(ckpt["state_dict"]["module.quantize.basis"], 2 ** torch.arange(17, -1, -1))
    cfg["model"]["params"]["clamp_range"] = clamp
    ours = config_from_reference(cfg)
    assert ours.quantizer.type == "bsq" and ours.head_dim == 256


def test_reading_never_imports_omegaconf():
    code = ("import sys; sys.modules['omegaconf'] = None\n"  # any import of it would raise
            "from bsqvit.models.reference_pickle import load_reference_checkpoint as l\n"
            f"c = l({str(DATA / 'config-omegaconf-2.4.pt')!r})['config']\n"
            "print(c['model']['params']['clamp_range'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(-1, 1)"


class _Gadget:
    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


@pytest.mark.parametrize("reduce", [
    (os.system, ("echo pwned",)),
    (eval, ("1 + 1",)),
    (operator.getitem, ({"secret": 1}, "secret")),  # getitem on anything but a type hint
    (operator.getitem, ((print, 1), 0)),  # a callable fetched from a container
], ids=["os.system", "builtins.eval", "getitem-dict", "getitem-tuple"])
def test_hostile_pickles_are_refused(tmp_path, reduce):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "config": _Gadget(reduce)}, path)
    with pytest.raises(ModelLoadError, match="cannot be read safely"):
        load_reference_checkpoint(path)


def test_unreadable_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_reference_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip at all")
    with pytest.raises(ModelLoadError, match="cannot be read safely"):
        load_reference_checkpoint(tmp_path / "junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ModelLoadError, match="top level is list"):
        load_reference_checkpoint(tmp_path / "list.pt")


def test_interpolations_resolve_only_absolute_whole_values():
    cfg = {"a": {"b": 2}, "c": "${a.b}", "d": "x${a.b}", "e": "${nope}", "f": "${c}"}
    assert resolve_interpolations(cfg) == {"a": {"b": 2}, "c": 2, "d": "x${a.b}", "e": "${nope}", "f": 2}
    with pytest.raises(ModelLoadError, match="deeper"):
        resolve_interpolations({"a": {"b": "${a}"}})
