"""The bsqvit command line: reconstruct / tokenize / detokenize end to end, error policy, entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bsqvit import BSQViT
from bsqvit.cli import main
from bsqvit.io import read_video, to_uint8
from shared_data import KODIM01 as KODAK
from shared_data import RAW_H264, leftovers
from shared_data import needs_kodak_and_video as needs_data

SRC = Path(__file__).resolve().parents[1] / "src"


# ---- CLI ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    BSQViT.from_preset("tiny").save_pretrained(d / "tiny")
    torch.manual_seed(1)
    BSQViT.from_preset("tiny", num_frames=3, mask_type="block-causal").save_pretrained(d / "tiny-video")
    torch.manual_seed(2)
    BSQViT.from_preset("tiny").save_pretrained(d / "other")
    return d


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    p = d / "crop.png"
    if KODAK.is_file():
        Image.open(KODAK).crop((200, 100, 300, 170)).save(p)  # 100 x 70, not a multiple of 8
    else:
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(p)
    return p


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_error(rc, err, out_path: Path | None = None):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bsqvit: error: "), err
    assert "Traceback" not in err
    if out_path is not None:
        assert not out_path.exists()
        assert leftovers(out_path.parent) == []


def test_cli_image_reconstruct_and_token_round_trip(tmp_path, capsys, models, crop):
    m = models / "tiny"
    rc, out, _ = run_cli(capsys, "reconstruct", crop, tmp_path / "rec.png", "--model", m, "--threads", 2)
    assert rc == 0
    assert "PSNR" in out and "bpp raw" in out and len(out.strip().splitlines()) == 1
    assert f"{18 * 9 * 13 / 7000:.4f} bpp" in out  # L * tokens / pixels: ceil(70/8) x ceil(100/8) tokens
    rec = Image.open(tmp_path / "rec.png")
    assert rec.size == (100, 70) and rec.mode == "RGB"

    rc, _, _ = run_cli(capsys, "tokenize", crop, tmp_path / "t.npz", "--model", m)
    assert rc == 0
    z = np.load(tmp_path / "t.npz")
    assert z["indices"].dtype == np.int64 and z["indices"].shape == (9, 13)
    assert (int(z["height"]), int(z["width"]), int(z["frames"]), float(z["fps"])) == (70, 100, 0, 0.0)
    assert float(z["bits"]) == 18 and int(z["patch_size"]) == 8
    assert str(z["model_hash"]) == BSQViT.from_pretrained(str(m)).weights_hash()

    rc, _, _ = run_cli(capsys, "detokenize", tmp_path / "t.npz", tmp_path / "det.png", "--model", m)
    assert rc == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "det.png")), np.asarray(rec))
    assert leftovers(tmp_path) == []


@needs_data
@pytest.mark.parametrize("model_name", ["tiny", "tiny-video"])
def test_cli_video_reconstruct_and_token_round_trip(tmp_path, capsys, models, model_name):
    m = models / model_name
    rc, out, _ = run_cli(capsys, "reconstruct", RAW_H264, tmp_path / "rec.mp4", "--model", m, "--max-frames", 4, "--lossless", "--threads", 1)
    assert rc == 0 and "video 4x176x144" in out
    rec, fps = read_video(tmp_path / "rec.mp4")
    assert rec.shape == (3, 4, 144, 176) and fps == 25.0

    rc, _, _ = run_cli(capsys, "tokenize", RAW_H264, tmp_path / "t.npz", "--model", m, "--max-frames", 4, "--threads", 1)
    assert rc == 0
    z = np.load(tmp_path / "t.npz")
    assert z["indices"].shape == (4, 18, 22) and int(z["frames"]) == 4 and float(z["fps"]) == 25.0

    rc, _, _ = run_cli(capsys, "detokenize", tmp_path / "t.npz", tmp_path / "det.mp4", "--model", m, "--lossless", "--threads", 1)
    assert rc == 0
    det, _ = read_video(tmp_path / "det.mp4")
    assert torch.equal(det, rec)
    # the model's own reconstruction, chunk by chunk, is what was written
    model = BSQViT.from_pretrained(str(m))
    x, _ = read_video(RAW_H264, max_frames=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same thread count as the CLI runs above: bit-identical floats
    try:
        if model.config.num_frames == 1:
            ref = model.decode(model.encode(x.movedim(1, 0)), size=(144, 176)).movedim(0, 1)
        else:  # chunks of 3 + 1 frames
            ref = torch.cat([model.decode(model.encode(x[None, :, s:s + 3]), size=(144, 176))[0] for s in (0, 3)], 1)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads  # --threads did not leak out of main()
    assert np.array_equal(to_uint8(ref), to_uint8(rec))
    # default (lossy H.264) output: right size
    rc, _, _ = run_cli(capsys, "detokenize", tmp_path / "t.npz", tmp_path / "lossy.mp4", "--model", m, "--threads", 1)
    assert rc == 0 and read_video(tmp_path / "lossy.mp4")[0].shape == (3, 4, 144, 176)


def _npz(path, **overrides):
    rec = dict(indices=np.zeros((9, 13), np.int64), height=np.int64(70), width=np.int64(100), frames=np.int64(0),
               fps=np.float64(0), bits=np.float64(18), patch_size=np.int64(8), model_hash=np.str_("x"))
    rec.update(overrides)
    rec = {k: v for k, v in rec.items() if v is not None}
    np.savez(path, **rec)
    return path


def test_cli_error_paths(tmp_path, capsys, models, crop):
    m = models / "tiny"
    out = tmp_path / "out.png"
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(crop.read_bytes()[:200])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    h = BSQViT.from_pretrained(str(m)).weights_hash()
    cases = [
        ["reconstruct", tmp_path / "missing.png", out, "--model", m],
        ["reconstruct", corrupt, out, "--model", m],
        ["reconstruct", crop, out, "--model", tmp_path / "no-model-dir"],
        ["reconstruct", crop, tmp_path / "nodir" / "out.png", "--model", m],
        ["reconstruct", crop, tmp_path / "out.mp4", "--model", m],  # image -> video suffix
        ["tokenize", corrupt, tmp_path / "t.npz", "--model", m],
        ["detokenize", garbage, out, "--model", m],
        ["detokenize", _npz(tmp_path / "nokeys.npz", model_hash=None), out, "--model", m],
        ["detokenize", _npz(tmp_path / "shape.npz", indices=np.zeros((4, 4), np.int64)), out, "--model", m],
        ["detokenize", _npz(tmp_path / "dims.npz", indices=np.zeros((9,), np.int64)), out, "--model", m],
        ["detokenize", _npz(tmp_path / "range.npz", indices=np.full((9, 13), 2**18), model_hash=np.str_(h)), out, "--model", m],
        ["detokenize", _npz(tmp_path / "float.npz", indices=np.zeros((9, 13))), out, "--model", m],
        ["detokenize", _npz(tmp_path / "hash.npz"), out, "--model", m],  # model hash mismatch without --force
        ["init-model", "--preset", "no-such-preset", tmp_path / "newmodel"],
    ]
    for argv in cases:
        rc, _, err = run_cli(capsys, *argv)
        assert_clean_error(rc, err, out)
        assert not (tmp_path / "t.npz").exists() and not (tmp_path / "newmodel").exists()


def test_cli_refuses_to_overwrite_inputs(tmp_path, capsys, models, crop):
    m = models / "tiny"
    img = tmp_path / "in.png"
    img.write_bytes(crop.read_bytes())
    before = img.read_bytes()
    rc, _, err = run_cli(capsys, "reconstruct", img, img, "--model", m)
    assert_clean_error(rc, err)
    assert "overwrite" in err and img.read_bytes() == before
    link = tmp_path / "link.png"
    link.symlink_to(img)
    rc, _, err = run_cli(capsys, "reconstruct", img, link, "--model", m)
    assert_clean_error(rc, err)
    assert img.read_bytes() == before
    rc, _, err = run_cli(capsys, "tokenize", img, m / "model.safetensors", "--model", m)
    assert_clean_error(rc, err)


def test_cli_refuses_to_replace_outputs_without_force(tmp_path, capsys, models, crop):
    """reconstruct, tokenize and detokenize keep an existing OUT unless --force, which replaces it."""
    m = models / "tiny"
    for cmd, inp, out in (("reconstruct", crop, tmp_path / "r.png"), ("tokenize", crop, tmp_path / "t.npz"),
                          ("detokenize", tmp_path / "t.npz", tmp_path / "d.png")):
        out.write_bytes(b"keep me")
        rc, _, err = run_cli(capsys, cmd, inp, out, "--model", m)
        assert_clean_error(rc, err)
        assert "use --force" in err and out.read_bytes() == b"keep me"
        rc, _, err = run_cli(capsys, cmd, inp, out, "--model", m, "--force")
        assert rc == 0, err
        assert out.read_bytes() != b"keep me" and leftovers(tmp_path) == []
    assert Image.open(tmp_path / "d.png").size == Image.open(tmp_path / "r.png").size == (100, 70)


def test_cli_reports_are_kept_without_force(tmp_path, capsys, models, crop):
    """Every command that writes a report or a folder refuses an existing one before any work, and
    --force lets the same command write it (eval shown end to end)."""
    m, data = models / "tiny", crop.parent
    keep = tmp_path / "old.json"
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.png").write_bytes(b"keep me")
    cases = [
        ["eval", "--model", m, "--data", data, "--fid", "none", "--json", keep],
        ["eval", "--model", m, "--data", data, "--fid", "none", "--report", full],
        ["bench", "--preset", "tiny", "--json", keep],
        ["fid-stats", data, tmp_path / "old.npz"],
        ["rd", "--data", data, "--model", m, "--markdown", keep],
        ["eval-gen", "--ref", data, "--samples", data, "--json", keep],
        ["generate", "--model", m, "--out", full],
        ["demo", "--out", full],
    ]
    (tmp_path / "old.npz").write_bytes(b"keep me")
    keep.write_bytes(b"keep me")
    for cmd in cases:
        rc, _, err = run_cli(capsys, *cmd)
        assert_clean_error(rc, err)
        assert "use --force" in err, (cmd[0], err)
        assert keep.read_bytes() == b"keep me" and (full / "x.png").read_bytes() == b"keep me"
        assert sorted(p.name for p in full.iterdir()) == ["x.png"]
    rc, _, err = run_cli(capsys, "eval", "--model", m, "--data", data, "--fid", "none", "--json", keep, "--force")
    assert rc == 0, err
    assert b"psnr" in keep.read_bytes() and leftovers(tmp_path) == []


def test_cli_detokenize_force_and_models(tmp_path, capsys, models, crop):
    rc, _, _ = run_cli(capsys, "tokenize", crop, tmp_path / "t.npz", "--model", models / "tiny")
    assert rc == 0
    rc, _, err = run_cli(capsys, "detokenize", tmp_path / "t.npz", tmp_path / "d.png", "--model", models / "other")
    assert_clean_error(rc, err, tmp_path / "d.png")
    assert "--force" in err
    rc, _, err = run_cli(capsys, "detokenize", tmp_path / "t.npz", tmp_path / "d.png", "--model", models / "other", "--force")
    assert rc == 0 and "warning" in err and Image.open(tmp_path / "d.png").size == (100, 70)

    rc, out, _ = run_cli(capsys, "presets")
    assert rc == 0 and "tiny" in out and "283,154" in out
    rc, _, _ = run_cli(capsys, "init-model", "--preset", "tiny", tmp_path / "new", "--seed", 3)
    assert rc == 0
    a = BSQViT.from_pretrained(str(tmp_path / "new"))
    torch.manual_seed(3)
    assert a.weights_hash() == BSQViT.from_preset("tiny").weights_hash()
    rc, _, err = run_cli(capsys, "init-model", "--preset", "tiny", tmp_path / "new")  # not empty: refuse
    assert_clean_error(rc, err)
    assert run_cli(capsys, "--help")[0] == 0


def test_python_dash_m_entry_point(tmp_path, models, crop):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "rec.png"
    r = subprocess.run([sys.executable, "-m", "bsqvit", "reconstruct", str(crop), str(out), "--model", str(models / "tiny")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "PSNR" in r.stdout and Image.open(out).size == (100, 70)


def test_cli_reconstruct_stream_equals_clips(tmp_path, capsys, models):
    from bsqvit.io import read_video, write_video_lossless

    rng = np.random.default_rng(0)
    v = torch.from_numpy(rng.uniform(-1, 1, (3, 7, 16, 24)).astype(np.float32))  # 7 frames: 2 clips of 3 + 1
    write_video_lossless(v, tmp_path / "in.mp4", fps=10)
    m = models / "tiny-video"
    outs = {}
    for name, extra in (("clips", []), ("stream", ["--stream"])):
        rc, out, err = run_cli(capsys, "reconstruct", tmp_path / "in.mp4", tmp_path / f"{name}.mp4", "--model", m,
                               "--lossless", *extra)
        assert rc == 0, err
        outs[name] = (out, read_video(tmp_path / f"{name}.mp4")[0])
    assert outs["stream"][1].shape == outs["clips"][1].shape == (3, 7, 16, 24)
    assert (outs["stream"][1] - outs["clips"][1]).abs().max() <= 2 / 255  # same tokens; float rounding only
    psnr = [float(o.split("PSNR ")[1].split(" dB")[0]) for o, _ in outs.values()]
    assert abs(psnr[0] - psnr[1]) < 0.01
    rc, _, err = run_cli(capsys, "reconstruct", tmp_path / "in.mp4", tmp_path / "win.mp4", "--model", m,
                         "--stream", "--stream-window", "2")
    assert rc == 0, err
    assert read_video(tmp_path / "win.mp4")[0].shape == (3, 7, 16, 24)
    rc, _, err = run_cli(capsys, "reconstruct", tmp_path / "in.mp4", tmp_path / "w.mp4", "--model", m,
                         "--stream", "--stream-window", "0")
    assert_clean_error(rc, err, tmp_path / "w.mp4")
