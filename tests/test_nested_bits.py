"""Nested ("variable rate") BSQ: keeping the first L' of L bits."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bsqvit import BSQViT
from bsqvit.quantizers import BinarySphericalQuantizer, QuantizerConfig, build_quantizer
from bsqvit.quantizers.bsq import keep_bits

LEVELS = [6, 12, 18]


def _q() -> BinarySphericalQuantizer:
    return BinarySphericalQuantizer(18, group_size=9, nested_bits=LEVELS)


def test_kept_codes_lie_on_the_sphere_of_the_kept_bits():
    q = _q().eval()
    z = torch.randn(500, 18)
    for L in LEVELS:
        out = q(z, bits=L)
        zq = out.quantized
        assert torch.all(zq[:, L:] == 0)
        assert torch.allclose(zq[:, :L].abs(), torch.full((500, L), 1 / math.sqrt(L)))
        assert torch.allclose(zq.norm(dim=-1), torch.ones(500))
        # the kept bits are the signs of the first L channels; the index has the others cleared
        ref = (z[:, :L] > 0).long()
        want = (ref << torch.arange(17, 17 - L, -1)).sum(-1)
        assert torch.equal(out.indices, want)
        torch.testing.assert_close(q.indices_to_codes(out.indices, bits=L), zq)


def test_prefixes_nest():
    """A token at L' is the token at L with its low bits cleared, at every level."""
    q = _q().eval()
    z = torch.randn(300, 18)
    full = q(z).indices
    for L in LEVELS:
        assert torch.equal(q(z, bits=L).indices, keep_bits(full, 18, L))
        assert torch.equal(q.keep_bits(full, L), keep_bits(full, 18, L))


def test_dropped_channels_get_no_gradient():
    """The kept code is a function of the kept channels only (renormalised on their own sphere)."""
    q = _q().eval()
    z = torch.randn(64, 18, requires_grad=True)
    (q(z, bits=6).quantized * torch.randn(64, 18)).sum().backward()
    kept, dropped = z.grad[:, :6].abs().max(), z.grad[:, 6:].abs().max()
    assert kept > 1e-3 and dropped < 1e-5 * kept  # zero up to rounding


def test_training_draws_levels_and_eval_keeps_all():
    q = _q().train()
    torch.manual_seed(0)
    seen = set()
    for _ in range(60):
        zq = q(torch.randn(8, 18)).quantized
        seen.add(int((zq[0] != 0).sum()))
    assert seen == set(LEVELS)
    q.eval()
    assert int((q(torch.randn(8, 18)).quantized[0] != 0).sum()) == 18


@pytest.mark.parametrize("bad", [[6, 12], [12, 6, 18], [0, 18], [6, 6, 18]])
def test_bad_levels_are_rejected(bad):
    with pytest.raises(ValueError, match="nested_bits"):
        build_quantizer(QuantizerConfig(type="bsq", dim=18, nested_bits=bad))
    with pytest.raises(ValueError, match="nested_bits"):
        QuantizerConfig(type="vq", dim=18, nested_bits=[18])


def test_unknown_level_and_fixed_model_are_errors():
    q = _q()
    with pytest.raises(ValueError, match="trained levels"):
        q.indices_to_codes(torch.zeros(3, dtype=torch.long), bits=7)
    fixed = BinarySphericalQuantizer(18)
    with pytest.raises(ValueError, match="not trained with nested_bits"):
        fixed.keep_bits(torch.zeros(3, dtype=torch.long), 12)
    assert torch.equal(fixed.keep_bits(torch.tensor([5]), 18), torch.tensor([5]))


def test_model_encode_decode_at_every_rate():
    torch.manual_seed(0)
    m = BSQViT.from_preset("tiny", quantizer=dict(type="bsq", dim=18, group_size=9, nested_bits=LEVELS)).eval()
    x = torch.rand(2, 3, 32, 40) * 2 - 1
    for L in LEVELS:
        idx = m.encode(x, bits=L)
        out = m(x, bits=L)
        assert torch.equal(out.indices, idx)
        torch.testing.assert_close(m.decode(idx, size=(32, 40), bits=L), out.reconstruction, atol=1e-5, rtol=0)
        assert torch.all(idx & ((1 << (18 - L)) - 1) == 0)
    with pytest.raises(ValueError, match="trained levels"):
        m.encode(x, bits=9)


