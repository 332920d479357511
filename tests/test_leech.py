"""Λ24-SQ: the Golay code, the Leech kissing configuration, the exact nearest-code search
(against brute force, same tie rule), the quantizer, and a tiny end-to-end CLI run.

The 10^6-input equality run lives in ``benchmarks/leech_search.py --equality 1000000``; here a
slice of each input family is checked.
"""

import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bsqvit import BSQViT
from bsqvit.cli import main
from bsqvit.models.presets import get_preset
from bsqvit.quantizers import QuantizerConfig, build_quantizer, golay
from bsqvit.quantizers import leech as L

N_CODES = 196560


@pytest.fixture(scope="module")
def E() -> torch.Tensor:
    return L.lattice_vectors()


# ---- Golay code ------------------------------------------------------------------------------
def test_golay_code():
    words = golay.codewords().long()
    assert golay.weight_distribution() == {0: 1, 8: 759, 12: 2576, 16: 759, 24: 1}
    assert torch.unique(words, dim=0).shape[0] == 4096
    g = golay.generator_matrix().long()
    assert torch.equal(g[:, :12], torch.eye(12, dtype=torch.long))
    assert not ((g @ g.t()) % 2).any()  # self-dual: every pair of generators is orthogonal
    # codeword k's first 12 coordinates are the bits of k (MSB first); closed under XOR
    k = torch.arange(4096)
    assert torch.equal(words[:, :12], (k[:, None] >> torch.arange(11, -1, -1)) & 1)
    a, b = torch.randint(0, 4096, (2, 500))
    assert torch.equal(words[a] ^ words[b], words[a ^ b])
    oct_ = golay.octads()
    assert oct_.shape == (759, 8) and (oct_.diff(dim=1) > 0).all()
    assert [tuple(r) for r in oct_.tolist()] == sorted(tuple(r) for r in oct_.tolist())
    # Steiner system S(5, 8, 24): every 5-set lies in exactly one octad
    five = torch.tensor([[0, 1, 2, 3, 4], [3, 7, 11, 19, 23], [5, 6, 13, 17, 20]])
    member = torch.zeros(759, 24, dtype=torch.bool).scatter_(1, oct_, True)
    assert (member[:, five].all(-1).sum(0) == 1).all()


# ---- the codebook ------------------------------------------------------------------------------
def test_codebook_is_the_kissing_configuration(E):
    assert E.shape == (N_CODES, 24) and E.dtype == torch.int64
    assert ((E * E).sum(-1) == 32).all()
    assert torch.unique(E, dim=0).shape[0] == N_CODES
    # shapes in index order
    shape, sub = L.split_index(torch.arange(N_CODES))
    assert torch.equal(L.join_index(shape, sub), torch.arange(N_CODES))
    nz = (E != 0).sum(-1)
    for s, (count, support, values) in enumerate([(1104, 2, {-4, 0, 4}), (97152, 8, {-2, 0, 2}),
                                                  (98304, 24, {-3, -1, 1, 3})], start=1):
        rows = E[shape == s]
        assert rows.shape[0] == count and (nz[shape == s] == support).all()
        assert set(rows.unique().tolist()) == values
    # lattice conditions (Conway-Sloane, scaled by sqrt 8): all coordinates of one parity, sum = 4m mod 8
    m = E[:, 0] % 2
    assert ((E % 2) == m[:, None]).all() and ((E.sum(-1) - 4 * m) % 8 == 0).all()
    cb = L.leech_codebook()
    assert torch.allclose(cb.norm(dim=-1), torch.ones(N_CODES)) and torch.allclose(cb * math.sqrt(32), E.float())


