"""bsqvit.pretrained: packing, manifest verification, the CLI defaults, and the demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bsqvit import BSQViT, pretrained
from bsqvit.cli import main
from bsqvit.codec import TokenPrior
from bsqvit.generate.data import IMAGENETTE_CLASSES
from bsqvit.generate.model import MaskedTokenModel
from bsqvit.models.io import ModelLoadError
from shared_data import KODAK as KODAK_DIR

KODAK = KODAK_DIR / "kodim23.png"



pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny tokenizer (rounded to float16), a prior and a generator trained 'for' it, saved fp32."""
    d = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    tok = BSQViT.from_preset("tiny")
    pretrained.round_to_half(tok)
    tok.save_pretrained(d / "tokenizer")
    h = tok.weights_hash()
    torch.manual_seed(1)
    prior = TokenPrior(kind="ar", bits=18, group_bits=9, width=32, layers=1, heads=2, tile=[8, 8], tokenizer_hash=h)
    pretrained.round_to_half(prior)
    prior.save_pretrained(d / "prior")
    gen = MaskedTokenModel(bits=18, grid=[4, 4], width=32, layers=1, heads=2, num_classes=2, class_ids=["a", "b"],
                           class_names=["cat", "dog"], image_size=[32, 32], tokenizer_hash=h)
    pretrained.round_to_half(gen)
    gen.save_pretrained(d / "gen")
    torch.manual_seed(2)  # the video default: block-causal, 2-frame clips, and its previous-frame prior
    vtok = BSQViT.from_preset("tiny", num_frames=2, mask_type="block-causal", mask_block_size=1)
    pretrained.round_to_half(vtok)
    vtok.save_pretrained(d / "video-tokenizer")
    vprior = TokenPrior(kind="ar", bits=18, group_bits=9, width=32, layers=1, heads=2, tile=[8, 8], video=True,
                        tokenizer_hash=vtok.weights_hash())
    pretrained.round_to_half(vprior)
    vprior.save_pretrained(d / "video-prior")
    return d


@pytest.fixture()
def embedded(runs, tmp_path, monkeypatch):
    root = tmp_path / "default"
    for c in pretrained.COMPONENTS:
        pretrained.pack_component(runs / c, root / c)
    hashes = {c: BSQViT.from_pretrained(runs / c).weights_hash() for c in pretrained.TOKENIZERS}
    pretrained.write_manifest(root, {"tokenizer_hash": hashes["tokenizer"], "tokenizer_hashes": hashes})
    monkeypatch.setattr(pretrained, "ROOT", root)
    monkeypatch.setattr(pretrained, "_verified", set())
    return root


def test_pack_is_half_and_exact(runs, tmp_path):
    pretrained.pack_component(runs / "tokenizer", tmp_path / "t")
    from safetensors.torch import load_file

    st = load_file(str(tmp_path / "t" / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in st.values() if v.is_floating_point())
    assert (tmp_path / "t" / "model.safetensors").stat().st_size < 0.6 * (runs / "tokenizer" / "model.safetensors").stat().st_size
    a, b = BSQViT.from_pretrained(runs / "tokenizer"), BSQViT.from_pretrained(tmp_path / "t")
    assert a.weights_hash() == b.weights_hash()  # loaded into float32: bit-identical


def test_pack_refuses_unrounded_weights(tmp_path):
    torch.manual_seed(0)
    BSQViT.from_preset("tiny").save_pretrained(tmp_path / "raw")
    with pytest.raises(ValueError, match="not exactly representable"):
        pretrained.pack_component(tmp_path / "raw", tmp_path / "packed")


def test_manifest_verification(embedded):
    assert pretrained.default_dir("tokenizer") == embedded / "tokenizer"
    m = json.loads((embedded / "MANIFEST.json").read_text())
    assert set(m["files"]) == {f"{c}/{f}" for c in pretrained.COMPONENTS for f in ("config.json", "model.safetensors")}
    # corrupt one byte of the prior: refused at load (fresh process state)
    p = embedded / "prior" / "model.safetensors"
    b = bytearray(p.read_bytes())
    b[-1] ^= 1
    p.write_bytes(bytes(b))
    pretrained._verified.clear()
    with pytest.raises(ModelLoadError, match="SHA-256"):
        pretrained.default_dir("prior")
    (embedded / "gen" / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        pretrained.default_dir("gen")
    with pytest.raises(ValueError, match="unknown component"):
        pretrained.default_dir("vae")


def test_no_embedded_models_gives_clear_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "ROOT", tmp_path / "nothing")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    rc, _, err = run_cli(capsys, "reconstruct", img, tmp_path / "y.png")
    assert rc == 2 and "no embedded default model" in err


def test_cli_defaults_to_embedded_models(embedded, runs, tmp_path, capsys):
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(img)
    rc, _, err = run_cli(capsys, "compress", img, tmp_path / "a.bsq", "--json")
    assert rc == 0, err
    rc, out, _ = run_cli(capsys, "info", tmp_path / "a.bsq")
    assert json.loads(out)["coder"] == "ar"  # the embedded prior, matched to the embedded tokenizer
    rc, _, err = run_cli(capsys, "decompress", tmp_path / "a.bsq", tmp_path / "a.png")
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "reconstruct", img, tmp_path / "r.png")
    assert rc == 0, err
    assert np.array_equal(np.array(Image.open(tmp_path / "a.png")), np.array(Image.open(tmp_path / "r.png")))
    # another tokenizer: the embedded prior does not match it, so tokens are stored raw
    torch.manual_seed(5)
    BSQViT.from_preset("tiny").save_pretrained(tmp_path / "other")
    rc, _, err = run_cli(capsys, "compress", img, tmp_path / "b.bsq", "--model", tmp_path / "other")
    assert rc == 0, err
    assert json.loads(run_cli(capsys, "info", tmp_path / "b.bsq")[1])["coder"] == "raw"
    rc, _, err = run_cli(capsys, "generate", "--n", 1, "--class", "all", "--steps", 2, "--out", tmp_path / "g")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["a_00000.png", "b_00000.png", "grid.png"]