# ---- the codec at every rate ------------------------------------------------------------------------------
from bsqvit.cli import main  # noqa: E402
from bsqvit.codec import CodecOptions, compress, decompress  # noqa: E402
from bsqvit.codec.container import read_container  # noqa: E402
from bsqvit.codec.prior import PriorConfig, TokenPrior  # noqa: E402
from bsqvit.io import InputError  # noqa: E402


@pytest.fixture(scope="module")
def nested():
    torch.manual_seed(1)
    model = BSQViT.from_preset("tiny", quantizer=dict(type="bsq", dim=18, group_size=9, nested_bits=LEVELS)).eval()
    priors = {kind: TokenPrior(PriorConfig(kind=kind, bits=18, group_bits=6, rates=LEVELS, width=32, layers=1, heads=2,
                                           tile=[4, 4], passes=5)).eval() for kind in ("ar", "parallel")}
    x = torch.rand(3, 40, 56) * 2 - 1
    return model, priors, x


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind", ["raw", "ar", "parallel"])
def test_files_at_every_rate_decode_to_the_models_reconstruction(nested, kind):
    model, priors, x = nested
    prior = None if kind == "raw" else priors[kind]
    sizes = []
    for L in LEVELS:
        res = compress(x, model, prior, options=CodecOptions(tile_batch=2), bits=L)
        header, _ = read_container(res.data)
        assert header.bits == L
        want = model.decode(model.encode(x[None], bits=L), size=(40, 56), bits=L)[0]
        torch.testing.assert_close(decompress(res.data, model, prior), want, atol=0, rtol=0)
        sizes.append(len(res.data))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_the_integer_prior_at_a_rate_codes_what_the_float_prior_predicts(nested):
    """The coder's ideal bits (integer engine at rate L') match the float prior's teacher-forced
    bits at L' on the same tokens, and the rates differ (the rate vector and group count matter)."""
    model, priors, x = nested
    prior = priors["ar"]
    per_rate = []
    for L in LEVELS:
        res = compress(x, model, prior, bits=L)
        tokens = model.encode(x[None], bits=L) >> (18 - L)  # (1, 5, 7): one 5x7 frame, tiles 4x4
        with torch.no_grad():
            nll = sum(float(prior(tokens[:, r0:r0 + r, c0:c0 + q].reshape(1, r, q), bits=L).sum())
                      for r0, r in ((0, 3), (3, 2)) for c0, q in ((0, 4), (4, 3)))
        assert res.stats["ideal_bits_per_token"] * 35 == pytest.approx(nll, rel=0.02)
        per_rate.append(nll / 35)
    assert per_rate == sorted(per_rate)


def test_rates_are_checked(nested, tmp_path):
    model, priors, x = nested
    with pytest.raises(InputError, match="trained levels"):
        compress(x, model, None, bits=9)
    fixed = TokenPrior(PriorConfig(kind="ar", bits=18, group_bits=6, width=32, layers=1, heads=2, tile=[4, 4])).eval()
    with pytest.raises(InputError, match="rates"):
        compress(x, model, fixed, bits=12)
    with pytest.raises(Exception, match="rates must be increasing multiples"):
        PriorConfig(bits=18, group_bits=6, rates=[9, 18])
    data = compress(x, model, None, bits=12).data
    other = BSQViT.from_preset("tiny", quantizer=dict(type="bsq", dim=18, group_size=9)).eval()
    other.load_state_dict(model.state_dict())  # same weights, but no nested levels: another model
    with pytest.raises(Exception, match="other tokenizer weights"):
        decompress(data, other)


