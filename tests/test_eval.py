"""`bsqvit eval`, `bsqvit fid-stats` and `bsqvit bench` end to end with tiny random models."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from bsqvit import BSQViT
from bsqvit.cli import main
from shared_data import KODAK, SQUEEZE_CAFFE, VIDEO, needs

DAVIS = VIDEO / "davis2016_frames" / "blackswan"
# the evaluations here score with the offline stand-in networks too: data and weights
needs_data = needs(KODAK / "kodim01.png", DAVIS, SQUEEZE_CAFFE, what="Kodak, DAVIS frames and the stand-in weights")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    if not (KODAK / "kodim01.png").is_file():
        pytest.skip("Kodak (../shared/data/kodak) not available")
    d = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    BSQViT.from_preset("tiny").save_pretrained(d / "tiny")
    torch.manual_seed(0)
    BSQViT.from_preset("tiny", num_frames=4, mask_type="block-causal").save_pretrained(d / "tiny-video")
    (d / "kodak3").mkdir()
    for n in ("kodim01.png", "kodim04.png", "kodim23.png"):  # landscape, portrait, landscape
        shutil.copy(KODAK / n, d / "kodak3" / n)
    return d


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / mse)


@needs_data
def test_eval_original_resolution(workdir, capsys):
    out_json, rep = workdir / "full.json", workdir / "rep"
    rc, out, err = run(capsys, "eval", "--model", workdir / "tiny", "--data", workdir / "kodak3", "--resize", "none",
                       "--json", out_json, "--report", rep, "--threads", "1", "--report-items", "2",
                       "--lpips", "none")
    assert rc == 0, err
    r = json.loads(out_json.read_text())
    assert [it["name"] for it in r["per_item"]] == ["kodim01.png", "kodim04.png", "kodim23.png"]
    assert r["n"] == 3 and "original resolution" in r["protocol"] and r["protocol_args"]["resize"] == "none"
    assert (r["per_item"][1]["width"], r["per_item"][1]["height"]) == (512, 768)
    for it in r["per_item"]:
        assert 0 < it["ssim"] < 1 and it["ms_ssim"] is not None  # 512 px >= 161: MS-SSIM defined
        assert it["bpp"] == pytest.approx(18 / 64) and it["lpips"] is None
    # PSNR equals an independent computation from the reconstructed tensors (the portrait image)
    model = BSQViT.from_pretrained(workdir / "tiny").eval()
    it = r["per_item"][1]
    a = np.array(Image.open(workdir / "kodak3" / it["name"]).convert("RGB"))
    x = torch.from_numpy(a).permute(2, 0, 1).float()[None] / 127.5 - 1
    with torch.no_grad():
        rec = model.decode(model.encode(x), size=a.shape[:2])[0]
    b = ((rec.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)
    assert it["psnr"] == pytest.approx(_psnr_u8(a, b), abs=1e-3)
    assert r["means"]["psnr"] == pytest.approx(np.mean([it["psnr"] for it in r["per_item"]]))
    t = r["tokens"]
    assert t["raw_bpp"] == pytest.approx(18 / 64) and t["bits_per_token"] == 18
    assert t["tokens"] == 3 * 64 * 96 and 0 < t["code_usage"] <= 1 and len(t["bit_usage"]) == 18
    assert 0 < t["entropy_bits"] <= math.log2(t["tokens"]) + 1e-9
    # offline stand-ins are labelled everywhere
    assert r["fid"]["value"] is not None and r["fid"]["n"] == 3 and r["fid"]["comparable_to_published"] is False
    assert "not comparable" in r["fid"]["label"] and r["stand_ins"] == ["rfid"]
    assert "rFID-like" in out and "not comparable" in out and "| **mean** |" in out
    assert (rep / "report.png").is_file() and r["report"]["grid"] == str(rep / "report.png")
    w, h = Image.open(rep / "report.png").size
    assert w <= 3 * 256 + 16 and h <= 2 * (256 + 20) + 8  # small: 2 rows of 3 tiles <= 256 px


@needs_data
def test_eval_paper_protocol_with_reference_stats(workdir, capsys):
    ref, j1, j2 = workdir / "ref64.npz", workdir / "r1.json", workdir / "r2.json"
    common = ["--model", workdir / "tiny", "--data", workdir / "kodak3", "--resolution", "64", "--batch", "3",
              "--threads", "1", "--no-progress", "--fid-method", "symmetric"]
    rc, out, err = run(capsys, "eval", *common, "--fid-ref", ref, "--json", j1)
    assert rc == 0, err
    r1 = json.loads(j1.read_text())
    assert all((it["width"], it["height"]) == (64, 64) and it["ms_ssim"] is None for it in r1["per_item"])
    assert "short side resized to 64 px (lanczos" in r1["protocol"] and "centre crop 64x64" in r1["protocol"]
    assert r1["fid"]["reference_created"] is True and ref.is_file()
    # offline, LPIPS falls back to the labelled SqueezeNet-Caffe stand-in
    assert r1["lpips"]["net"] == "squeeze-caffe" and "not comparable" in r1["lpips"]["label"]
    assert set(r1["stand_ins"]) == {"lpips", "rfid"} and r1["fid"]["method"] == "symmetric"
    assert all(it["lpips"] > 0 for it in r1["per_item"]) and "LPIPS*" in out and "not comparable" in out
    # the cached statistics are used the second time and give the same number
    rc, out, err = run(capsys, "eval", *common, "--fid-ref", ref, "--json", j2)
    r2 = json.loads(j2.read_text())
    assert rc == 0 and r2["fid"]["reference_created"] is False
    assert r2["fid"]["value"] == pytest.approx(r1["fid"]["value"], rel=1e-9)
    assert [it["psnr"] for it in r2["per_item"]] == [it["psnr"] for it in r1["per_item"]]
    # fid-stats computes the same reference statistics without a model
    rc, out, err = run(capsys, "fid-stats", workdir / "kodak3", workdir / "ref64b.npz", "--resolution", "64",
                       "--batch", "3", "--threads", "1", "--no-progress")
    assert rc == 0, err
    assert "stand-in" in out
    a, b = np.load(ref), np.load(workdir / "ref64b.npz")
    np.testing.assert_allclose(a["mu"], b["mu"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(a["sigma"], b["sigma"], rtol=1e-5, atol=1e-9)
    assert str(a["feature"]) == str(b["feature"]) == "squeezenet1_1-caffe-gap512"


@needs_data
def test_eval_video_frame_folder(workdir, capsys):
    out_json, rep = workdir / "video.json", workdir / "vrep"
    rc, out, err = run(capsys, "eval", "--model", workdir / "tiny-video", "--data", DAVIS, "--video", "--frames", "4",
                       "--clips-per-video", "2", "--resolution", "32", "--json", out_json, "--report", rep,
                       "--report-items", "1", "--threads", "1", "--no-progress")
    assert rc == 0, err
    r = json.loads(out_json.read_text())
    assert r["kind"] == "video" and r["n"] == 2
    assert [it["name"] for it in r["per_item"]] == ["blackswan#clip0", "blackswan#clip1"]
    assert [it["start"] for it in r["per_item"]] == [0, 4] and all(it["frames"] == 4 for it in r["per_item"])
    assert all(np.isfinite(it["psnr"]) and it["lpips"] is not None for it in r["per_item"])
    assert r["fvd"]["value"] is None and r["fvd"]["status"] == "unavailable (no I3D weights)"
    assert "rFVD | n/a | unavailable (no I3D weights)" in out
    assert r["fid"]["n"] == 8 and r["fid"]["unit"] == "frames"
    assert r["tokens"]["tokens"] == 2 * 4 * 4 * 4
    assert (rep / "blackswan_clip0_side_by_side.mp4").is_file() and (rep / "blackswan_clip0_frames.png").is_file()
    from bsqvit.io import read_video

    v, _ = read_video(rep / "blackswan_clip0_side_by_side.mp4")
    assert v.shape[1] == 4 and v.shape[-1] == 3 * v.shape[-2]  # 4 frames, 3 tiles side by side


def test_bench_preset(capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    rc, out, err = run(capsys, "bench", "--preset", "tiny", "--resolution", "32", "--repeats", "2", "--threads", "1",
                       "--json", out_json)
    assert rc == 0, err
    assert "| encode |" in out and "| decode |" in out and "| encode+decode |" in out and "GEMM reference" in out
    r = json.loads(out_json.read_text())
    for stage in ("encode", "decode", "encode+decode"):
        s = r["stages"][stage]
        assert s["items_per_s"] > 0 and s["achieved_flops_per_s"] > 0 and s["fraction_of_gemm"] > 0
    assert r["stages"]["encode+decode"]["flops_per_item"] == pytest.approx(
        r["stages"]["encode"]["flops_per_item"] + r["stages"]["decode"]["flops_per_item"])
    assert r["gemm"]["shape"] == [16, 64, 256] and r["gemm"]["flops_per_s"] > 0 and r["threads"] == 1


@pytest.mark.parametrize("argv,msg", [
    (["eval", "--model", "{m}", "--data", "/nonexistent/dir"], "/nonexistent/dir: no such file or directory"),
    (["eval", "--model", "{m}", "--data", "{k}", "--resize", "none", "--resolution", "64"], "--resolution applies"),
    (["eval", "--model", "/nonexistent/model", "--data", "{k}"], ""),
    (["bench", "--preset", "no-such-preset"], "unknown preset"),
    (["bench", "--preset", "tiny", "--frames", "4"], "image model"),
    (["fid-stats", "{k}", "{w}/x.npz", "--resize", "lanczos"], "--resolution is required"),
])
def test_errors_exit_2_with_one_line(workdir, capsys, argv, msg):
    argv = [a.format(m=workdir / "tiny", k=workdir / "kodak3", w=workdir) for a in argv]
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bsqvit: error:") and msg in lines[0]