def test_index_order_is_the_documented_one(E):
    pairs, octads, words = golay.pairs(), golay.octads(), golay.codewords().long()
    i = torch.randint(0, 1104, (200,))
    v = E[i]
    p = pairs[i // 4]
    assert torch.equal(v.gather(1, p), 4 * (1 - 2 * torch.stack([(i >> 1) & 1, i & 1], -1)))
    j = torch.randint(0, 97152, (500,))
    v = E[1104 + j]
    vals = v.gather(1, octads[j // 128])
    t = ((vals[:, :7] < 0).long() << torch.arange(6, -1, -1)).sum(-1)
    assert torch.equal(t, j % 128) and ((vals < 0).sum(-1) % 2 == 0).all() and (vals.abs() == 2).all()
    k = torch.randint(0, 98304, (500,))
    v = E[98256 + k]
    pos = v.abs().argmax(-1)
    assert torch.equal(pos, k % 24)
    expect = 1 - 2 * words[k // 24]
    expect[torch.arange(500), pos] *= -3
    assert torch.equal(v, expect)


def test_negation_closed(E):
    neg = L.negation_index(torch.arange(N_CODES))
    assert torch.equal(E[neg], -E)
    assert torch.equal(L.negation_index(neg), torch.arange(N_CODES))


def _inner_product_counts(E: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(len(rows), 9) counts of inner products -32, -24, ..., 32 (steps of 8) with all codes.

    Integer vectors; their float64 products are exact, and any value that is not a multiple of
    8 in [-32, 32] fails the test."""
    Ef = E.double()
    out = []
    for s in range(0, rows.numel(), 128):
        g = (Ef[rows[s : s + 128]] @ Ef.t()).long()
        assert ((g % 8 == 0) & (g.abs() <= 32)).all(), "inner product outside 8Z ∩ [-32, 32]"
        r = torch.arange(g.shape[0])[:, None] * 9 + (g + 32) // 8
        out.append(torch.bincount(r.flatten(), minlength=9 * g.shape[0]).view(-1, 9))
    return torch.cat(out)


def test_inner_product_distribution(E):
    """Every row sees 1, 4600, 47104, 93150, 47104, 4600, 1 codes at cos 1, 1/2, 1/4, 0, ...
    (and none at ±3/4): 640 rows (120 of each shape's first and last, 400 random), each against
    all 196,560 codes."""
    ip = {v: 0 for v in range(-32, 33, 8)} | L.KISSING_INNER_PRODUCTS
    want = torch.tensor([ip[v] for v in range(-32, 33, 8)])
    g = torch.Generator().manual_seed(0)
    ends = [torch.arange(o, o + 20) for o in L.SHAPE_OFFSETS] + [torch.arange(o + n - 20, o + n) for o, n in
                                                                  zip(L.SHAPE_OFFSETS, L.SHAPE_SIZES)]
    rows = torch.cat(ends + [torch.randint(0, N_CODES, (400,), generator=g)])
    assert (_inner_product_counts(E, rows) == want).all()


# ---- nearest-code search ----------------------------------------------------------------------
def _check(z: torch.Tensor):
    got, want = L.nearest(z), L.nearest_bruteforce(z)
    bad = (got != want).nonzero().flatten()
    assert bad.numel() == 0, f"{bad.numel()} mismatches, e.g. z={z[bad[0]].tolist()} got {got[bad[0]]} want {want[bad[0]]}"


def test_nearest_equals_bruteforce_gaussian():
    torch.manual_seed(1)
    _check(torch.randn(3000, 24))
    _check(torch.randn(300, 24, dtype=torch.float64) * 1e3)


def test_nearest_equals_bruteforce_near_codewords(E):
    torch.manual_seed(2)
    i = torch.randint(0, N_CODES, (2000,))
    noise = torch.randn(2000, 24) * torch.tensor([1e-3, 0.05, 0.2, 0.5]).repeat(500)[:, None]
    _check(E[i].float() / math.sqrt(32) + noise)


def test_nearest_exact_ties():
    """Small integer and half-integer inputs: many codes tie exactly; the smallest index wins."""
    torch.manual_seed(3)
    _check(torch.randint(-2, 3, (1200, 24)).float())
    _check(torch.randint(-3, 4, (600, 24)).float() / 2)
    _check((torch.rand(600, 24) < 0.15).float() * torch.randint(-1, 2, (600, 24)))  # sparse
    _check(torch.cat([torch.zeros(1, 24), torch.ones(1, 24), torch.eye(24), -torch.eye(24)]))


def test_nearest_properties(E):
    i = torch.cat([torch.arange(0, N_CODES, 11), torch.tensor([N_CODES - 1])])
    assert torch.equal(L.nearest(E[i]), i)  # codes find themselves (every 11th: all in the benchmark)
    torch.manual_seed(4)
    z = torch.randn(2000, 24, dtype=torch.float64)
    i = L.nearest(z)
    for scale in (1e-6, 0.37, 3.0, 1e8):
        assert torch.equal(L.nearest(z * scale), i)
    assert torch.equal(L.nearest(-z), L.negation_index(i))
    assert L.nearest(z.view(2, 1000, 24)).shape == (2, 1000)
    assert torch.equal(L.nearest(z, chunk_size=333), i)


# ---- quantizer, preset, CLI ----------------------------------------------------------------------
def test_quantizer_contract():
    with pytest.raises(ValueError, match="24"):
        QuantizerConfig(type="leech", dim=18)
    q = build_quantizer(QuantizerConfig(type="leech", dim=24, commitment_weight=0.25))
    assert q.codebook_size == N_CODES and q.dim == 24 and abs(q.bits - math.log2(N_CODES)) < 1e-12
    z = torch.randn(2, 5, 24, requires_grad=True)
    out = q(z)
    u = torch.nn.functional.normalize(z.detach(), dim=-1)
    assert out.indices.shape == (2, 5) and torch.equal(out.indices, L.nearest(u))
    assert torch.allclose(out.quantized, q.indices_to_codes(out.indices), atol=1e-6)
    assert torch.allclose(out.loss, 0.25 * ((u - out.quantized.detach()) ** 2).sum(-1).mean())
    out.quantized.sum().backward()  # straight-through: the gradient of the normalisation
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert 1 <= out.used_codes <= 10
    assert float(build_quantizer(QuantizerConfig(type="leech", dim=24))(z).loss.detach()) == 0.0


def test_small_leech_preset():
    cfg = get_preset("small-leech")
    small = get_preset("small")
    assert cfg.quantizer.type == "leech" and cfg.quantizer.dim == 24
    assert (cfg.image_size, cfg.width, cfg.layers) == (small.image_size, small.width, small.layers)


def _tiny_leech(**kw) -> BSQViT:
    return BSQViT.from_preset("small-leech", image_size=[32, 32], width=64, layers=1, heads=2, **kw)


def test_cli_end_to_end(tmp_path, capsys):
    torch.manual_seed(0)
    _tiny_leech().save_pretrained(tmp_path / "m")
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (21, 30, 3), dtype=np.uint8)).save(img)
    assert main(["reconstruct", str(img), str(tmp_path / "r.png"), "--model", str(tmp_path / "m")]) == 0
    assert Image.open(tmp_path / "r.png").size == (30, 21)
    assert main(["tokenize", str(img), str(tmp_path / "t.npz"), "--model", str(tmp_path / "m")]) == 0
    tok = np.load(tmp_path / "t.npz")
    assert tok["indices"].shape == (3, 4) and 0 <= tok["indices"].min() and tok["indices"].max() < N_CODES
    assert abs(float(tok["bits"]) - math.log2(N_CODES)) < 1e-9
    assert main(["detokenize", str(tmp_path / "t.npz"), str(tmp_path / "d.png"), "--model", str(tmp_path / "m")]) == 0
    a, b = np.asarray(Image.open(tmp_path / "r.png")), np.asarray(Image.open(tmp_path / "d.png"))
    assert np.array_equal(a, b)  # reconstruct == detokenize(tokenize)
    capsys.readouterr()


def test_cli_train_a_few_steps(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    cfg = {
        "preset": "small-leech",
        "model": {"image_size": [32, 32], "width": 64, "layers": 1, "heads": 2},
        "data": {"kind": "image", "train": [str(imgs)], "val": None, "resolution": 32, "batch_size": 2,
                 "num_workers": 0},
        "loss": {"perceptual": "none", "gan_weight": 0.0},
        "optim": {"lr": 3e-4, "warmup_steps": 1, "amp": "none"},
        "steps": 3, "log_every": 1, "eval_every": 0, "checkpoint_every": 3, "threads": 1,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    m = BSQViT.from_pretrained(tmp_path / "run" / "model")
    assert m.quantizer.codebook_size == N_CODES


# ---- reference checkpoints: their index order -------------------------------------------------------------
def test_index_map_recovers_any_order_and_scale():
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(N_CODES, generator=g)
    theirs = L.leech_codebook(torch.float64)[perm] * 2.5  # another order, another scale
    assert torch.equal(L.index_map(theirs), perm)
    bad = theirs.clone()
    bad[7] = bad[8]
    with pytest.raises(ValueError, match="repeat"):
        L.index_map(bad)
    bad[7] = torch.randn(24, dtype=torch.float64, generator=g)
    with pytest.raises(ValueError, match="row 7 is not a Leech minimal vector"):
        L.index_map(bad)
    with pytest.raises(ValueError, match="196560"):
        L.index_map(theirs[:10])


def test_official_lambda24_checkpoint_maps_its_order_both_ways(tmp_path):
    """A VITVQModel checkpoint with a frozen, permuted Λ24 embedding loads as a leech tokenizer
    whose tokens convert to and from the checkpoint's own indices (same codes)."""
    from bsqvit.models.official import config_from_reference, to_reference_state_dict

    ref = {"model": {"target": "transcoder.models.bsqvit.VITVQModel", "params": {
        "embed_dim": 24, "n_embed": N_CODES,
        "vitconfig": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "mlp_ratio": 4.0},
        "dvitconfig": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "mlp_ratio": 4.0,
                       "dim_ffn_output": 64}}}}
    torch.manual_seed(0)
    live = BSQViT(config_from_reference(ref, leech=True)).eval()
    perm = torch.randperm(N_CODES, generator=torch.Generator().manual_seed(1))
    sd = {f"module.{k}": v for k, v in to_reference_state_dict(live.state_dict()).items()}
    sd["module.quantize.embedding.weight"] = L.leech_codebook()[perm]
    torch.save({"state_dict": sd}, tmp_path / "ck.pt")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(ref))
    m = BSQViT.from_official(tmp_path / "ck.pt", tmp_path / "c.yaml")
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    ours = m.encode(x)
    assert torch.equal(ours, live.encode(x))
    theirs = m.quantizer.to_reference_indices(ours)
    assert torch.equal(perm[theirs], ours)  # their row `theirs` is our code `ours`
    assert torch.equal(m.quantizer.from_reference_indices(theirs), ours)
    with pytest.raises(ValueError, match="no reference index order"):
        live.quantizer.to_reference_indices(ours)
    sd["module.quantize.embedding.weight"] = torch.randn(512, 24)
    torch.save({"state_dict": sd}, tmp_path / "vq.pt")
    with pytest.raises(Exception, match="learned VQ codebook"):
        BSQViT.from_official(tmp_path / "vq.pt", tmp_path / "c.yaml")


# ---- the codec: Λ24 tokens in .bsq files -------------------------------------------------------------------------------
def test_codec_round_trip_with_a_prior_and_forged_tokens():
    """Λ24 tokens through the .bsq codec: raw 18-bit fields and an AR prior over 3 x 6-bit groups
    both give back the encoder's tokens; a field value that no code has (>= 196,560) is a format
    error before any lookup."""
    from bsqvit.codec import BSQFormatError, CodecOptions, PriorConfig, TokenPrior, compress, decode_tokens, decompress
    from bsqvit.codec.api import base_header, encode_tokens

    torch.manual_seed(0)
    m = _tiny_leech().eval()
    x = torch.rand(3, 24, 40) * 2 - 1  # 3 x 5 tokens
    with torch.no_grad():
        tokens = m.encode(x[None])[0].numpy()
    prior = TokenPrior(PriorConfig(kind="ar", bits=18, group_bits=6, width=32, layers=1, heads=2, tile=[3, 5])).eval()
    pixels = []
    for p in (None, prior):
        res = compress(x, m, prior=p)
        assert res.header.bits == 18 and res.header.coder == ("raw" if p is None else "ar")
        assert np.array_equal(decode_tokens(res.data, prior=p)[1][0], tokens)
        pixels.append(decompress(res.data, m, prior=p))
    assert torch.equal(pixels[0], pixels[1]) and pixels[0].shape == (3, 24, 40)
    h = base_header(m, "image", 24, 40, 1, 25.0, None, CodecOptions())
    forged = tokens[None].copy()
    forged[0, 1, 2] = N_CODES
    with pytest.raises(BSQFormatError, match=f"outside the tokenizer's codebook of {N_CODES}"):
        decompress(encode_tokens(forged, h)[0], m)