def test_compress_cli_takes_bits(nested, tmp_path, capsys):
    model, _, x = nested
    mdir = tmp_path / "m"
    model.save_pretrained(mdir)
    from bsqvit.io import save_image
    save_image(x, tmp_path / "in.png")
    for L in (6, 18):
        rc = main(["compress", str(tmp_path / "in.png"), str(tmp_path / f"o{L}.bsq"), "--model", str(mdir),
                   "--prior", "none", "--bits", str(L), "--json"])
        assert rc == 0
    assert (tmp_path / "o6.bsq").stat().st_size < (tmp_path / "o18.bsq").stat().st_size
    assert main(["decompress", str(tmp_path / "o6.bsq"), str(tmp_path / "o6.png"), "--model", str(mdir)]) == 0
    assert main(["reconstruct", str(tmp_path / "in.png"), str(tmp_path / "r6.png"), "--model", str(mdir), "--bits", "6"]) == 0
    from PIL import Image
    assert np.array_equal(np.array(Image.open(tmp_path / "o6.png")), np.array(Image.open(tmp_path / "r6.png")))
    capsys.readouterr()
    rc = main(["compress", str(tmp_path / "in.png"), str(tmp_path / "bad.bsq"), "--model", str(mdir),
               "--prior", "none", "--bits", "7"])
    err = capsys.readouterr().err
    assert rc == 2 and "trained levels" in err and "Traceback" not in err
    assert not (tmp_path / "bad.bsq").exists()