def test_videos_default_to_the_video_tokenizer_and_its_prior(embedded, runs, tmp_path, capsys):
    """A video input takes the embedded video tokenizer and its previous-frame prior; a file or a
    token file finds the embedded tokenizer it was made with; images keep the image default."""
    from bsqvit.io import from_uint8, iter_video_frames, write_video_lossless

    vtok = BSQViT.from_pretrained(runs / "video-tokenizer")
    clip = tmp_path / "clip.mp4"
    frames = np.random.default_rng(1).integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    write_video_lossless(from_uint8(frames), clip, fps=10)
    rc, _, err = run_cli(capsys, "compress", clip, tmp_path / "v.bsq")
    assert rc == 0, err
    head = json.loads(run_cli(capsys, "info", tmp_path / "v.bsq")[1])
    assert head["coder"] == "ar" and head["video_cond"] and vtok.weights_hash().startswith(head["tokenizer_id"])
    assert TokenPrior.from_pretrained(runs / "video-prior").weights_hash().startswith(head["prior_id"])
    rc, _, err = run_cli(capsys, "decompress", tmp_path / "v.bsq", tmp_path / "v.mp4", "--lossless")
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "reconstruct", clip, tmp_path / "r.mp4", "--lossless")
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "tokenize", clip, tmp_path / "t.npz")
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "detokenize", tmp_path / "t.npz", tmp_path / "d.mp4", "--lossless")
    assert rc == 0, err  # the token file's hash picks the video tokenizer
    dec, rec, det = (np.stack(list(iter_video_frames(tmp_path / f))) for f in ("v.mp4", "r.mp4", "d.mp4"))
    assert dec.shape == (3, 24, 32, 3) and np.array_equal(dec, rec) and np.array_equal(dec, det)
    assert pretrained.default_pair(video=False) == (embedded / "tokenizer", embedded / "prior")
    assert pretrained.default_pair(video=True) == (embedded / "video-tokenizer", embedded / "video-prior")


