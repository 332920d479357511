"""ONNX export (``bsqvit export --format onnx``): onnxruntime against PyTorch -- indices equal,
pixels within 1/255 -- at several sizes with one exported model; metadata; the CLI's error paths."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="ONNX export needs the 'export' extra (onnx)")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need the 'export' extra (onnxruntime)")

from bsqvit import pretrained
from bsqvit.cli import main
from bsqvit.export import export_onnx
from bsqvit.io import InputError, to_uint8
from bsqvit.models import BSQViT

TOKENIZER = Path(__file__).parent / "data" / "codec" / "tokenizer"  # patch 4, training size 8x8


def sessions(out: Path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return (ort.InferenceSession(str(out / "encoder.onnx"), opts), ort.InferenceSession(str(out / "decoder.onnx"), opts))


def images(B: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def compare(model, enc, dec, x: torch.Tensor) -> tuple[np.ndarray, float]:
    """Run both runtimes on ``x``; assert equal indices and pixels within 1/255; return
    (indices, max abs pixel difference in [-1, 1] units)."""
    H, W = x.shape[-2:]
    with torch.no_grad():
        idx = model.encode(x)
        rec = model.decode(idx, size=(H, W))
    (idx_ort,) = enc.run(None, {"images": x.numpy()})
    assert idx_ort.dtype == np.int64 and idx_ort.shape == tuple(idx.shape)
    np.testing.assert_array_equal(idx_ort, idx.numpy())
    (rec_ort,) = dec.run(None, {"indices": idx.numpy(), "size": np.array([H, W], dtype=np.int64)})
    assert rec_ort.dtype == np.float32 and rec_ort.shape == tuple(rec.shape)
    diff = float(np.abs(rec_ort - rec.numpy()).max())
    assert diff <= 2 / 255
    for a, b in zip(rec_ort, rec):
        assert np.abs(to_uint8(torch.from_numpy(a)).astype(int) - to_uint8(b).astype(int)).max() <= 1
    return idx_ort, diff


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = BSQViT.from_pretrained(str(TOKENIZER)).eval()
    out = tmp_path_factory.mktemp("onnx") / "tok"
    meta = export_onnx(model, out)
    return model, out, meta


# ---- onnxruntime == PyTorch ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 37, 51), (1, 5, 3), (3, 16, 12)])
def test_onnxruntime_matches_pytorch_at_any_size(exported, shape):
    """One export, many sizes: the training size, sizes not a multiple of the patch (4), smaller
    than one patch, another grid; batch 1..3."""
    model, out, _ = exported
    enc, dec = sessions(out)
    idx, _ = compare(model, enc, dec, images(*shape, seed=sum(shape)))
    p = model.patch_size
    assert idx.shape == (shape[0], -(-shape[1] // p), -(-shape[2] // p))
    assert idx.min() >= 0 and idx.max() < 2**model.quantizer.dim


def test_decoder_on_any_indices_and_crop(exported):
    """The decoder takes indices it did not produce, and crops to any size up to the grid."""
    model, out, _ = exported
    _, dec = sessions(out)
    idx = torch.randint(0, 2**model.quantizer.dim, (2, 3, 5), generator=torch.Generator().manual_seed(1))
    for H, W in [(12, 20), (9, 17), (1, 1)]:
        with torch.no_grad():
            ref = model.decode(idx, size=(H, W)).numpy()
        (got,) = dec.run(None, {"indices": idx.numpy(), "size": np.array([H, W])})
        assert got.shape == (2, 3, H, W)
        assert np.abs(got - ref).max() <= 2 / 255


@pytest.mark.parametrize("pad_mode, mask_type", [("reflect", "none"), ("constant", "causal")])
def test_padding_modes_and_causal_mask(tmp_path, pad_mode, mask_type):
    """Reflect padding (with its fallback to replicate when a pad is not smaller than the side,
    3x5 at patch 8), zero padding, and a causal mask inside the frame."""
    torch.manual_seed(0)
    model = BSQViT.from_preset("tiny", pad_mode=pad_mode, mask_type=mask_type).eval()
    export_onnx(model, tmp_path / "m", image_size=(24, 40))
    enc, dec = sessions(tmp_path / "m")
    for shape in [(1, 3, 5), (1, 9, 7), (2, 33, 40)]:
        compare(model, enc, dec, images(*shape))


@pytest.mark.skipif(not pretrained.available("tokenizer"), reason="no embedded default tokenizer installed")
def test_embedded_model(tmp_path):
    model = BSQViT.from_pretrained(str(pretrained.default_model_dir())).eval()
    export_onnx(model, tmp_path / "m")
    enc, dec = sessions(tmp_path / "m")
    compare(model, enc, dec, images(1, 70, 90))


# ---- the files -------------------------------------------------------------------------------------
def test_graphs_have_dynamic_axes_and_metadata(exported):
    model, out, meta = exported
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx", "export.json"]
    assert json.loads((out / "export.json").read_text()) == meta
    assert meta["model_hash"] == model.weights_hash()
    assert (meta["bits"], meta["patch_size"], meta["opset"]) == (18, 4, 17)
    for name, ins, outs in [("encoder", ["images"], ["indices"]), ("decoder", ["indices", "size"], ["images"])]:
        g = onnx.load(str(out / f"{name}.onnx"))
        assert [i.name for i in g.graph.input] == ins and [o.name for o in g.graph.output] == outs
        assert list(meta[name]["inputs"]) == ins and list(meta[name]["outputs"]) == outs
        assert max(o.version for o in g.opset_import if o.domain in ("", "ai.onnx")) == 17
        dims = g.graph.input[0].type.tensor_type.shape.dim
        symbolic = [d.dim_param for d in dims if d.dim_param]
        assert len(symbolic) == 3, dims  # (batch, height, width) / (batch, h, w)


def test_video_models_are_refused(tmp_path):
    model = BSQViT.from_preset("tiny", num_frames=2, mask_type="block-causal")
    with pytest.raises(InputError, match="video tokenizer"):
        export_onnx(model, tmp_path / "v")
    assert not (tmp_path / "v").exists()


# ---- the command line ------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err):
    lines = err.strip().splitlines()
    return rc == 2 and len(lines) == 1 and lines[0].startswith("bsqvit: error: ") and "Traceback" not in err


def test_cli_export_and_no_overwrite_without_force(tmp_path, capsys, exported):
    model = exported[0]
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "export", "--format", "onnx", "--model", TOKENIZER, out)
    assert rc == 0, err
    assert "encoder.onnx" in stdout and "opset 17" in stdout
    assert json.loads((out / "export.json").read_text())["model_hash"] == model.weights_hash()
    enc, dec = sessions(out)
    compare(model, enc, dec, images(2, 10, 6))

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc, _, err = run_cli(capsys, "export", "--format", "onnx", "--model", TOKENIZER, out)
    assert one_line_error(rc, err) and "--force" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    (out / "stale.txt").write_text("old")
    rc, _, err = run_cli(capsys, "export", "--format", "onnx", "--model", TOKENIZER, out, "--force", "--opset", "18")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx", "export.json"]
    assert json.loads((out / "export.json").read_text())["opset"] == 18
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left behind


@pytest.mark.parametrize("argv, words", [
    (["--format", "tflite"], "--format"),
    (["--format", "onnx", "--opset", "9"], "--opset"),
    (["--format", "onnx", "--model", "no/such/model"], "no/such/model"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, argv, words):
    rc, _, err = run_cli(capsys, "export", *argv, tmp_path / "out")
    assert one_line_error(rc, err) and words in err, err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_files_and_the_model_directory(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = run_cli(capsys, "export", "--format", "onnx", "--model", TOKENIZER, f, "--force")
    assert one_line_error(rc, err) and f.read_text() == "x"
    rc, _, err = run_cli(capsys, "export", "--format", "onnx", "--model", TOKENIZER, TOKENIZER, "--force")
    assert one_line_error(rc, err) and "refusing to write into" in err
    assert (TOKENIZER / "model.safetensors").is_file()
    rc, _, err = run_cli(capsys, "export", "--format", "onnx", tmp_path / "missing" / "out")
    assert one_line_error(rc, err) and "does not exist" in err


def test_cli_missing_extra_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    rc, _, err = run_cli(capsys, "export", "--format", "onnx", "--model", TOKENIZER, tmp_path / "out")
    assert one_line_error(rc, err) and "bsqvit[export]" in err
    assert not (tmp_path / "out").exists()