@pytest.mark.parametrize("kind", ["ar", "parallel"])
def test_the_independent_numpy_decoder_reads_nested_files(nested, kind, tmp_path):
    """docs/FORMAT.md section 3.5, re-implemented in tests/numpy_*.py, decodes every rate."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    import numpy_decoder as nd

    model, priors, x = nested
    priors[kind].save_pretrained(tmp_path / "p")
    for L in (12,):
        res = compress(x, model, priors[kind], bits=L)
        _, tokens = nd.decode_file(res.data, tmp_path / "p")
        assert np.array_equal(tokens[0], (model.encode(x[None], bits=L)[0] >> (18 - L)).numpy())


def test_rd_draws_a_curve_from_one_nested_model(tmp_path):
    """`bsqvit rd` codes a nested model at each of its rates: one point per rate, a BD-rate from
    the bjontegaard package once a curve has >= 4 points."""
    from bsqvit.evaluation.rd import run_rd
    from bsqvit.io import save_image

    torch.manual_seed(2)
    levels = [6, 9, 12, 15, 18]
    model = BSQViT.from_preset("tiny", quantizer=dict(type="bsq", dim=18, group_size=9, nested_bits=levels)).eval()
    prior = TokenPrior(PriorConfig(kind="ar", bits=18, group_bits=3, rates=levels, width=16, layers=1, heads=2,
                                   tile=[4, 4])).eval()
    model.save_pretrained(tmp_path / "m")
    prior.save_pretrained(tmp_path / "p")
    (tmp_path / "data").mkdir()
    for i in range(2):
        save_image(torch.rand(3, 32, 48) * 2 - 1, tmp_path / "data" / f"{i}.png")
    rep = run_rd(str(tmp_path / "data"), [str(tmp_path / "m")], [str(tmp_path / "p")], codecs=["jpeg"], lpips=False,
                 rates=[6, 9, 12, 18])
    ours = [p for p in rep["points"] if p["codec"] == "bsq-ar"]
    raw = [p for p in rep["points"] if p["codec"] == "bsq-raw"]
    assert len(ours) == len(raw) == 4 and all(p["exact_round_trip"] for p in ours)
    assert [p["setting"] for p in raw] == [f"m@{b}" for b in (6, 9, 12, 18)]
    assert [p["ideal_bits_per_token"] for p in raw] == [6, 9, 12, 18]  # raw fields of L' bits
    assert all(a["bpp"] < b["bpp"] for a, b in zip(raw, raw[1:]))
    bd = rep["bd_rate"]["bsq-ar[p]"]["jpeg"]
    assert bd["method"].startswith("bjontegaard")


def test_train_prior_learns_every_rate_of_a_nested_tokenizer(nested, tmp_path):
    """train-prior takes the rates from the tokenizer's levels, draws one per batch, reports the
    validation bits at each rate, and the trained prior codes every rate exactly."""
    import json

    from bsqvit.io import save_image

    model, _, _ = nested
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "imgs").mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        save_image(torch.rand(3, 48, 48, generator=g) * 2 - 1, tmp_path / "imgs" / f"{i}.png")
    cfg = tmp_path / "p.yaml"
    cfg.write_text("prior: {kind: ar, group_bits: 6, width: 16, layers: 1, heads: 2, tile: [4, 4]}\n"
                   f"data: {{train: [{tmp_path / 'imgs'}], crop: 32, crops_per_image: 2, val_fraction: 0.25}}\n"
                   "batch_size: 4\nsteps: 4\nlog_every: 2\neval_every: 4\ncheckpoint_every: 4\nthreads: 1\n")
    assert main(["train-prior", str(cfg), "--tokenizer", str(tmp_path / "m"), "--output-dir", str(tmp_path / "r"),
                 "--no-progress"]) == 0
    prior = TokenPrior.from_pretrained(tmp_path / "r" / "prior")
    assert prior.config.rates == LEVELS and prior.config.group_bits == 6
    ev = json.loads((tmp_path / "r" / "eval.jsonl").read_text().splitlines()[-1])
    per_rate = [ev["val_bits_per_token@6"], ev["val_bits_per_token@12"], ev["val_bits_per_token"]]
    assert per_rate == sorted(per_rate) and per_rate[0] < 6.5  # about 6 bits of 6 at first
    x = torch.rand(3, 24, 40, generator=g) * 2 - 1
    for L in LEVELS:
        res = compress(x, model, prior, bits=L)
        assert torch.equal(decompress(res.data, model, prior), decompress(compress(x, model, None, bits=L).data, model))


def test_rd_on_frame_folders_with_a_streaming_nested_video_model(tmp_path):
    """`rd --video` reads folders of frames (DAVIS) as videos, codes a block-causal nested model at
    its rates with a previous-frame prior, and checks the per-frame streaming tokens against the file."""
    from bsqvit.evaluation.rd import run_rd
    from bsqvit.io import save_image

    torch.manual_seed(3)
    levels = [9, 18]
    model = BSQViT.from_preset("tiny", num_frames=2, mask_type="block-causal", mask_block_size=1,
                               quantizer=dict(type="bsq", dim=18, group_size=9, nested_bits=levels)).eval()
    prior = TokenPrior(PriorConfig(kind="ar", bits=18, group_bits=9, rates=levels, video=True, width=16, layers=1,
                                   heads=2, tile=[4, 4])).eval()
    model.save_pretrained(tmp_path / "m")
    prior.save_pretrained(tmp_path / "p")
    for seq in ("a", "b"):
        (tmp_path / "data" / seq).mkdir(parents=True)
        for f in range(3):  # three frames: a clip of 2 and a shorter last clip
            save_image(torch.rand(3, 24, 40) * 2 - 1, tmp_path / "data" / seq / f"{f:05d}.png")
    rep = run_rd(str(tmp_path / "data"), [str(tmp_path / "m")], [str(tmp_path / "p")], video=True, codecs=["h264"],
                 lpips=False, max_frames=3)
    assert rep["items"] == ["a", "b"]
    ours = [p for p in rep["points"] if p["codec"].startswith("bsq-")]
    assert {p["setting"] for p in ours} == {"m@9", "m@18", "m@9+p", "m@18+p"}
    streamed = [p for p in ours if "stream_exact" in p]  # once per model, at its highest rate
    assert {p["setting"] for p in streamed} == {"m@18", "m@18+p"}
    assert all(p["stream_exact"] and p["stream_encode_s_per_frame"] > 0 for p in streamed)
    assert all(p["exact_round_trip"] for p in ours)
    assert "Per-frame streaming" in rep["markdown"]
    (tmp_path / "data" / "b" / "00002.png").unlink()
    save_image(torch.rand(3, 16, 40) * 2 - 1, tmp_path / "data" / "b" / "00002.png")
    with pytest.raises(InputError, match="frame sizes differ"):
        run_rd(str(tmp_path / "data"), [str(tmp_path / "m")], [], video=True, codecs=["h264"], lpips=False)
