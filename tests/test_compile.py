"""Inference with torch.compile (issue #13 item 3): ``Tokenizer.compile_inference`` and
``--compile`` give the eager model's tokens, keep its parameter names and weights hash, and fail
with one line where they cannot run. CUDA graphs ("reduce-overhead") are checked where CUDA is."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from bsqvit import BSQViT
from bsqvit.cli import main
from bsqvit.models import COMPILE_MODES, BSQCNN, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
needs_cxx = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                               reason="torch.compile on the CPU needs a C++ compiler")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CNN_TINY = dict(image_size=[32, 32], patch_size=4, cnn_channels=8, cnn_channel_mult=[1, 2, 2], cnn_res_blocks=1,
                cnn_norm_groups=4, arch="cnn", quantizer=dict(type="bsq", dim=8, group_size=1))


def _models():
    torch.manual_seed(0)
    return [BSQViT.from_preset("tiny"), BSQCNN(CNN_TINY)]


def _check_same_as_eager(model, device: str, mode: str, shapes) -> None:
    eager = type(model)(model.config).to(device).eval()
    eager.load_state_dict(model.state_dict())
    keys, h = list(model.state_dict()), model.weights_hash()
    model = model.to(device).compile_inference(mode)
    g = torch.Generator().manual_seed(1)
    for shape in shapes:  # a second size recompiles (shape-generic)
        x = (torch.rand(shape, generator=g) * 2 - 1).to(device)
        idx = model.encode(x)
        ref = eager.encode(x)
        # exact ties aside (none in random data), the compiled graph keeps every sign
        assert torch.equal(idx, ref)
        rec, rec_ref = model.decode(idx, size=x.shape[-2:]), eager.decode(ref, size=x.shape[-2:])
        assert rec.shape == x.shape and (rec - rec_ref).abs().max().item() < 1e-4
    assert list(model.state_dict()) == keys and model.weights_hash() == h


@needs_cxx
def test_compile_inference_matches_eager_and_keeps_the_weights(tmp_path):
    for model in _models():
        _check_same_as_eager(model, "cpu", "default", [(2, 3, 32, 32), (1, 3, 40, 24)])
        model.save_pretrained(tmp_path / model.arch)  # the names of an eager model: loads anywhere
        assert load_tokenizer(str(tmp_path / model.arch)).weights_hash() == model.weights_hash()


def test_compile_inference_refuses_unknown_modes():
    with pytest.raises(ValueError, match="compile mode"):
        BSQViT.from_preset("tiny").compile_inference("fastest")
    assert "reduce-overhead" in COMPILE_MODES


@needs_cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_inference_cuda(mode):
    """On CUDA, "reduce-overhead" replays CUDA graphs; repeated calls must not reuse a stale output."""
    model = _models()[0]
    _check_same_as_eager(model, "cuda", mode, [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 48, 32)])


@needs_cxx
def test_cli_compile_gives_the_eager_tokens(tmp_path, capsys):
    torch.manual_seed(0)
    BSQViT.from_preset("tiny").save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    for name, extra in (("eager", []), ("compiled", ["--compile", "default"])):
        rc = main(["tokenize", str(tmp_path / "a.png"), str(tmp_path / f"{name}.npz"), "--model", str(tmp_path / "m"),
                   "--device", "cpu", *extra])
        assert rc == 0, capsys.readouterr().err
    assert np.array_equal(np.load(tmp_path / "eager.npz")["indices"], np.load(tmp_path / "compiled.npz")["indices"])
    rc = main(["bench", "--preset", "tiny", "--device", "cpu", "--compile", "default", "--repeats", "1",
               "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "torch.compile default" in out
    assert '"compile": "default"' in (tmp_path / "b.json").read_text()


def test_cli_compile_without_a_compiler_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    rc = main(["bench", "--preset", "tiny", "--device", "cpu", "--compile", "default"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "C++ compiler" in err
    rc = main(["tokenize", str(tmp_path / "missing.png"), str(tmp_path / "t.npz"), "--compile", "fastest"])
    assert rc == 2 and "--compile" in capsys.readouterr().err
