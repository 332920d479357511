"""Fuzzing the .bsq reader: a short seeded slice of benchmarks/fuzz_codec.py, hypothesis-driven
mutations and headers, and one regression test per finding (inputs in tests/data/codec/fuzz,
made by make_regressions.py there). The full campaign: benchmarks/results/fuzz.md.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import tempfile
import time
import tracemalloc
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bsqvit import BSQViT
from bsqvit.cli import main
from bsqvit.codec import BSQFormatError, CodecOptions, Header, Limits, decode_tokens, decompress, encode_tokens
from bsqvit.codec import api
from bsqvit.codec.api import base_header
from bsqvit.codec.files import decompress_file, read_bsq
from bsqvit.codec.container import max_file_bytes, read_container, unpack_header

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "codec"
FUZZ = DATA / "fuzz"
sys.path[:0] = [str(ROOT / "benchmarks"), str(FUZZ)]
import fuzz_codec as fc  # noqa: E402
import fuzz_mutators as fm  # noqa: E402
import make_regressions as mk  # noqa: E402

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ctx():
    models = fc.load_models()
    return models, {s.name: s for s in fc.make_seeds(models, Limits())}


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err):
    return rc == 2 and err.startswith("bsqvit: error:") and err.count("\n") == 1


def assert_fine(data, binds, seed, models, pixels=True):
    with tempfile.TemporaryDirectory() as d:
        kind, reason, *_ = fc.check_input(data, binds, seed, models, Limits(), pixels, Path(d) / "in.bsq",
                                          fc.MemProbe())
    assert kind not in fc.BAD, (kind, reason)


# ---- the CI slice -----------------------------------------------------------------------------------------
def test_seeded_slice_has_no_crash_hang_overlimit_or_undetected_corruption(ctx):
    models, seeds = ctx
    rep = fc.run(400, seed=0, pixels=0.25, models=models, seeds=list(seeds.values()))
    assert rep["inputs"] == 400 and rep["counts"]["ok"] > 0 and rep["counts"]["clean"] > 0
    assert {k: rep["counts"][k] for k in fc.BAD} == dict.fromkeys(fc.BAD, 0), rep["findings"][:5]
    assert set(rep["by_mutator"]) == set(fm.MUTATORS)


@SETTINGS
@given(data=st.data())
def test_hypothesis_mutations(ctx, data):
    models, seeds = ctx
    seed = seeds[data.draw(st.sampled_from(sorted(seeds)))]
    name = data.draw(st.sampled_from(sorted(fm.MUTATORS)))
    blob, binds = fm.MUTATORS[name][0](random.Random(data.draw(st.integers(0, 2**32))), seed, list(seeds.values()))
    assert_fine(blob, binds, seed, models, pixels=data.draw(st.booleans()))


def field_values(kind):
    if kind == "s":
        return st.binary(min_size=16, max_size=16)
    if kind == "d":
        return st.floats(allow_nan=True, allow_infinity=True)
    hi = fm.MAXIMA[kind]
    return st.one_of(st.integers(0, 64), st.integers(0, hi), st.sampled_from([hi, hi - 1]))


@SETTINGS
@given(data=st.data())
def test_hypothesis_well_formed_headers_with_random_fields(ctx, data):
    """Any field values, CRCs recomputed (the checks behind the CRC), sizes made consistent or not."""
    models, seeds = ctx
    seed = seeds[data.draw(st.sampled_from(sorted(seeds)))]
    fields = dict(seed.parts.fields)
    for name in data.draw(st.lists(st.sampled_from(fm.NAMES), min_size=1, max_size=10, unique=True)):
        fields[name] = data.draw(field_values(fm.KINDS[name]))
    if data.draw(st.booleans()):
        fm.fix_up(fields, random.Random(0))
    blob = fm.seal(replace(seed.parts, fields=fields))
    assert_fine(blob, "tokens" if fields["digest"] == seed.parts.fields["digest"] else "none", seed, models)


# ---- (a) nested JSON in the header extension ----------------------------------------------------------------
def test_extension_must_be_flat_at_any_nesting_depth():
    """Nesting 1..5000 (lists in an object, with valid CRCs) is refused before json.loads recurses."""
    for depth in sorted({*range(1, 12), *(int(1.25**k) for k in range(40)), 4999, 5000}):
        with pytest.raises(BSQFormatError, match="extension"):
            read_container(mk.nested_ext(depth))
    p = fm.split((DATA / "image-raw.bsq").read_bytes())
    for text in ('{"a":' * 3000 + "1" + "}" * 3000, "[" * 5000 + "]" * 5000, '{"a":"' + "[" * 300 + '"}'):
        with pytest.raises(BSQFormatError, match="extension"):
            read_container(fm.seal(replace(p, ext=zlib.compress(text.encode()))))
    flat = fm.seal(replace(p, ext=zlib.compress(b'{"note":"[[[","n":3}')))
    assert read_container(flat)[0].to_json()["ext"] == {"note": "[[[", "n": 3}


def test_info_on_a_5000_deep_extension_prints_one_line_and_exits_2(capsys):
    rc, out, err = run_cli(capsys, "info", FUZZ / "ext-nested-5000.bsq")
    assert one_line_error(rc, err) and "extension" in err and out == ""


# ---- (b) chunks spliced between files ---------------------------------------------------------------------------
def test_chunks_spliced_between_two_images_of_the_same_size_are_detected(ctx):
    _, seeds = ctx
    with pytest.raises(BSQFormatError, match="digest"):  # chunk CRC made valid: the token digest catches it
        decode_tokens((FUZZ / "splice-twin-image.bsq").read_bytes())
    pairs = [("image-raw", "raw-twin"), ("image-ar", "ar-twin"), ("video-raw", "vraw-twin"),
             ("video-par", "vpar-twin")]
    for a, b in pairs:
        A, B = seeds[a], seeds[b]
        assert fm._same_geometry(A, B) and not np.array_equal(A.tokens, B.tokens)
        recs_b = fm.chunk_records(B.data, B.parts)
        head_a = A.data[: len(fm.head_bytes(A.parts)) + 4]
        for mask in range(1, 1 << len(recs_b)):
            take = [i for i in range(len(recs_b)) if mask >> i & 1]
            raw = head_a + b"".join(recs_b[i] if i in take else r
                                    for i, r in enumerate(fm.chunk_records(A.data, A.parts)))
            chunks = [B.parts.chunks[i] if i in take else c for i, c in enumerate(A.parts.chunks)]
            for blob in (raw, fm.seal(replace(A.parts, chunks=chunks))):
                with pytest.raises(BSQFormatError):
                    decode_tokens(blob, A.prior)


# ---- (c) no resource chosen by the file -----------------------------------------------------------------------
def test_decoding_uses_no_header_chosen_resource(ctx, monkeypatch):
    models, seeds = ctx
    names = {f.name for f in dataclasses.fields(Header)}
    assert not {n for n in names if "thread" in n or "batch" in n}
    s = seeds["vpar-twin"]
    asks = fm.seal(replace(s.parts, ext=zlib.compress(b'{"prior_threads":64,"threads":64,"tile_batch":1}')))
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    mine = torch.get_num_threads()
    _, tokens = decode_tokens(asks, s.prior)
    assert np.array_equal(tokens, s.tokens) and set(calls) <= {mine}  # at most restored to the caller's own
    _, tokens = decode_tokens(asks, s.prior, options=CodecOptions(prior_threads=2, tile_batch=5))
    assert np.array_equal(tokens, s.tokens) and 2 in calls  # the caller's option, not the file, sets it


# ---- (d) decompression bombs: pixels and work bounded before allocating ------------------------------------------
def test_huge_declared_sizes_are_refused_before_allocating(ctx):
    _, seeds = ctx
    bomb = fc.forged(seeds["raw-8x8"], 8192, 8192, 1, 1)  # a valid raw file: 2048 x 2048 tokens
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(BSQFormatError, match="pixels per frame .*--max-pixels"):
            read_container(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1 and peak < 1 << 20
    with pytest.raises(BSQFormatError, match="pixels per frame"):
        unpack_header((FUZZ / "bomb-raw-8192x8192-header.bsq").read_bytes())
    t0 = time.perf_counter()  # 126 bytes asking for 65536 tokens of prior decoding
    with pytest.raises(BSQFormatError, match="exceed the limit of 32768 tokens"):
        decode_tokens((FUZZ / "bomb-ar-65536-tokens.bsq").read_bytes(), seeds["ar-16x12"].prior)
    assert time.perf_counter() - t0 < 1


def test_raw_payload_size_is_checked_before_anything_is_unpacked(ctx, monkeypatch):
    _, seeds = ctx
    s = seeds["vraw-fpc1"]
    chunks = list(s.parts.chunks)
    chunks[-1] = (chunks[-1][0] + b"\0", chunks[-1][1])  # the last of 5 chunks one byte too long
    monkeypatch.setattr(api, "unpack_raw", lambda *a: pytest.fail("unpacked"))
    with pytest.raises(BSQFormatError, match="raw chunk 4 has"):
        decode_tokens(fm.seal(replace(s.parts, chunks=chunks)))
    assert max_file_bytes(Limits()) < 1 << 24


def test_raw_unpacking_memory_is_bounded(ctx):
    """63-bit fields at the token limit: unpacked slice by slice (the bit planes take 8 bytes a bit)."""
    _, seeds = ctx
    side = int(Limits().max_tokens ** 0.5)
    data = fc.forged(seeds["raw-8x8"], side, side, 1, 1, patch=1, bits=63)
    tracemalloc.start()
    try:
        _, tokens = decode_tokens(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert tokens.shape == (1, side, side) and not tokens.any()
    assert peak < 8 * tokens.nbytes  # all bit planes at once: 17 x 63 bytes a token (134 x nbytes)


def test_files_at_the_default_limits_decode_in_seconds(ctx, tmp_path):
    """The worst pixels (a raw frame of max_pixels) and the worst entropy decoding (4 bytes of
    range coder holding max_tokens zero tokens) a file within the default Limits can ask for."""
    models, seeds = ctx
    lim = Limits()
    H = int((lim.max_pixels // 2) ** 0.5)
    cases = [(fc.forged(seeds["raw-8x8"], H, lim.max_pixels // H, 1, 1), seeds["raw-8x8"], True),
             (fc.forged(seeds["ar-16x12"], 181, 181, 1, 1, bytes(4), patch=1), seeds["ar-16x12"], False)]
    for data, seed, pixels in cases:
        kind, reason, res, seconds, peak = fc.check_input(data, "none", seed, models, lim, pixels,
                                                          tmp_path / "in.bsq", fc.MemProbe())
        assert kind == "ok", reason
        assert max(r[3] for r in res.values()) < fc.HANG_S and peak <= fc.mem_bound(lim)


def _patch8_model(path: Path):
    """A tiny patch-8 tokenizer saved at ``path`` (few tokens per pixel: large frames stay cheap)."""
    torch.manual_seed(0)
    m8 = BSQViT(dict(image_size=[8, 8], patch_size=8, width=16, layers=1, heads=2, head_dim=16,
                     quantizer=dict(type="bsq", dim=18, group_size=9))).eval()
    m8.save_pretrained(path)
    return m8


def test_cli_max_pixels_raises_the_per_frame_bound(tmp_path, capsys):
    m8 = _patch8_model(tmp_path / "m8")
    header = base_header(m8, "image", 688, 768, 1, 0.0, None, CodecOptions())  # 528,384 px > 2^19
    data, _ = encode_tokens(np.zeros((1, *header.grid), np.int64), header)
    (tmp_path / "big.bsq").write_bytes(data)
    argv = ["decompress", tmp_path / "big.bsq", tmp_path / "big.png", "--model", tmp_path / "m8"]
    rc, _, err = run_cli(capsys, *argv)
    assert one_line_error(rc, err) and "--max-pixels" in err and not (tmp_path / "big.png").exists()
    rc, _, err = run_cli(capsys, *argv, "--max-pixels", 600_000)
    assert rc == 0, err
    assert (tmp_path / "big.png").stat().st_size > 0


def test_cli_max_tokens_raises_the_per_file_bound(tmp_path, capsys):
    """A video over the default token budget: refused with a hint, decoded with --max-tokens."""
    m8 = _patch8_model(tmp_path / "m8")
    header = base_header(m8, "video", 64, 64, 520, 10.0, None, CodecOptions())  # 520 x 64 = 33,280 > 2^15 tokens
    data, _ = encode_tokens(np.zeros((520, *header.grid), np.int64), header)
    (tmp_path / "long.bsq").write_bytes(data)
    argv = ["decompress", tmp_path / "long.bsq", tmp_path / "frames", "--model", tmp_path / "m8"]
    rc, _, err = run_cli(capsys, *argv)
    assert one_line_error(rc, err) and "--max-tokens" in err and not (tmp_path / "frames").exists()
    rc, _, err = run_cli(capsys, *argv, "--max-tokens", 40_000)
    assert rc == 0, err
    assert len(list((tmp_path / "frames").iterdir())) == 520


def test_oversized_files_are_refused_before_reading(tmp_path):
    big = tmp_path / "big.bsq"
    with open(big, "wb") as f:
        f.truncate(max_file_bytes(Limits()) + 1)  # sparse
    with pytest.raises(BSQFormatError, match="too large"):
        read_bsq(big)


# ---- (e) outputs are not replaced without --force --------------------------------------------------------------
def test_existing_outputs_are_refused_without_force_and_replaced_atomically_with_it(tmp_path, capsys):
    m = DATA / "tokenizer"
    jobs = [("compress", DATA / "image.png", tmp_path / "a.bsq", ["--prior", "none"]),
            ("decompress", DATA / "image-raw.bsq", tmp_path / "a.png", [])]
    for cmd, inp, out, extra in jobs:
        out.write_bytes(b"precious")
        keep = tmp_path / f"{out.name}.link"
        os.link(out, keep)  # a second name for the old inode
        ino = out.stat().st_ino
        rc, _, err = run_cli(capsys, cmd, inp, out, "--model", m, *extra)
        assert one_line_error(rc, err) and "--force" in err
        assert out.stat().st_ino == ino and out.read_bytes() == b"precious"
        rc, _, err = run_cli(capsys, cmd, inp, out, "--model", m, *extra, "--force")
        assert rc == 0, err
        assert out.stat().st_ino != ino and keep.read_bytes() == b"precious"  # renamed over, not rewritten
        assert out.read_bytes() != b"precious"
    assert (tmp_path / "a.bsq").read_bytes() == (DATA / "image-raw.bsq").read_bytes()
    assert not [f for f in tmp_path.iterdir() if ".tmp" in f.name]


# ---- campaign finding: tokens outside the tokenizer's codebook ------------------------------------------------------
def test_tokens_outside_the_codebook_are_a_format_error(ctx, tmp_path, capsys):
    """A raw field can exceed a codebook that is not a power of two: VQ crashed with IndexError in
    the embedding lookup, FSQ decoded silently to another code."""
    data = (FUZZ / "vq-token-outside-codebook.bsq").read_bytes()
    vq = BSQViT.from_pretrained(FUZZ / "vq-tokenizer")
    assert decode_tokens(data)[1].max() == 511 and vq.quantizer.codebook_size == 300
    with pytest.raises(BSQFormatError, match="outside the tokenizer's codebook of 300"):
        decompress(data, vq)
    with pytest.raises(BSQFormatError, match="codebook"):
        decompress_file(FUZZ / "vq-token-outside-codebook.bsq", tmp_path / "x.png", vq)
    rc, _, err = run_cli(capsys, "decompress", FUZZ / "vq-token-outside-codebook.bsq", tmp_path / "x.png",
                         "--model", FUZZ / "vq-tokenizer")
    assert one_line_error(rc, err) and not (tmp_path / "x.png").exists()
    torch.manual_seed(0)
    fsq = BSQViT(dict(image_size=[8, 8], patch_size=4, width=16, layers=1, heads=2, head_dim=16,
                      quantizer=dict(type="fsq", levels=[5, 3]))).eval()
    h = base_header(fsq, "video", 8, 8, 2, 10.0, None, CodecOptions(frames_per_chunk=1))
    tokens = np.zeros((2, 2, 2), np.int64)
    assert torch.isfinite(decompress(encode_tokens(tokens, h)[0], fsq)).all()
    tokens[1, 1, 1] = 15  # 4-bit field, 15 codes
    with pytest.raises(BSQFormatError, match="codebook of 15"):
        decompress(encode_tokens(tokens, h)[0], fsq)
