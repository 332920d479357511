"""Temporal token copying (codec/temporal.py) and skip maps (codec/coding.py, docs/FORMAT.md 5.5)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import run_cli

from bsqvit import BSQViT
from bsqvit.codec import CodecOptions, TokenPrior, compress, decode_tokens, decompress
from bsqvit.codec.api import base_header, encode_tokens, tokenize
from bsqvit.codec.coding import SymbolCoder, code_skip_map, decoder_for
from bsqvit.codec.container import BSQFormatError, Limits, check_header, read_container
from bsqvit.codec.prior import PriorConfig
from bsqvit.codec.temporal import copy_tokens, copy_video, video_latents
from bsqvit.codec.train_prior import expected_bits, prior_loss
from bsqvit.config import ConfigError
from bsqvit.io import from_uint8, write_video_lossless
from bsqvit.models.frames import encode_frames, encode_frames_latent
from bsqvit.quantizers.base import bits_to_indices, indices_to_bits
from bsqvit.quantizers.bsq import keep_bits

DATA = Path(__file__).resolve().parent / "data" / "codec"
pytestmark = pytest.mark.usefixtures("one_thread")


def skip_prior(seed: int = 0, **kw) -> TokenPrior:
    torch.manual_seed(seed)
    cfg = dict(kind="ar", bits=18, group_bits=6, width=16, layers=1, heads=2, mlp_ratio=2.0, tile=[3, 4], video=True,
               temporal_copy=0.1)
    return TokenPrior({**cfg, **kw}).eval()


def video_model(seed: int = 5) -> BSQViT:
    torch.manual_seed(seed)
    return BSQViT(dict(image_size=[8, 8], patch_size=4, width=16, layers=1, heads=2, head_dim=16, num_frames=3,
                       mask_type="block-causal", quantizer=dict(type="bsq", dim=18, group_size=9,
                                                                nested_bits=[6, 12, 18]))).eval()


def code(u: torch.Tensor, L: int) -> torch.Tensor:
    """BSQ code of bits (..., L) bool: entries +-1/sqrt(L)."""
    return (u.float() * 2 - 1) / math.sqrt(L)


# ---- the copy decision ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [None, 6, 12])
def test_copy_decision_is_the_latent_distance_rule_brute_force(bits):
    g = torch.Generator().manual_seed(int(bits or 0))
    dim, tau = 18, 0.15
    z = torch.randn(6, 3, 4, dim, generator=g)
    z[1:] = z[:1] + 0.4 * torch.randn(5, 3, 4, dim, generator=g)  # frames alike: some copies, some not
    out = copy_tokens(z, dim, bits, tau)
    L = dim if bits is None else bits
    plain = keep_bits(bits_to_indices(z > 0), dim, L)
    assert torch.equal(out[0], plain[0])
    assert torch.equal(copy_tokens(z, dim, bits, 0.0), plain)  # threshold 0: the plain tokens
    assert (out & ~keep_bits(torch.full_like(out, (1 << dim) - 1), dim, L)).eq(0).all()  # dropped bits stay 0
    copies = 0
    for t in range(1, 6):
        u = torch.nn.functional.normalize(z[t, ..., :L], dim=-1)
        own, prev = indices_to_bits(plain[t], dim)[..., :L].bool(), indices_to_bits(out[t - 1], dim)[..., :L].bool()
        extra = ((u - code(prev, L)) ** 2).sum(-1) - ((u - code(own, L)) ** 2).sum(-1)
        copied = extra <= tau + 1e-6
        assert torch.equal(out[t][copied], out[t - 1][copied])
        assert torch.equal(out[t][~copied], plain[t][~copied])
        copies += int((copied & (out[t] != plain[t])).sum())
    assert copies > 0  # the rule was exercised


def test_threshold_four_copies_everything_and_bad_thresholds_are_refused():
    z = torch.randn(4, 2, 3, 18)
    out = copy_tokens(z, 18, None, 4.0)
    assert (out == out[0]).all()
    for bad in (-0.1, 4.5, float("nan")):
        with pytest.raises(ValueError, match="threshold"):
            copy_tokens(z, 18, None, bad)


def test_copying_streams_across_chunks():
    z = torch.randn(7, 2, 3, 18)
    whole = copy_tokens(z, 18, 12, 0.2)
    assert torch.equal(copy_video([z[:3], z[3:6], z[6:]], 18, 12, 0.2), whole)
    assert torch.equal(copy_tokens(z[3:], 18, 12, 0.2, prev=whole[2]), whole[3:])


def test_copying_needs_a_binary_quantizer():
    torch.manual_seed(0)
    vq = BSQViT(dict(image_size=[8, 8], patch_size=4, width=16, layers=1, heads=2, head_dim=16, num_frames=3,
                     mask_type="block-causal", quantizer=dict(type="vq", dim=8, codebook_size=64))).eval()
    x = from_uint8(np.load(DATA / "video.npy"))
    with pytest.raises(ValueError, match="binary"):
        tokenize(vq, x, temporal_copy=0.1)
    assert tokenize(vq, x).shape == (5, 4, 6)  # plain tokens still work


def test_encoder_with_threshold_zero_gives_the_model_tokens():
    model = video_model()
    x = from_uint8(np.load(DATA / "video.npy"))
    for bits in (None, 12):
        z = encode_frames_latent(model, x[:, :3])
        assert torch.equal(copy_tokens(z, 18, bits, 0.0), encode_frames(model, x[:, :3], bits=bits))
        plain = tokenize(model, x, bits=bits)
        copied = tokenize(model, x, bits=bits, temporal_copy=0.3)
        assert np.array_equal(copied[0], plain[0])
        assert np.array_equal(copy_video(video_latents(model, x), 18, bits, 0.3).numpy(), copied)
        assert (copied[1:] == copied[:-1]).mean() >= (plain[1:] == plain[:-1]).mean()


# ---- skip maps -------------------------------------------------------------------------------------------
def test_skip_map_round_trip_and_cost():
    rng = np.random.default_rng(0)
    skip = rng.random((9, 11)) < 0.8
    prev = rng.random((9, 11)) < 0.5
    enc = SymbolCoder()
    code_skip_map(enc, 9, 11, skip, prev)
    data = enc.finish()
    back = code_skip_map(decoder_for(data, 16), 9, 11, None, prev)
    assert np.array_equal(back, skip)
    h = -(0.8 * math.log2(0.8) + 0.2 * math.log2(0.2))
    assert enc.stats.ideal_bits < 99 * h + 20  # adaptive: near the entropy of the flags
    assert enc.stats.ideal_bits > 99 * h - 20


def _header(prior, T=5, h=4, w=5, bits=18):
    class Fake:
        patch_size = 4
        config = type("C", (), {"pad_mode": "replicate", "num_frames": 1})()
        quantizer = type("Q", (), {"codebook_size": 1 << 18})()

        @staticmethod
        def weights_hash():
            return "ab" * 32

    return base_header(Fake, "video", 4 * h, 4 * w, T, 10.0, prior, CodecOptions(frames_per_chunk=2))


def test_skip_map_files_round_trip_and_code_fewer_bits():
    prior = skip_prior()
    rng = np.random.default_rng(1)
    tok = rng.integers(0, 1 << 18, (5, 4, 5))
    for f in range(1, 5):
        m = rng.random((4, 5)) < 0.7
        tok[f][m] = tok[f - 1][m]
    header = _header(prior)
    assert header.skip_map and header.video_cond
    data, info = encode_tokens(tok, header, prior, CodecOptions(tile_batch=2))
    h, back = decode_tokens(data, prior)
    assert np.array_equal(back, tok) and h.skip_map and h.version == (2, 1)
    plain_prior = skip_prior(temporal_copy=0.0)  # the same weights without skip maps
    plain_prior.load_state_dict(prior.state_dict())
    plain, _ = encode_tokens(tok, _header(plain_prior), plain_prior)
    assert decode_tokens(plain, plain_prior)[0].version == (2, 0)
    assert len(data) < len(plain)


def test_skip_flag_needs_an_ar_video_prior():
    header = _header(skip_prior())
    header.coder = "parallel"
    with pytest.raises(ValueError, match="skip maps"):
        check_header(header, Limits())
    with pytest.raises(ConfigError, match="temporal_copy"):
        PriorConfig(kind="parallel", bits=18, group_bits=6, passes=5, video=True, temporal_copy=0.1)
    with pytest.raises(ConfigError, match="temporal_copy"):
        PriorConfig(kind="ar", bits=18, group_bits=6, temporal_copy=0.1)  # no video


def test_a_plain_prior_keeps_its_id():
    cfg = dict(kind="ar", bits=18, group_bits=6, width=16, layers=1, heads=2, mlp_ratio=2.0, tile=[3, 4], video=True)
    torch.manual_seed(0)
    a = TokenPrior(cfg)
    assert "temporal_copy" not in a.config_dict()
    b = TokenPrior({**cfg, "temporal_copy": 0.1})
    b.load_state_dict(a.state_dict())
    assert b.config_dict()["temporal_copy"] == 0.1 and a.weights_hash() != b.weights_hash()


def test_the_prior_loss_counts_only_the_coded_tokens():
    prior = skip_prior()
    rng = np.random.default_rng(2)
    prev = torch.from_numpy(rng.integers(0, 1 << 18, (2, 3, 4)))
    cur = prev.clone()
    assert float(prior_loss(prior, cur, prev, 0).detach()) == 0.0
    assert expected_bits(prior, cur, prev) == 0.0
    cur[0, 1, 2] ^= 5
    full = prior(cur, prev).detach()
    assert float(prior_loss(prior, cur, prev, 0).detach()) == pytest.approx(float(full[0, 6]) / full.numel(), rel=1e-5)


# ---- end to end -------------------------------------------------------------------------------------------
def test_compress_uses_the_prior_threshold_and_decodes_exactly(tmp_path, capsys):
    model = video_model()
    model.save_pretrained(tmp_path / "vm")
    prior = skip_prior(bits=18, rates=[6, 12, 18], temporal_copy=0.3)
    prior.save_pretrained(tmp_path / "p")
    clip = tmp_path / "clip.mp4"
    write_video_lossless(from_uint8(np.load(DATA / "video.npy")), clip, fps=10)
    rc, out, err = run_cli(capsys, "compress", clip, tmp_path / "v.bsq", "--model", tmp_path / "vm", "--prior",
                           tmp_path / "p", "--bits", 12, "--json")
    assert rc == 0, err
    assert json.loads(out)["temporal_copy"] == 0.3
    header, _ = read_container((tmp_path / "v.bsq").read_bytes())
    assert header.skip_map and header.bits == 12
    rc, _, err = run_cli(capsys, "decompress", tmp_path / "v.bsq", tmp_path / "frames", "--model", tmp_path / "vm",
                         "--prior", tmp_path / "p")
    assert rc == 0, err
    assert len(list((tmp_path / "frames").iterdir())) == 5
    # the API: the prior's threshold by default, the option over it, and the decoder needs nothing
    x = from_uint8(np.load(DATA / "video.npy"))
    a = compress(x, model, prior, fps=10, bits=12)
    b = compress(x, model, prior, fps=10, bits=12, options=CodecOptions(temporal_copy=0.0))
    assert a.stats["temporal_copy"] == 0.3 and "temporal_copy" not in b.stats
    assert np.array_equal(decode_tokens(a.data, prior)[1] << 6, tokenize(model, x, bits=12, temporal_copy=0.3))  # 12-bit
    assert decompress(a.data, model, prior).shape == x.shape
    rc, _, err = run_cli(capsys, "compress", clip, tmp_path / "w.bsq", "--model", tmp_path / "vm", "--prior",
                         tmp_path / "p", "--temporal-copy", "5")
    assert rc == 2 and err.count("\n") == 1 and "--temporal-copy" in err and not (tmp_path / "w.bsq").exists()


def test_a_skip_file_with_its_flag_cleared_is_refused():
    prior = skip_prior()
    rng = np.random.default_rng(3)
    tok = np.repeat(rng.integers(0, 1 << 18, (1, 4, 5)), 5, axis=0)
    header = _header(prior)
    data, _ = encode_tokens(tok, header, prior)
    header.skip_map = False
    other, _ = encode_tokens(tok, header, prior)
    assert data != other
    with pytest.raises(BSQFormatError):  # payloads are tied to their header: no silent misdecoding
        decode_tokens(data[:8] + other[8:108] + data[108:], prior)


def test_rd_codes_video_with_the_prior_threshold_and_streams(tmp_path, capsys):
    model = video_model()
    model.save_pretrained(tmp_path / "vm")
    skip_prior(bits=18, rates=[6, 12, 18], temporal_copy=0.3).save_pretrained(tmp_path / "p")
    clip = tmp_path / "v"
    clip.mkdir()
    write_video_lossless(from_uint8(np.load(DATA / "video.npy")), clip / "c.mp4", fps=10)
    args = ["rd", "--data", clip, "--video", "--max-frames", 5, "--model", tmp_path / "vm", "--prior", tmp_path / "p",
            "--codecs", "h264", "--no-lpips", "--bits", "6,18"]
    rc, _, err = run_cli(capsys, *args, "--json", tmp_path / "a.json")
    assert rc == 0, err
    rc, _, err = run_cli(capsys, *args, "--temporal-copy", 0, "--json", tmp_path / "b.json")
    assert rc == 0, err
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["temporal_copy"] == 0.3 and b["temporal_copy"] == 0.0
    ours = {p["label"]: p for p in a["points"] if p["codec"].startswith("bsq-")}
    assert len(ours) == 4 and all(p["exact_round_trip"] for p in ours.values())
    assert any(p.get("stream_exact") for p in ours.values())  # the tokenizer's streaming path, checked once
    plain = {p["label"]: p for p in b["points"] if p["codec"].startswith("bsq-")}
    top = "bsq-raw[vm@18]"
    assert ours[top]["psnr"] != plain[top]["psnr"]  # copied tokens decode to other pixels
    rc, _, err = run_cli(capsys, *args, "--temporal-copy", "nan")
    assert rc == 2 and "--temporal-copy" in err and err.count("\n") == 1
