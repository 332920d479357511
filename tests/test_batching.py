"""Folders of images through the tokenizer in batches: ``encode_images``, ``compress_images`` and the
folder forms of ``bsqvit tokenize DIR OUTDIR`` and ``bsqvit compress DIR OUTDIR``.

A batch must give each image the tokens of a single-image call, and a batched ``.bsq`` file must
be byte-identical to the one ``compress_file`` writes for the same image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bsqvit import BSQViT
from bsqvit.cli import main
from bsqvit.codec import CodecOptions, TokenPrior, compress_file, compress_images, decompress_file
from bsqvit.io import InputError, load_image
from bsqvit.models.batching import encode_images, image_folder, output_names

DATA = Path(__file__).resolve().parent / "data" / "codec"
OPTIONS = CodecOptions(tile_batch=3)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return BSQViT.from_pretrained(DATA / "tokenizer").eval()


@pytest.fixture(scope="module")
def prior():
    return TokenPrior.from_pretrained(DATA / "prior-ar").eval()


def _photo(rng, h, w):
    """Smooth content with some texture (not pure noise): closer to what a tokenizer sees."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / (5 + 3 * c) + rng.uniform(0, 6)) * np.cos(yy / (7 + c)) for c in range(3)], -1)
    img = 127.5 + 90 * base + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Seven images in three sizes (one size not a multiple of the patch), one in a subfolder,
    one JPEG, and a file that is not an image (ignored)."""
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    (d / "sub").mkdir()
    sizes = {"a.png": (32, 40), "b.png": (32, 40), "c.png": (30, 27), "d.png": (32, 40), "e.jpg": (32, 40),
             "sub/f.png": (30, 27), "sub/g.png": (24, 24)}
    for name, (h, w) in sizes.items():
        _photo(rng, h, w).save(d / name, quality=95) if name.endswith(".jpg") else _photo(rng, h, w).save(d / name)
    (d / "notes.txt").write_text("not an image")
    return d


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_folder_listing_and_output_names(folder, tmp_path):
    files = image_folder(folder)
    rel = [f.relative_to(folder).as_posix() for f in files]
    assert rel == ["a.png", "b.png", "c.png", "d.png", "e.jpg", "sub/f.png", "sub/g.png"]
    assert [n.as_posix() for n in output_names(files, folder, ".npz")][-1] == "sub/g.npz"
    (tmp_path / "x.png").write_bytes((folder / "a.png").read_bytes())
    (tmp_path / "x.jpg").write_bytes((folder / "e.jpg").read_bytes())
    with pytest.raises(InputError, match="would both be written to x.npz"):
        output_names(image_folder(tmp_path), tmp_path, ".npz")
    with pytest.raises(InputError, match="no images found"):
        image_folder(_empty(tmp_path))


def _empty(tmp_path):
    e = tmp_path / "empty"
    e.mkdir()
    return e


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_batches_give_each_image_its_single_image_tokens(model, folder, batch):
    files = image_folder(folder)
    got = {i: (H, W, t) for i, H, W, t in encode_images(model, files, batch=batch)}
    assert sorted(got) == list(range(len(files)))  # every image exactly once
    for i, f in enumerate(files):
        x = load_image(f)
        want = model.encode(x[None])[0].numpy()
        H, W, tokens = got[i]
        assert (H, W) == tuple(x.shape[-2:])
        assert tokens.dtype == np.int64 and np.array_equal(tokens, want), f


def test_batch_out_of_range_is_refused(model, folder):
    for b in (0, 1025):
        with pytest.raises(InputError, match="--batch must be in 1..1024"):
            next(encode_images(model, image_folder(folder), batch=b))


def test_compress_images_writes_the_files_compress_file_writes(model, prior, folder, tmp_path):
    files = image_folder(folder)
    outs = [tmp_path / "batched" / f"{i}.bsq" for i in range(len(files))]
    (tmp_path / "batched").mkdir()
    stats = list(compress_images(files, outs, model, prior, OPTIONS, batch=4))
    assert sorted(s["input"] for s in stats) == sorted(str(f) for f in files)
    for f, o in zip(files, outs):
        single = tmp_path / "single.bsq"
        compress_file(f, single, model, prior, OPTIONS)
        assert o.read_bytes() == single.read_bytes(), f
        decompress_file(o, tmp_path / "r.png", model, prior)
        assert Image.open(tmp_path / "r.png").size == Image.open(f).size
        single.unlink()
        (tmp_path / "r.png").unlink()


def test_cli_tokenize_folder_equals_per_image_tokenize(capsys, folder, tmp_path):
    out = tmp_path / "tokens"
    rc, stdout, err = run_cli(capsys, "tokenize", folder, out, "--model", DATA / "tokenizer", "--batch", "3")
    assert rc == 0, err
    assert "7 images" in stdout and "batch 3" in stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npz")) == [
        "a.npz", "b.npz", "c.npz", "d.npz", "e.npz", "sub/f.npz", "sub/g.npz"]
    for name in ("c", "e", "sub/g"):
        src = next(folder.glob(name + ".*"))
        single = tmp_path / "single.npz"
        rc, _, err = run_cli(capsys, "tokenize", src, single, "--model", DATA / "tokenizer", "--force")
        assert rc == 0, err
        a, b = np.load(out / f"{name}.npz"), np.load(single)
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            assert np.array_equal(a[k], b[k]), (name, k)
    # the folder now holds files: a second run needs --force
    rc, _, err = run_cli(capsys, "tokenize", folder, out, "--model", DATA / "tokenizer")
    assert rc == 2 and "not empty" in err and "--force" in err
    rc, _, err = run_cli(capsys, "tokenize", folder, out, "--model", DATA / "tokenizer", "--force")
    assert rc == 0, err


def test_cli_compress_folder_round_trips(capsys, folder, tmp_path):
    out = tmp_path / "bsq"
    rc, stdout, err = run_cli(capsys, "compress", folder, out, "--model", DATA / "tokenizer", "--prior",
                              DATA / "prior-ar", "--batch", "2", "--json")
    assert rc == 0, err
    lines = [json.loads(s) for s in stdout.splitlines()]
    assert len(lines) == 7 and all(Path(s["output"]).is_file() for s in lines)
    assert "7 files" in err
    for s in lines:
        rc, _, err = run_cli(capsys, "decompress", s["output"], tmp_path / "r.png", "--model", DATA / "tokenizer",
                             "--prior", DATA / "prior-ar", "--force")
        assert rc == 0, err
        assert Image.open(tmp_path / "r.png").size == Image.open(s["input"]).size


def test_cli_folder_errors_are_one_line_and_write_nothing(capsys, folder, tmp_path):
    m = ["--model", DATA / "tokenizer"]
    dup = tmp_path / "dup"
    dup.mkdir()
    (dup / "x.png").write_bytes((folder / "a.png").read_bytes())
    (dup / "x.jpg").write_bytes((folder / "e.jpg").read_bytes())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ok.png").write_bytes((folder / "a.png").read_bytes())
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    trunc = tmp_path / "trunc"  # a header that reads and a body that does not: found half-way
    trunc.mkdir()
    (trunc / "a.png").write_bytes((folder / "a.png").read_bytes())
    (trunc / "b.png").write_bytes((folder / "b.png").read_bytes()[:300])
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["tokenize", dup, tmp_path / "o1", *m], "would both be written to"),
        (["compress", dup, tmp_path / "o2", *m], "would both be written to"),
        (["tokenize", _empty(tmp_path), tmp_path / "o3", *m], "no images found"),
        (["tokenize", folder, folder / "sub" / "out", *m], "inside the input folder"),
        (["tokenize", folder, a_file, *m], "not a directory"),
        (["tokenize", folder, tmp_path / "o4", "--batch", "0", *m], "--batch must be in 1..1024"),
        (["compress", folder, tmp_path / "o5", "--batch", "2000", *m], "--batch must be in 1..1024"),
        (["tokenize", bad, tmp_path / "o6", *m], "broken.png"),
        (["tokenize", folder, tmp_path / "o9.npz", *m], "OUT must be a folder too"),
        (["compress", folder, tmp_path / "o10.bsq", *m], "OUT must be a folder too"),
        (["tokenize", trunc, tmp_path / "o7", "--batch", "1", *m], "b.png: corrupt or truncated"),
        (["compress", trunc, tmp_path / "o8", "--batch", "1", *m], "b.png: corrupt or truncated"),
    ]
    for argv, msg in cases:
        rc, _, err = run_cli(capsys, *argv)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("bsqvit: error: "), (argv, err)
        assert msg in err, (argv, err)
    for o in ("o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9.npz", "o10.bsq"):
        assert not (tmp_path / o).exists(), o
    assert not (folder / "sub" / "out").exists()
    assert a_file.read_text() == "x"

