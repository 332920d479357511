"""The integer prior arithmetic (bsqvit.codec.intops / intprior): exact primitives, tables, and
frequencies that do not depend on threads, tile batches, summation order or device."""

from __future__ import annotations

import decimal
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bsqvit.codec import PriorConfig, TokenPrior
from bsqvit.codec import intops as I
from bsqvit.codec.coding import SymbolCoder, as_engine, code_frame
from bsqvit.codec.intprior import IntPrior

DATA = Path(__file__).resolve().parent / "data" / "codec"


@pytest.fixture(scope="module")
def priors():
    return {name: TokenPrior.from_pretrained(DATA / name) for name in ("prior-ar", "prior-par")}


# ---- primitives against brute force -----------------------------------------------------------------------
def test_isqrt_is_exact_at_and_around_perfect_squares():
    rng = np.random.default_rng(0)
    roots = np.concatenate([np.arange(0, 3000), rng.integers(0, 1 << 31, 20000), [(1 << 31) - 1]])
    v = np.concatenate([roots * roots + d for d in (-1, 0, 1)] + [rng.integers(0, 1 << 62, 20000)])
    v = v[v >= 0]
    got = I.isqrt(torch.from_numpy(v)).numpy()
    assert all(int(g) == math.isqrt(int(x)) for g, x in zip(got, v))


def test_round_shift_and_div_round_match_exact_rationals():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.integers(-(1 << 40), 1 << 40, 5000))
    for s in (0, 1, 5, 16):
        want = [math.floor(decimal.Decimal(int(x)) / (1 << s) + decimal.Decimal("0.5")) for x in a]
        assert I.round_shift(a, s).tolist() == want
    b = torch.from_numpy(rng.integers(1, 1 << 20, 5000))
    want = [math.floor(decimal.Decimal(int(x)) / int(y) + decimal.Decimal("0.5")) for x, y in zip(a, b)]
    assert I.div_round(a, b).tolist() == want


def test_tables_follow_their_functions():
    e = I.exp_table()
    assert e[0] == 1 << 16 and e[-1] == 0 and all(x >= y for x, y in zip(e, e[1:]))
    assert max(abs(v - 65536 * math.exp(-i / 256)) for i, v in enumerate(e)) <= 0.5 + 1e-9
    g = I.gelu_table()
    xs = [(j - 2048) / 256 for j in range(len(g))]
    assert max(abs(v - 4096 * x * 0.5 * (1 + math.erf(x / math.sqrt(2)))) for v, x in zip(g, xs)) <= 0.5 + 1e-6
    x = torch.arange(-40000, 40000)  # beyond the table: identity above, zero below
    y = I.gelu(x)
    assert torch.equal(y[x >= 32768], x[x >= 32768]) and (y[x < -32768] == 0).all()
    ref = 4096 * torch.nn.functional.gelu(x.double() / 4096)
    assert (y - ref).abs().max() <= 1.5


def test_weight_quantization_is_exact_power_of_two_scaling():
    w = torch.randn(7, 33) * torch.logspace(-6, 2, 7)[:, None]
    q, e = I.quantize_rows(w)
    assert q.abs().max() <= 1 << 15 and (q.abs().amax(1) >= 1 << 14).all()  # 15-bit mantissas, none wasted
    back = torch.ldexp(q.double(), -e[:, None].double())
    assert torch.allclose(back, w.double(), rtol=0, atol=float((2.0 ** -e.double()).max()))


def test_integer_matmul_refuses_sizes_that_could_lose_exactness():
    with pytest.raises(ValueError, match="2\\^53"):
        I.matmul(torch.ones(1, 2, dtype=torch.int64), torch.ones(2, 1, dtype=torch.int64), 1 << 53)
    with pytest.raises(ValueError, match="integer range"):
        IntPrior(TokenPrior(PriorConfig(width=256, heads=2, layers=1, tile=[4, 4])))  # head dim 128
    with pytest.raises(ValueError, match="8192"):
        IntPrior(TokenPrior(PriorConfig(width=16, heads=2, layers=1, tile=[128, 128])))


def test_integer_prior_follows_the_float_prior(priors):
    torch.manual_seed(0)
    prior = TokenPrior(PriorConfig(kind="parallel", width=64, layers=2, heads=4, tile=[6, 6], passes=5)).eval()
    for p in prior.parameters():  # trained-like magnitudes
        p.data.add_(torch.randn_like(p) * 0.05)
    ip = IntPrior(prior)
    tok = torch.randint(0, 1 << 18, (2, 20))
    rows, cols = torch.arange(20).div(5, rounding_mode="floor").expand(2, -1), (torch.arange(20) % 5).expand(2, -1)
    vis = torch.rand(2, 20) < 0.5
    with torch.no_grad():
        ff = prior.parallel_features(tok, rows, cols, vis, None, None)
        fi = ip.parallel_features(tok, rows, cols, vis, None, None)
        assert (fi.double() / 4096 - ff).abs().max() < 0.02
        lf, li = prior.group_logits(ff, 1, tok[..., None] & 511), ip.group_logits(fi, 1, tok[..., None] & 511)
        assert (li.double() / 4096 - lf).abs().max() < 0.03