def test_demo_end_to_end_on_the_shipped_samples(embedded, tmp_path, capsys, monkeypatch):
    samples = sorted(pretrained.SAMPLES.glob("*.png"))
    assert len(samples) == 5 and sum(f.stat().st_size for f in samples) <= 3_000_000
    data = tmp_path / "data"  # small crops of two shipped samples stand in for them (time)
    data.mkdir()
    for i, (f, box) in enumerate(zip(samples, [(0, 0, 200, 176), (300, 200, 480, 376)])):
        Image.open(f).crop(box).save(data / f"k{i}.png")
    monkeypatch.setattr(pretrained, "SAMPLES", data)
    rc, out, err = run_cli(capsys, "demo", "--out", tmp_path / "demo", "--no-lpips", "--no-progress")  # no --data
    assert rc == 0, err
    d = tmp_path / "demo"
    assert sorted(p.name for p in (d / "bsq").iterdir()) == ["k0.bsq", "k1.bsq"]
    assert (d / "decoded" / "k1.png").is_file() and (d / "rd.png").is_file() and (d / "generated" / "grid.png").is_file()
    res = json.loads((d / "demo.json").read_text())
    bpp = 8 * (d / "bsq" / "k0.bsq").stat().st_size / (200 * 176)
    assert res["per_item"][0]["bpp"] == pytest.approx(bpp) and res["data"] == str(data)
    assert set(res["comparison"]) == {"jpeg", "webp"}
    # an honest summary: the PSNR gap at equal rate or the sweep's range, and no one-point BD-rate
    for codec in ("jpeg", "webp"):
        (c,) = res["comparison"][codec]  # one rate: the fixed-rate tokenizer's
        gap_line = f"{codec} at " in out and "so ours is" in out
        assert gap_line or f"{codec}: its sweep spans" in out
        if c["psnr_at_our_bpp"] is not None:
            assert f"{res['mean']['psnr'] - c['psnr_at_our_bpp']:+.2f} dB" in out
    assert "BD-rate vs" not in out and "no BD-rate" in out and "mean" in out
    assert "1/3" in out and "2/3" in out and "3/3" in out and "open rd.png first" in out
    grid = np.asarray(Image.open(d / "generated" / "grid.png"))
    classes = max(1, MaskedTokenModel.from_pretrained(pretrained.default_dir("gen")).config.num_classes)
    assert grid.shape[0] >= classes * (128 + 14)  # a captioned row of upscaled samples per class


def test_demo_draws_a_curve_from_a_nested_default(runs, tmp_path, capsys, monkeypatch):
    """A nested-bits default is coded at four of its rates: a file and a decoded image per rate, a
    line per rate in the summary, and a BD-rate from bjontegaard (no generator installed: no grid)."""
    torch.manual_seed(4)
    levels = [3, 6, 9, 12, 15, 18]
    tok = BSQViT.from_preset("tiny", quantizer=dict(type="bsq", dim=18, group_size=1, nested_bits=levels))
    pretrained.round_to_half(tok)
    tok.save_pretrained(tmp_path / "runs" / "tokenizer")
    prior = TokenPrior(kind="ar", bits=18, group_bits=3, rates=levels, width=16, layers=1, heads=2, tile=[8, 8],
                       tokenizer_hash=tok.weights_hash())
    pretrained.round_to_half(prior)
    prior.save_pretrained(tmp_path / "runs" / "prior")
    root = tmp_path / "default"
    for c in ("tokenizer", "prior"):
        pretrained.pack_component(tmp_path / "runs" / c, root / c)
    pretrained.write_manifest(root, {"tokenizer_hash": tok.weights_hash()})
    monkeypatch.setattr(pretrained, "ROOT", root)
    monkeypatch.setattr(pretrained, "_verified", set())
    data = tmp_path / "data"
    data.mkdir()
    Image.open(sorted(pretrained.SAMPLES.glob("*.png"))[0]).crop((0, 0, 96, 64)).save(data / "k.png")
    rc, out, err = run_cli(capsys, "demo", "--data", data, "--out", tmp_path / "demo", "--no-lpips", "--no-progress")
    assert rc == 0, err
    d = tmp_path / "demo"
    assert sorted(p.name for p in (d / "bsq").iterdir()) == ["k@12.bsq", "k@18.bsq", "k@3.bsq", "k@9.bsq"]
    assert sorted(p.name for p in (d / "decoded").iterdir()) == ["k@12.png", "k@18.png", "k@3.png", "k@9.png"]
    res = json.loads((d / "demo.json").read_text())
    assert res["rates"] == [3, 9, 12, 18] and [m["bits"] for m in res["means"]] == [3, 9, 12, 18]
    assert [m["bpp"] for m in res["means"]] == sorted(m["bpp"] for m in res["means"])
    assert all(len(res["comparison"][c]) == 4 for c in ("jpeg", "webp"))
    assert "ours at 9 bits per token" in out and "no BD-rate" not in out and "BD-rate vs jpeg" in out
    rd = json.loads((d / "rd.json").read_text())
    assert rd["bd_rate"]["bsq-ar[embedded]"]["jpeg"]["method"].startswith("bjontegaard")
    assert not (d / "generated").exists()


