"""docs/FORMAT.md against the code: an independent NumPy decoder (tests/numpy_decoder.py, written from
the specification) must decode the golden files of tests/data/codec to the same tokens as bsqvit,
through the same frequency matrices, without importing torch; the worked example must be true."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import bsqvit.codec.coding as coding
from bsqvit.codec import BSQFormatError, CodecOptions, Header, TokenPrior, container, decode_tokens, encode_tokens
from bsqvit.codec import intops, pass_map, tile_layout

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import numpy_decoder as nd  # noqa: E402
import numpy_intprior as ni  # noqa: E402

DATA = HERE / "data" / "codec"
GOLDEN = json.loads((DATA / "golden.json").read_text())
SPEC = (HERE.parent / "docs" / "FORMAT.md").read_text()
CODED = ["image-ar", "image-par", "video-par", "video-ar-skip"]


def sha(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, "<i8").tobytes()).hexdigest()


def golden(name: str) -> tuple[bytes, Path | None]:
    prior = GOLDEN["files"][name]["prior"]
    return (DATA / f"{name}.bsq").read_bytes(), DATA / prior if prior else None


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the golden files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GOLDEN["files"]))
def test_numpy_decoder_reads_every_golden_file(name):
    data, prior_dir = golden(name)
    header, tokens = nd.decode_file(data, prior_dir)
    assert tokens.dtype == np.int64 and tokens.shape == (header["frames"], *header["grid"])
    assert sha(tokens) == GOLDEN["files"][name]["tokens_sha256"]
    _, ours = decode_tokens(data, TokenPrior.from_pretrained(prior_dir) if prior_dir else None)
    np.testing.assert_array_equal(tokens, ours)


@pytest.mark.parametrize("name", CODED)
def test_frequencies_equal_the_torch_engine_row_by_row(name, monkeypatch):
    data, prior_dir = golden(name)
    theirs, ours = [], []
    code = coding.SymbolCoder.code

    def spy(self, freqs, weights, symbols):
        theirs.append(freqs.cpu().numpy().copy())
        return code(self, freqs, weights, symbols)

    monkeypatch.setattr(coding.SymbolCoder, "code", spy)
    decode_tokens(data, TokenPrior.from_pretrained(prior_dir))
    nd.decode_file(data, prior_dir, on_freqs=ours.append)
    assert [f.shape for f in ours] == [f.shape for f in theirs]  # the same calls, in the same order
    P = 1 << nd.parse_header(data)[0]["prob_bits"]
    for i, (x, y) in enumerate(zip(ours, theirs)):  # one matrix per call (2 columns for skip maps)
        assert (x.sum(1) == P).all() and (x >= 1).all()
        assert np.array_equal(x, y), f"call {i}: {x} != {y}"


def test_numpy_decoder_needs_no_torch():
    imports = set()
    for f in ("numpy_decoder.py", "numpy_intprior.py"):
        for node in ast.walk(ast.parse((HERE / f).read_text())):
            if isinstance(node, ast.Import):
                imports |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imports.add(node.module.split(".")[0])
    assert imports <= {"__future__", "copy", "decimal", "functools", "hashlib", "json", "math", "struct", "zlib", "pathlib",
                       "numpy", "safetensors", "constriction", "numpy_intprior"}, imports
    script = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import numpy_decoder as nd\n"
              f"for name, prior in [('image-ar', 'prior-ar'), ('video-par', 'prior-par'), ('video-ar-skip', 'prior-ar-skip')]:\n"
              f"    nd.decode_file(open({str(DATA)!r} + f'/{{name}}.bsq', 'rb').read(), {str(DATA)!r} + '/' + prior)\n"
              f"bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'bsqvit')]\n"
              f"assert not bad, bad\nprint('ok')\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def with_prefix_byte(data: bytes, pos: int, value: int) -> bytes:
    """``data`` with one prefix byte changed and every CRC recomputed (header, then chunks)."""
    out = bytearray(data)
    out[pos] = value
    end = 8 + struct.unpack_from("<H", out, 6)[0]
    out[end : end + 4] = struct.pack("<I", zlib.crc32(out[:end]))
    seed, off = zlib.crc32(out[:end]), end + 4
    for i in range(struct.unpack_from("<I", out, 100)[0]):
        n = struct.unpack_from("<I", out, off)[0]
        crc = zlib.crc32(out[off + 12 : off + 12 + n], zlib.crc32(struct.pack("<I", i), seed))
        out[off + 4 : off + 8] = struct.pack("<I", crc)
        off += 12 + n
    return bytes(out)


def test_versions_newer_minor_read_major_1_refused():
    data, prior_dir = golden("video-par")
    newer = with_prefix_byte(data, 5, 7)  # 2.7: read like 2.0
    want = nd.decode_file(data, prior_dir)[1]
    assert np.array_equal(nd.decode_file(newer, prior_dir)[1], want)
    assert np.array_equal(decode_tokens(newer, TokenPrior.from_pretrained(prior_dir))[1], want)
    for major, message in [(1, "version 1"), (3, "unsupported")]:
        old = with_prefix_byte(data, 4, major)
        with pytest.raises(nd.FormatError, match=message):
            nd.decode_file(old, prior_dir)
        with pytest.raises(BSQFormatError, match=f"{message}.*compress the source again" if major == 1 else message):
            decode_tokens(old, TokenPrior.from_pretrained(prior_dir))


def test_numpy_decoder_refuses_damage_and_other_weights():
    data, prior_dir = golden("image-par")
    for pos in (5, 60, len(data) - 1):  # the minor version and a field (header CRC), the last payload byte
        bad = bytearray(data)
        bad[pos] ^= 0x10
        with pytest.raises(nd.FormatError):
            nd.decode_file(bytes(bad), prior_dir)
    with pytest.raises(nd.FormatError, match="other prior weights"):
        nd.decode_file(data, DATA / "prior-ar")
    with pytest.raises(nd.FormatError, match="bytes after"):
        nd.decode_file(data + b"\0", prior_dir)


# ---- pieces of the specification against the code --------------------------------------------------------
def test_constants_and_limits_of_the_specification_are_the_code_s():
    consts = {r[0].strip("`"): r[1].strip("`") for r in table_rows("### 4.1 Constants", numbered=False)}
    assert consts["ACT_MAX"] == "2^23 − 1" and intops.ACT_MAX == ni.ACT_MAX == (1 << 23) - 1
    for name in ("FA", "W_BITS", "EXP_LEN", "LN_EXTRA", "E_MAX"):
        assert int(consts[name]) == getattr(intops, name), name
    assert int(consts["LN_EPS"]) == ni.LN_EPS == round(torch.nn.LayerNorm(4).eps * (1 << 24))
    limits = {r[0].strip("`"): r[1:3] for r in table_rows("### 2.7 Limits", numbered=False)}
    power = lambda v: 1 << int(v[2:]) if v.startswith("2^") else int(v)  # noqa: E731
    for name, (reader, writer) in limits.items():
        assert power(reader) == getattr(container.Limits(), name) == nd.LIMITS[name], name
        assert power(writer) == getattr(container.FORMAT_LIMITS, name), name
    assert "`65645 + 256 · max_tokens`" in SPEC and container.max_file_bytes(container.Limits(max_tokens=0)) == 65645


def test_tables_are_the_rounded_exact_values():
    E, G = ni.exp_table(), ni.gelu_table()
    assert E.tolist() == list(intops.exp_table()) and G.tolist() == list(intops.gelu_table())
    # section 4.5: no entry is near a tie, so binary64 exp/erf give the same integers
    assert E.tolist() == [round(65536 * math.exp(-i / 256)) for i in range(3072)]
    gelu = lambda x: x / 2 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    assert G.tolist() == [round(4096 * gelu((j - 2048) / 256)) for j in range(4097)]
    assert E[:2].tolist() == [65536, 65280] and E[3016] > 0 and not E[3017:].any()
    assert (G[0], G[2048], G[4096], G.min()) == (0, 0, 32768, -696)
    assert [ni.attention_scale(d) for d in (8, 16, 32, 64)] == [23170, 16384, 11585, 8192]
    assert all(ni.attention_scale(d) == intops.inv_sqrt_q16(d) for d in range(1, 129))


def test_tiles_and_schedules_match_the_code():
    for h, w, tile in [(6, 8, (3, 4)), (61, 41, (32, 32)), (7, 5, (5, 5)), (1, 9, (4, 4))]:
        assert nd.tiles_of(h, w, tile) == tile_layout(h, w, tile)
    for S, schedule in [(1, "quadtree"), (3, "quadtree"), (5, "quadtree"), (9, "quadtree"), (4, "quadtree"),
                        (1, "random"), (2, "random"), (8, "random"), (64, "random")]:
        for r, q in [(32, 32), (13, 7), (3, 4)]:
            np.testing.assert_array_equal(nd.passes_of(r, q, S, schedule), pass_map(r, q, S, schedule).ravel())


# ---- configurations the golden files do not cover ---------------------------------------------------------
SYNTHETIC = {  # prior config, (frames, grid h, grid w, frames per chunk, prob bits)
    "ar-video-uneven-tiles": (dict(kind="ar", bits=8, group_bits=4, layers=2, heads=2, tile=[3, 4], video=True),
                              (3, 5, 7, 2, 16)),
    "parallel-random": (dict(kind="parallel", bits=6, group_bits=3, heads=4, tile=[4, 4], passes=4,
                             schedule="random"), (1, 8, 8, 1, 12)),
    "parallel-quadtree-video": (dict(kind="parallel", bits=6, group_bits=2, heads=2, tile=[5, 5], passes=7,
                                     video=True), (2, 7, 5, 1, 10)),
}


def synthetic_file(tmp_path: Path, cfg: dict, T: int, h: int, w: int, fpc: int,
                   prob_bits: int) -> tuple[bytes, np.ndarray]:
    torch.manual_seed(0)
    prior = TokenPrior({"width": 16, "layers": 1, "mlp_ratio": 2.0, **cfg}).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    prior.save_pretrained(tmp_path)
    c = prior.config
    header = Header(
        media="video" if T > 1 else "image", coder=c.kind, tokenizer_id="11" * 16, bits=c.bits, patch_size=2,
        height=2 * h - 1, width=2 * w, frames=T, fps=10.0 if T > 1 else 0.0, pad_bottom=1, pad_right=0,
        pad_mode="replicate", chunk_frames=1, frames_per_chunk=fpc, n_chunks=-(-T // fpc),
        prior_id=container.short_id(prior.weights_hash()), group_bits=c.group_bits, tile=tuple(c.tile),
        passes=c.passes if c.kind == "parallel" else 0, schedule=c.schedule if c.kind == "parallel" else "none",
        arithmetic="int-fx12", prob_bits=prob_bits, video_cond=c.video,
    )
    tokens = np.random.default_rng(2).integers(0, 1 << c.bits, (T, h, w))
    data, _ = encode_tokens(tokens, header, prior, CodecOptions(tile_batch=2))
    return data, tokens


@pytest.mark.parametrize("case", sorted(SYNTHETIC))
def test_numpy_decoder_on_synthetic_priors(case, tmp_path):
    cfg, shape = SYNTHETIC[case]
    data, tokens = synthetic_file(tmp_path, cfg, *shape)
    _, ours = nd.decode_file(data, tmp_path)
    np.testing.assert_array_equal(ours, tokens)


# ---- the worked example of section 8 -----------------------------------------------------------------------
def table_rows(heading: str, numbered: bool = True) -> list[list[str]]:
    """Rows of the markdown tables under a heading of FORMAT.md (up to the next heading): those whose
    first cell is a number, or all but the header and rule rows."""
    text = SPEC.split(f"{heading}\n")[1].split("\n#")[0]
    lines = [line.strip().strip("|") for line in text.splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.split("|")] for line in lines]
    return [r for r in rows if r[0].isdigit()] if numbered else [r for r in rows[2:] if not r[0].startswith("-")]


def test_worked_example_matches_the_golden_file():
    data = (DATA / "image-raw.bsq").read_bytes()
    rows = table_rows("## 8. Worked example")
    assert [int(r[0]) for r in rows] == list(np.cumsum([0] + [int(r[1]) for r in rows[:-1]]))  # contiguous
    assert int(rows[-1][0]) + int(rows[-1][1]) == 122  # the payload of chunk 0 starts at 122
    for off, size, typ, field, raw, value in rows:
        chunk = data[int(off) : int(off) + int(size)]
        assert chunk == bytes.fromhex(raw.strip("`")), field
        number = value.split()[0]
        if typ in ("u8", "u16", "u32"):
            assert int.from_bytes(chunk, "little") == int(number), field
        elif typ == "f64":
            assert struct.unpack("<d", chunk)[0] == float(number), field
        elif number.startswith("`") and field != "magic":
            assert chunk.hex() == number.strip("`"), field
    layout = {r[3]: r[:3] for r in table_rows("### 2.1 Prefix and header body")}
    assert len(layout) == 31  # prefix, 25 fields, ext_len, ext
    for off, size, typ, field, *_ in rows:
        if field in layout:
            assert layout[field] == [off, size, typ], field
    _, tokens = nd.decode_file(data)
    first = re.search(r"the first tokens\s+are ([\d, ]+)\(", SPEC).group(1)
    assert [int(t) for t in first.split(",")] == tokens.ravel()[:3].tolist()
    assert f"`{GOLDEN['files']['image-raw']['tokens_sha256']}`" in SPEC.split("## 8.")[1]
    assert sha(tokens) == GOLDEN["files"]["image-raw"]["tokens_sha256"]