# ---- invariance: threads, tile batches, summation order ------------------------------------------------------
def _freqs(prior, h, w, tokens, prev, tile_batch):
    """Every frequency matrix the encoder computes for one frame, concatenated."""
    enc, seen = SymbolCoder(16), []
    orig = enc.code

    def record(f, e, symbols):
        seen.append(f.clone())
        return orig(f, e, symbols)

    enc.code = record
    with torch.inference_mode():
        code_frame(prior, enc, h, w, tokens, prev, tile_batch)
    return torch.cat(seen), enc.finish()


def _shuffled_matmul(real):
    """``matmul`` with the inner dimension permuted and summed in two halves, the added term last:
    another summation order."""
    def matmul(a, b, bound, add=None):
        K = a.shape[-1]
        perm = torch.randperm(K)
        a, b = a[..., perm], b[..., perm, :]
        h = K // 2
        out = real(a[..., :h], b[..., :h, :], bound) + real(a[..., h:], b[..., h:, :], bound)
        return out if add is None else out + add
    return matmul


@pytest.mark.parametrize("name", ["prior-ar", "prior-par"])
def test_frequencies_do_not_depend_on_threads_batches_or_summation_order(name, priors, monkeypatch):
    prior = priors[name]
    rng = np.random.default_rng(2)
    tokens, prev = rng.integers(0, 1 << 18, (2, 7, 9))
    prev = prev if prior.config.video else None
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref, data = _freqs(prior, 7, 9, tokens, prev, 1)
        torch.set_num_threads(2)
        for tb in (2, 16):
            f, d = _freqs(prior, 7, 9, tokens, prev, tb)
            assert torch.equal(f, ref) and d == data
    finally:
        torch.set_num_threads(old)
    monkeypatch.setattr(I, "matmul", _shuffled_matmul(I.matmul))
    prior._int_engine = None  # rebuild with the patched matmul in place
    f, d = _freqs(prior, 7, 9, tokens, prev, 3)
    assert torch.equal(f, ref) and d == data


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["prior-ar", "prior-par"])
def test_frequencies_on_cuda_equal_the_cpu_ones(name, priors):
    prior = priors[name]
    rng = np.random.default_rng(3)
    tokens, prev = rng.integers(0, 1 << 18, (2, 7, 9))
    prev = prev if prior.config.video else None
    ref, data = _freqs(prior, 7, 9, tokens, prev, 4)
    gpu = TokenPrior.from_pretrained(DATA / name).cuda()
    f, d = _freqs(as_engine(gpu), 7, 9, tokens, prev, 4)
    assert torch.equal(f.cpu(), ref) and d == data


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_golden_files_decode_under_other_instruction_sets(capability):
    """The kernels an older or smaller CPU gets (no vectorisation, or AVX2 only): same tokens."""
    import json
    import os
    import subprocess
    import sys

    code = ("import hashlib, json, sys, numpy as np; from pathlib import Path; "
            "from bsqvit.codec import TokenPrior, decode_tokens; d = Path(sys.argv[1]); "
            "g = json.loads((d / 'golden.json').read_text())['files']; "
            "print(json.dumps({n: hashlib.sha256(np.ascontiguousarray(decode_tokens((d / f'{n}.bsq').read_bytes(), "
            "TokenPrior.from_pretrained(d / f['prior']) if f['prior'] else None)[1], '<i8').tobytes()).hexdigest() "
            "for n, f in g.items()}))")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, str(DATA)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    golden = json.loads((DATA / "golden.json").read_text())["files"]
    assert got == {n: f["tokens_sha256"] for n, f in golden.items()}


def test_random_schedule_with_uneven_tiles_round_trips_for_any_tile_batch():
    """Regression: a small tile can have no position in a pass where a larger one has some."""
    from bsqvit.codec import CodecOptions, Header, decode_tokens, encode_tokens
    from bsqvit.codec.container import short_id

    torch.manual_seed(0)
    p = TokenPrior(dict(kind="parallel", bits=6, group_bits=3, width=16, layers=1, heads=2, mlp_ratio=2.0,
                        tile=[2, 2], passes=4, schedule="random")).eval()
    h = Header(media="image", coder="parallel", tokenizer_id="00" * 16, bits=6, patch_size=4, height=12, width=12,
               frames=1, fps=0.0, pad_bottom=0, pad_right=0, pad_mode="replicate", chunk_frames=1,
               frames_per_chunk=1, n_chunks=1, prior_id=short_id(p.weights_hash()), group_bits=3, tile=(2, 2),
               passes=4, schedule="random", arithmetic="int-fx12", prob_bits=16)
    tok = np.random.default_rng(0).integers(0, 64, (1, 3, 3))
    files = set()
    for tb in (1, 32):
        data, _ = encode_tokens(tok, h, p, CodecOptions(tile_batch=tb))
        assert np.array_equal(decode_tokens(data, p, options=CodecOptions(tile_batch=33 - tb))[1], tok)
        files.add(data)
    assert len(files) == 1