def test_shipped_models_verify_match_and_work():
    """The weights in the package: manifest-verified, one tokenizer hash, and they do their jobs."""
    if not pretrained.available("tokenizer", pretrained.ROOT):
        pytest.skip("no embedded models in this checkout")
    m = json.loads((pretrained.ROOT / "MANIFEST.json").read_text())
    assert sum(f["bytes"] for f in m["files"].values()) <= 40_000_000
    tok = BSQViT.from_pretrained(pretrained.default_dir("tokenizer"))
    prior = TokenPrior.from_pretrained(pretrained.default_dir("prior"))
    gen = MaskedTokenModel.from_pretrained(pretrained.default_dir("gen"))
    assert tok.weights_hash() == m["tokenizer_hash"] == prior.config.tokenizer_hash == gen.config.tokenizer_hash
    if KODAK.is_file():
        from bsqvit.codec import compress, decompress
        from bsqvit.io import from_uint8
        from bsqvit.metrics.pixel import psnr

        x = from_uint8(np.array(Image.open(KODAK).convert("RGB"))[200:328, 300:428])
        r = compress(x, tok, prior)
        y = decompress(r.data, tok, prior)
        full = float(psnr(y[None], x[None]))
        assert full > 20.0
        assert r.stats["bits_per_token"] < 0.7 * r.stats["raw_bits_per_token"]  # the prior saves bits
        levels = tok.nested_bits or []
        if levels:  # a nested-bits default: a lower rate costs fewer bits and some quality
            low = compress(x, tok, prior, bits=levels[len(levels) // 2])
            y_low = decompress(low.data, tok, prior)
            assert low.stats["bits_per_token"] < r.stats["bits_per_token"]
            assert 15.0 < float(psnr(y_low[None], x[None])) < full
    if pretrained.available("video-tokenizer", pretrained.ROOT):
        _check_shipped_video_default(m, tok)
    assert gen.config.num_classes == 10 and "church" in gen.config.class_names
    # every class has its Imagenette name (the wnid's own name table agrees)
    assert gen.config.class_names == [IMAGENETTE_CLASSES[i] for i in gen.config.class_ids]
    assert gen.config.class_names[9] == "parachute" and gen.config.class_ids[9] == "n03888257"


def _check_shipped_video_default(manifest: dict, image_tok) -> None:
    """The embedded video tokenizer: block-causal, fine-tuned from the image default (same
    architecture and rates), its prior conditioned on the previous frame and trained for it; a
    static 4-frame clip costs fewer bits per frame after the first and decodes to the pixels of
    its raw-token file."""
    from bsqvit.codec import CodecOptions, compress, decompress
    from bsqvit.io import from_uint8

    vtok = BSQViT.from_pretrained(pretrained.default_dir("video-tokenizer"))
    vprior = TokenPrior.from_pretrained(pretrained.default_dir("video-prior"))
    assert vtok.weights_hash() == manifest["tokenizer_hashes"]["video-tokenizer"] == vprior.config.tokenizer_hash
    assert vtok.config.mask_type == "block-causal" and vtok.config.num_frames > 1 and vprior.config.video
    assert vtok.nested_bits == image_tok.nested_bits and vprior.config.rates == list(image_tok.nested_bits)
    if KODAK.is_file():
        frame = np.array(Image.open(KODAK).convert("RGB"))[200:296, 300:428]
        x = from_uint8(np.stack([frame] * 4))  # (3, 4, H, W): a still scene
        res = compress(x, vtok, vprior)
        y = decompress(res.data, vtok, vprior)
        assert vprior.config.temporal_copy > 0 and res.header.skip_map  # skip maps, the encoder copies tokens
        raw = compress(x, vtok, None, options=CodecOptions(temporal_copy=vprior.config.temporal_copy))
        assert y.shape == x.shape and torch.equal(y, decompress(raw.data, vtok))  # = the raw file's (same copies)
        assert res.stats["bits_per_token"] < 0.6 * res.stats["raw_bits_per_token"]
        one = compress(x[:, :1], vtok, vprior)  # the first frame alone: no previous frame
        # each repeat, predicted from the frame before it, costs less than the first frame (0.54x when packaged)
        assert res.stats["bytes"] - one.stats["bytes"] < 3 * 0.8 * one.stats["bytes"]
