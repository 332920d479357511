"""bsqvit.generate: the masked token model, MaskGIT sampling, the token cache, metrics, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bsqvit import BSQViT
from bsqvit.cli import main
from bsqvit.config import ConfigError
from bsqvit.generate.data import class_of, discover_classes, extract_gen_tokens, load_token_cache
from bsqvit.metrics.generation import LinearProbe, fid_from_features, inception_score, precision_recall
from bsqvit.generate.model import GenConfig, MaskedTokenModel, join_groups, masked_token_loss, split_groups
from bsqvit.generate.sampling import fill_canvas, sample_tokens, windows
from bsqvit.generate.train import image_grid
from shared_data import SQUEEZE_CAFFE, WEIGHTS, needs_squeeze


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_gen(**kw) -> MaskedTokenModel:
    torch.manual_seed(0)
    cfg = dict(bits=18, group_bits=9, grid=[4, 4], width=32, layers=2, heads=2, num_classes=3)
    return MaskedTokenModel({**cfg, **kw}).eval()


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_error(rc, err):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bsqvit: error: "), err


# ---- model ---------------------------------------------------------------------------------------------------
def test_groups_round_trip_and_order():
    t = torch.randint(0, 1 << 18, (5, 7))
    g = split_groups(t, 18, 9)
    assert g.shape == (5, 7, 2) and int(g.max()) < 512
    assert torch.equal(g[..., 0], t >> 9)  # group 0 = most significant bits
    assert torch.equal(join_groups(g, 18, 9), t)


def test_config_errors():
    with pytest.raises(Exception, match="group_bits"):
        GenConfig(bits=18, group_bits=7)
    with pytest.raises(Exception, match="class_ids"):
        GenConfig(num_classes=2, class_ids=["a"])
    with pytest.raises(Exception, match="embed"):
        GenConfig(embed="onehot")


@pytest.mark.parametrize("embed", ["groups", "code"])
def test_masked_positions_do_not_leak(embed):
    """The prediction cannot depend on the value of a masked token."""
    m = tiny_gen(embed=embed)
    t = torch.randint(0, 1 << 18, (2, 4, 4))
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 1, 2] = True
    t2 = t.clone()
    t2[:, 1, 2] = (t2[:, 1, 2] + 12345) % (1 << 18)
    a = m(t, mask, torch.tensor([0, 1]))
    b = m(t2, mask, torch.tensor([0, 1]))
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-6)
    c = m(t2, torch.zeros_like(mask), torch.tensor([0, 1]))  # unmasked: it must matter
    assert not torch.allclose(a[0], c[0], atol=1e-4)


def test_labels_matter_and_null_class():
    m = tiny_gen()
    t = torch.randint(0, 1 << 18, (1, 4, 4))
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    a, b = m(t, mask, torch.tensor([0]))[0], m(t, mask, torch.tensor([1]))[0]
    assert not torch.allclose(a, b)
    assert torch.equal(m(t, mask, torch.tensor([-1]))[0], m(t, mask, None)[0])  # -1 and None = null class
    with pytest.raises(ValueError, match="out of range"):
        m(t, mask, torch.tensor([4]))
    with pytest.raises(ValueError, match="exceeds"):
        m(torch.zeros(1, 5, 4, dtype=torch.long), torch.ones(1, 5, 4, dtype=torch.bool))


def test_loss_at_init_is_uniform_and_masks_follow_cosine():
    m = tiny_gen()
    t = torch.randint(0, 1 << 18, (256, 4, 4))
    loss, stats = masked_token_loss(m, t, torch.randint(0, 3, (256,)), torch.Generator().manual_seed(0))
    assert abs(loss.item() - 2 * math.log(512)) < 0.1  # two 512-way heads near uniform
    # E[cos(pi/2 u)] = 2/pi; masks are ceil(r N) >= 1 of N = 16
    assert abs(stats["mask_ratio"] - 2 / math.pi) < 0.06


def test_learns_a_class_conditional_distribution():
    """Each class has one token pattern; after training, guided samples of class c are c's pattern."""
    torch.manual_seed(0)
    m = MaskedTokenModel(bits=18, group_bits=9, grid=[4, 4], width=64, layers=2, heads=2, num_classes=3)
    patterns = torch.randint(0, 1 << 18, (3, 4, 4))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        y = torch.randint(0, 3, (32,), generator=g)
        loss, _ = masked_token_loss(m, patterns[y], y, g, cond_dropout=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    s = sample_tokens(m, torch.tensor([0, 1, 2, 2]), steps=4, guidance=1.0, temperature=0.5,
                      gen=torch.Generator().manual_seed(3))
    assert (s == patterns[torch.tensor([0, 1, 2, 2])]).float().mean() > 0.95


# ---- sampling ------------------------------------------------------------------------------------------------
class FixedLogits(torch.nn.Module):
    """A stand-in model: fixed conditional / unconditional logits; records the masks it sees."""

    def __init__(self, lc, lu, grid=(3, 3)):
        super().__init__()
        self.config = GenConfig(bits=4, group_bits=2, grid=list(grid), width=8, heads=1, layers=1, num_classes=2)
        self.lc, self.lu = lc, lu
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.masked_counts = []

    def forward(self, tokens, mask, labels):
        B, h, w = tokens.shape
        self.masked_counts.append(mask.view(B, -1).sum(1).tolist())
        out = []
        for k in range(2):
            lg = torch.where((labels >= 0)[:, None, None], self.lc[k], self.lu[k]).expand(B, h * w, 4)
            out.append(lg.clone())
        return out


def test_cosine_unmasking_schedule():
    m = FixedLogits([torch.zeros(4)] * 2, [torch.zeros(4)] * 2, grid=(4, 4))
    S = 6
    sample_tokens(m, torch.tensor([0]), steps=S, gen=torch.Generator().manual_seed(0))
    seen = [c[0] for c in m.masked_counts]
    expect = [16] + [math.floor(16 * math.cos(math.pi / 2 * (s + 1) / S)) for s in range(S - 1)]
    assert seen == expect


def test_guidance_formula():
    """With a near-zero temperature the sample is the argmax of l_c + w (l_c - l_u)."""
    lc = [torch.tensor([0.0, 2.0, 1.9, 0.0]), torch.tensor([3.0, 0.0, 0.0, 0.0])]
    lu = [torch.tensor([0.0, 2.0, 0.0, 0.0]), torch.tensor([3.0, 0.0, 0.0, 0.0])]
    m = FixedLogits(lc, lu)
    g0 = sample_tokens(m, torch.tensor([1]), steps=2, guidance=0.0, temperature=1e-3, gen=torch.Generator().manual_seed(0))
    g1 = sample_tokens(m, torch.tensor([1]), steps=2, guidance=1.0, temperature=1e-3, gen=torch.Generator().manual_seed(0))
    assert torch.all(g0 == (1 << 2) | 0)  # groups (1, 0) without guidance
    assert torch.all(g1 == (2 << 2) | 0)  # 1.9 + (1.9 - 0) beats 2 + 0: groups (2, 0)
    assert len(m.masked_counts[-1]) == 2  # guided passes run conditional + null in one batch


def test_sampling_is_deterministic_and_seed_dependent():
    m = tiny_gen()
    a = sample_tokens(m, torch.tensor([0, 1, -1]), steps=5, guidance=2.0, gen=torch.Generator().manual_seed(7))
    b = sample_tokens(m, torch.tensor([0, 1, -1]), steps=5, guidance=2.0, gen=torch.Generator().manual_seed(7))
    c = sample_tokens(m, torch.tensor([0, 1, -1]), steps=5, guidance=2.0, gen=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 4, 4) and int(a.max()) < (1 << 18)


def test_windows_cover():
    assert windows(4, 4) == [0]
    assert windows(10, 4) == [0, 2, 4, 6]
    assert windows(9, 4) == [0, 2, 4, 5]
    for size in range(4, 30):
        covered = set()
        for s in windows(size, 4):
            covered |= set(range(s, s + 4))
        assert covered == set(range(size))


def test_inpainting_keeps_known_tokens_on_large_canvases():
    m = tiny_gen()
    base = torch.randint(0, 1 << 18, (2, 7, 10))
    unknown = torch.zeros(2, 7, 10, dtype=torch.bool)
    unknown[:, 2:5, 3:9] = True
    unknown[1, 0, 0] = True
    out = fill_canvas(m, base, unknown, torch.tensor([0, 2]), steps=3, gen=torch.Generator().manual_seed(0))
    assert torch.equal(out[~unknown], base[~unknown])
    assert (out[unknown] != base[unknown]).float().mean() > 0.9  # regenerated (random weights)


# ---- metrics -----------------------------------------------------------------------------------------------
def test_inception_score_bounds():
    onehot = np.eye(5)[np.arange(100) % 5]
    assert inception_score(onehot) == pytest.approx(5.0, rel=1e-6)
    assert inception_score(np.full((10, 5), 0.2)) == pytest.approx(1.0)


def test_precision_recall_and_fid_properties():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    assert precision_recall(a, a.copy()) == (1.0, 1.0)
    far = a + 100.0
    assert precision_recall(a, far) == (0.0, 0.0)
    half = np.concatenate([a[:100], a[:100] + 100.0])  # half the samples off the manifold
    p, r = precision_recall(a, half)
    assert abs(p - 0.5) < 0.02
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(a, a + 1.0) == pytest.approx(8.0, rel=1e-6)  # |mu diff|^2, equal covariances


def test_linear_probe_separates_classes():
    rng = np.random.default_rng(1)
    y = np.arange(300) % 3
    x = rng.normal(size=(300, 6)) + 4 * np.eye(3, 6)[y]
    probe = LinearProbe(x, y, 3)
    assert (probe.probs(x).argmax(1) == y).mean() > 0.97


def test_image_grid_layout():
    ims = [np.full((4, 5, 3), i, np.uint8) for i in range(5)]
    g = image_grid(ims, 3)
    assert g.shape == (2 * 4 + 2, 3 * 5 + 4, 3)
    assert (g[:4, 7:12] == 1).all() and (g[6:, 7:12] == 4).all() and (g[6:, 14:] == 255).all()


# ---- tokens cache ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Three classes of synthetic 40x40 images, named like Imagenette (<wnid>_<n>.png), plus an unlabelled file."""
    d = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]
    wnids = ["n01440764", "n02102040", "n02979186"]
    for c, (wnid, col) in enumerate(zip(wnids, colours)):
        for i in range(6):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(d / f"{wnid}_{i}.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / "ILSVRC2012_val_00000001.png")
    (d / "n03000684_broken.png").write_bytes(b"not a png")
    return d


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok") / "tiny"
    torch.manual_seed(0)
    BSQViT.from_preset("tiny").save_pretrained(d)
    return d


def test_class_names_from_files(labelled):
    from bsqvit.data.images import find_images

    files = find_images(labelled)
    assert class_of(files[-1]).startswith("n")
    assert discover_classes(files) == ["n01440764", "n02102040", "n02979186", "n03000684"]


def test_token_cache_format_and_reuse(tmp_path, labelled, tokenizer_dir, monkeypatch):
    from bsqvit.data.images import find_images

    tok = BSQViT.from_pretrained(tokenizer_dir)
    files = [f for f in find_images(labelled) if "broken" not in f]
    classes = ["n01440764", "n02102040", "n02979186"]
    c = extract_gen_tokens(tok, files, classes, 32, tmp_path, flip=True, progress=False)
    assert c["tokens"].shape == (19, 2, 4, 4) and c["tokens"].dtype == np.int64
    assert sorted(set(c["labels"].tolist())) == [-1, 0, 1, 2]
    assert c["classes"] == classes and c["meta"]["tokenizer"] == tok.weights_hash()
    # view 1 is the flipped image's tokens
    from bsqvit.io import load_square
    from bsqvit.io import from_uint8

    x = from_uint8(load_square(files[0], 32))[None]
    assert np.array_equal(c["tokens"][0, 1], tok.encode(x.flip(-1))[0].numpy())
    # a second call reads the cache instead of encoding
    monkeypatch.setattr(type(tok), "encode", lambda *a, **k: pytest.fail("re-encoded"))
    again = extract_gen_tokens(tok, files, classes, 32, tmp_path, flip=True, progress=False)
    assert np.array_equal(again["tokens"], c["tokens"])
    bad = tmp_path / "bad.npz"
    np.savez(bad, tokens=np.zeros(3))
    with pytest.raises(Exception, match="not a token cache"):
        load_token_cache(bad)


# ---- CLI end to end ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, labelled, tokenizer_dir):
    out = tmp_path_factory.mktemp("gen") / "run"
    cfg = out.parent / "gen.yaml"
    cfg.write_text(
        "model: {width: 32, layers: 1, heads: 2}\n"
        f"data: {{train: ['{labelled}'], resolution: 32}}\n"
        "batch_size: 8\nsteps: 6\nlog_every: 2\neval_every: 3\ncheckpoint_every: 3\n"
        "eval: {samples_per_class: 3, steps: 3, features: squeeze-caffe, grid_per_class: 2,"
        f" weights_dir: '{WEIGHTS / 'squeezenet1_1_caffe'}'}}\n")
    return cfg, out


@needs_squeeze
def test_train_gen_cli_resume_and_generate(capsys, trained, tokenizer_dir, tmp_path):
    cfg, out = trained
    rc, o, e = run_cli(capsys, "train-gen", cfg, "--tokenizer", tokenizer_dir, "--output-dir", out, "--max-steps", 3,
                       "--no-progress")
    assert rc == 0, e
    rc, o, e = run_cli(capsys, "train-gen", cfg, "--tokenizer", tokenizer_dir, "--output-dir", out, "--resume",
                       "--no-progress")
    assert rc == 0, e
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals] == [0, 3, 6]
    assert "tokenizer_reconstruction" in evals[0] and all(np.isfinite(r["fid"]) for r in evals)
    assert evals[-1]["n_samples"] == 9 and "is_probe" in evals[-1] and "class_accuracy" in evals[-1]
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"step_{s:08d}.png" for s in (0, 3, 6)]
    gen = MaskedTokenModel.from_pretrained(out / "gen")
    assert gen.config.num_classes == 3 and gen.config.class_names[0] == "tench"
    assert gen.config.tokenizer_hash == BSQViT.from_pretrained(tokenizer_dir).weights_hash()

    # resumed == uninterrupted
    straight = tmp_path / "straight"
    rc, _, e = run_cli(capsys, "train-gen", cfg, "--tokenizer", tokenizer_dir, "--output-dir", straight, "--no-progress",
                       "eval_every=-1")
    assert rc == 0, e
    a = MaskedTokenModel.from_pretrained(straight / "gen").state_dict()
    for k, v in gen.state_dict().items():
        assert torch.equal(a[k], v), k

    # generate: deterministic, named by class, a grid
    g1, g2 = tmp_path / "g1", tmp_path / "g2"
    for d in (g1, g2):
        rc, o, e = run_cli(capsys, "generate", "--model", tokenizer_dir, "--gen", out / "gen", "--n", 2, "--class",
                           "all", "--steps", 3, "--seed", 5, "--out", d)
        assert rc == 0, e
    names = sorted(p.name for p in g1.iterdir())
    assert names == sorted([f"{w}_{k:05d}.png" for w in gen.config.class_ids for k in range(2)] + ["grid.png"])
    for n in names:
        assert (g1 / n).read_bytes() == (g2 / n).read_bytes()
    assert Image.open(g1 / "grid.png").size == (2 * 32 + 2, 3 * 32 + 4)
    rc, _, e = run_cli(capsys, "generate", "--model", tokenizer_dir, "--gen", out / "gen", "--n", 1, "--label", "tench",
                       "--out", tmp_path / "g3")
    assert rc == 0 and (tmp_path / "g3" / "n01440764_00000.png").is_file()

    # inpainting: unmasked pixels are the input's; outpainting enlarges the canvas
    src = next(iter(sorted(Path(cfg.read_text().split("'")[1]).glob("n0144*.png"))))
    mask = np.zeros((40, 40), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    rc, _, e = run_cli(capsys, "generate", "--model", tokenizer_dir, "--gen", out / "gen", "--n", 2, "--inpaint", src,
                       "--mask", tmp_path / "mask.png", "--steps", 3, "--out", tmp_path / "inp")
    assert rc == 0, e
    orig = np.array(Image.open(src).convert("RGB"))
    edit = np.array(Image.open(tmp_path / "inp" / f"{src.stem}_edit_00000.png"))
    assert np.array_equal(edit[mask == 0], orig[mask == 0])
    rc, _, e = run_cli(capsys, "generate", "--model", tokenizer_dir, "--gen", out / "gen", "--inpaint", src,
                       "--outpaint", 8, "--n", 1, "--steps", 2, "--out", tmp_path / "outp")
    assert rc == 0, e
    o = np.array(Image.open(tmp_path / "outp" / f"{src.stem}_edit_00000.png"))
    assert o.shape == (56, 56, 3) and np.array_equal(o[8:48, 8:48], orig)

    # eval-gen on a folder and as a sweep
    rc, o, e = run_cli(capsys, "eval-gen", "--ref", cfg.read_text().split("'")[1], "--samples", g1, "--features",
                       "squeeze-caffe", "--weights-dir", SQUEEZE_CAFFE.parent, "--json", tmp_path / "ev.json")
    assert rc == 0, e
    res = json.loads((tmp_path / "ev.json").read_text())
    assert res["results"][0]["n_samples"] == 6 and "not comparable" in res["features_label"]
    rc, o, e = run_cli(capsys, "eval-gen", "--ref", cfg.read_text().split("'")[1], "--model", tokenizer_dir, "--gen",
                       out / "gen", "--n-per-class", 2, "--steps", 2, 3, "--guidance", 0, 1, "--features",
                       "squeeze-caffe", "--weights-dir", SQUEEZE_CAFFE.parent)
    assert rc == 0, e
    assert o.count("| ") >= 4 * 1 and "steps=3 guidance=1" in o


def test_generate_cli_errors(capsys, tmp_path, tokenizer_dir):
    gdir = tmp_path / "gen"
    tok = BSQViT.from_pretrained(tokenizer_dir)
    MaskedTokenModel(bits=18, grid=[4, 4], width=32, layers=1, heads=2, num_classes=2, class_ids=["a", "b"],
                     class_names=["cat", "dog"], tokenizer_hash=tok.weights_hash()).save_pretrained(gdir)
    other = tmp_path / "other"
    MaskedTokenModel(bits=18, grid=[4, 4], width=32, layers=1, heads=2, tokenizer_hash="0" * 64).save_pretrained(other)
    base = ["generate", "--model", tokenizer_dir, "--out", tmp_path / "o"]
    for extra, msg in [
        (["--gen", gdir, "--label", "horse"], "unknown --label"),
        (["--gen", gdir, "--class", "7"], "out of range"),
        (["--gen", gdir, "--class", "x"], "integer or 'all'"),
        (["--gen", gdir, "--steps", "0"], "--steps"),
        (["--gen", gdir, "--mask", "m.png"], "need --inpaint"),
        (["--gen", other], "another tokenizer"),
        (["--gen", other, "--class", "0"], "another tokenizer"),
        (["--gen", tmp_path / "missing"], "missing"),
    ]:
        rc, _, err = run_cli(capsys, *base, *extra)
        assert_clean_error(rc, err)
        assert msg in err, (extra, err)
    assert not (tmp_path / "o").exists()


def test_sampling_never_leaves_a_codebook_smaller_than_2_to_the_bits():
    """Λ24-SQ has 196,560 codes in 18-bit fields: the groups are sampled most significant first
    and values no code can continue are masked, even when the model prefers them."""
    torch.manual_seed(0)
    gen = MaskedTokenModel(bits=6, group_bits=3, codebook_size=40, grid=[4, 4], width=32, layers=1, heads=2).eval()
    with torch.no_grad():
        gen.heads_out[0].bias[5:] += 50.0  # group 0 >= 5 means tokens >= 40: never codes
    toks = sample_tokens(gen, None, n=8, steps=4, gen=torch.Generator().manual_seed(1))
    assert toks.max() < 40 and (toks // 8 == 4).any()  # the largest valid group-0 value is used
    free = MaskedTokenModel(bits=6, group_bits=3, grid=[4, 4], width=32, layers=1, heads=2).eval()
    free.load_state_dict(gen.state_dict())
    assert sample_tokens(free, None, n=8, steps=4, gen=torch.Generator().manual_seed(1)).max() >= 40  # unmasked
    with pytest.raises(ConfigError, match="needs 6 bits"):
        MaskedTokenModel(bits=6, group_bits=3, codebook_size=20)
