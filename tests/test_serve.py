"""``bsqvit serve``: the HTTP API against the library (Flask's test client), bad uploads, and the page
in a real headless Chromium (Debian's ``chromium`` driven by Playwright; skipped without them).

Every number the page shows is checked against :func:`bsqvit.serve.pipeline.analyze` run on the
same file read by :func:`bsqvit.io.load_image`: the server's decoding path must not change a bit.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import struct
import sys
import threading
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from bsqvit.cli import main
from bsqvit.codec import decompress
from bsqvit.evaluation.baselines import encode_image
from bsqvit.io import load_image, to_uint8
from bsqvit.pretrained import sample_images
from bsqvit.serve import create_app
from bsqvit.serve.pipeline import (
    analyze,
    center_crop,
    class_samples,
    encode_at_most,
    load_models,
)

pytest.importorskip("flask", reason="the 'serve' extra (flask) is not installed")

SAMPLE = "kodim03.png"
SIDE = 128
MAX_UPLOAD = 2_000_000


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: oversubscribed threads are much slower
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def crop_file(tmp_path_factory):
    """The central 128x128 of a shipped sample, as a PNG file."""
    path = tmp_path_factory.mktemp("serve") / "crop.png"
    x = center_crop(load_image(sample_images() / SAMPLE), SIDE)
    Image.fromarray(to_uint8(x)).save(path)
    return path


@pytest.fixture(scope="module")
def expected(crop_file):
    """What the library gives for that file: the reference for every number on the page."""
    return analyze(load_image(crop_file), load_models())


@pytest.fixture(scope="module")
def client():
    return create_app(max_upload=MAX_UPLOAD).test_client()


def _post(client, **data):
    return client.post("/api/analyze", data=data, content_type="multipart/form-data")


def _upload(client, payload: bytes, name: str):
    return _post(client, image=(io.BytesIO(payload), name))


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im)


def _check_numbers(got: dict, res) -> None:
    assert set(got) == set(res.numbers) == {"bsq", "jpeg", "webp"}
    for codec, n in res.numbers.items():
        assert set(got[codec]) == set(n), codec
        for k, v in n.items():  # numbers to round-off, everything else (coder, fits) exactly
            if isinstance(v, float):
                assert got[codec][k] == pytest.approx(v, rel=1e-12), (codec, k)
            else:
                assert got[codec][k] == v, (codec, k)


def test_upload_gives_the_numbers_of_the_library(client, crop_file, expected):
    r = _upload(client, crop_file.read_bytes(), "crop.png")
    assert r.status_code == 200, r.get_json()
    j = r.get_json()
    assert (j["width"], j["height"]) == (SIDE, SIDE) and j["grid"] == [SIDE // 8, SIDE // 8]
    _check_numbers(j["numbers"], expected)
    bsq = j["numbers"]["bsq"]
    assert bsq["bpp"] == pytest.approx(8 * bsq["bytes"] / SIDE**2) and bsq["ms_ssim"] is None  # < 161 px

    # downloads: the .bsq is the library's file and decodes to the reconstruction shown
    data = client.get(j["files"]["image.bsq"]).data
    assert data == expected.files["image.bsq"]
    recon = _pixels(client.get(j["files"]["reconstruction.png"]).data)
    assert np.array_equal(recon, to_uint8(decompress(data, load_models().tokenizer, load_models().prior)))
    assert "attachment" in client.get(j["files"]["image.bsq"]).headers["Content-Disposition"]
    for codec, name in (("jpeg", "jpeg.jpg"), ("webp", "webp.webp")):
        f = client.get(j["files"][name]).data
        assert len(f) == j["numbers"][codec]["bytes"]
        assert len(f) <= bsq["bytes"] or not j["numbers"][codec]["fits"]

    # bit-planes: L h x w images whose bits, MSB first, rebuild the tokenizer's indices
    tok = load_models().tokenizer
    L = tok.quantizer.dim
    planes = [_pixels(base64.b64decode(p.split(",", 1)[1])) for p in j["planes"]]
    assert len(planes) == L and all(p.shape == (SIDE // 8, SIDE // 8) for p in planes)
    rebuilt = sum((torch.from_numpy(p // 255).long() << (L - 1 - k)) for k, p in enumerate(planes))
    with torch.no_grad():
        assert torch.equal(rebuilt, tok.encode(load_image(crop_file)[None])[0])


def test_picking_a_sample_with_a_crop_is_the_same_image(client, expected):
    r = _post(client, sample=SAMPLE, crop=str(SIDE))
    assert r.status_code == 200, r.get_json()
    _check_numbers(r.get_json()["numbers"], expected)


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_same_size_baselines_are_the_largest_quality_that_fits(codec):
    a = to_uint8(center_crop(load_image(sample_images() / SAMPLE), 96))
    target = len(encode_at_most(a, codec, 10**9)[1]) // 3  # somewhere inside the quality range
    q, data, fits = encode_at_most(a, codec, target)
    assert fits and len(data) <= target
    assert len(data) == encode_image(a, codec, q)[0]  # the project's baseline settings
    assert encode_image(a, codec, q + 1)[0] > target  # one step up is over the size
    q0, small, fits = encode_at_most(a, codec, 10)  # nothing is that small: the lowest quality, flagged
    assert not fits and q0 == {"jpeg": 1, "webp": 0}[codec] and len(small) > 10


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width x height`` RGB pixels, with an (almost) empty IDAT: no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


@pytest.mark.parametrize("payload, name, message", [
    (b"just some text\n", "notes.txt", "notes.txt: not an image"),
    ("truncated", "cut.png", "cut.png: corrupt or truncated image"),
    (b"\0" * (MAX_UPLOAD + 1000), "big.png", "upload too large (2.0 MB, the limit is 2.0 MB)"),
    (_png_header_only(20000, 20000), "huge.png", "huge.png: 20000x20000 = 400,000,000 pixels, over the limit"),
    (b"", "empty.png", "empty.png: empty file"),
], ids=["wrong-type", "corrupt", "too-large", "too-many-pixels", "empty"])
def test_bad_uploads_are_a_400_with_one_line(client, crop_file, payload, name, message):
    if payload == "truncated":
        payload = crop_file.read_bytes()[:2000]
    r = _upload(client, payload, name)
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert message in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("data, message", [
    ({}, "no image: choose a file to upload or pick a sample"),
    ({"sample": "../../etc/passwd"}, "../../etc/passwd: not one of the shipped samples"),
    ({"sample": SAMPLE, "crop": "7"}, "crop must be one of 0, 128, 256, 512"),
])
def test_bad_forms_are_a_400(client, data, message):
    r = _post(client, **data)
    assert r.status_code == 400 and message in r.get_json()["error"]


def test_unknown_result_files_are_a_404(client):
    r = client.get("/files/nothing/image.bsq")
    assert r.status_code == 404 and "no such file" in r.get_json()["error"]


def test_page_and_class_samples(client):
    page = client.get("/").get_data(as_text=True)
    assert f'<option value="{SAMPLE}">' in page and "uploads up to 2 MB, at most 4 MP" in page
    got = client.get("/api/samples").get_json()["samples"]
    want = class_samples(load_models())
    assert [s["name"] for s in got] == [n for n, _ in want] and len(got) == 10
    for s, (_, a) in zip(got, want):
        assert np.array_equal(_pixels(base64.b64decode(s["image"].split(",", 1)[1])), a)


@pytest.mark.parametrize("argv, message", [
    (["--port", "0"], "--port must be in 1..65535, got 0"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be > 0"),
    (["--model", "no/such/dir"], "no/such/dir: not a model directory"),
])
def test_command_line_errors_are_one_line(capsys, argv, message):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_without_flask_the_command_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "flask", None)  # import flask fails
    assert main(["serve", "--port", "8123"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bsqvit serve needs flask" in err and "bsqvit[serve]" in err


# ---- a real browser ---------------------------------------------------------------------------------
CHROMIUM = os.environ.get("BSQVIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server_url():
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, create_app(max_upload=MAX_UPLOAD), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the driver library) is not installed")
    if CHROMIUM is None:
        pytest.skip("no chromium executable (apt-get install chromium, or set BSQVIT_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def test_in_chromium_the_page_shows_the_librarys_numbers(browser, server_url, crop_file, expected, tmp_path):
    page = browser.new_page(accept_downloads=True)
    page.goto(server_url)
    page.set_input_files("#file", str(crop_file))
    page.click("#go")
    page.wait_for_selector("#result:not([hidden])", timeout=180_000)

    def text(selector: str) -> str:
        return page.text_content(selector).strip()

    for codec, n in expected.numbers.items():
        assert int(text(f"#{codec}-bytes")) == n["bytes"]
        assert float(text(f"#{codec}-bpp")) == pytest.approx(n["bpp"], abs=5e-5)
        assert float(text(f"#{codec}-psnr")) == pytest.approx(n["psnr"], abs=5e-3)
    assert text("#bsq-msssim") == "n/a (< 161 px)"
    assert page.locator("#planes img").count() == load_models().tokenizer.quantizer.dim
    with page.expect_download() as dl:
        page.click("#bsq-download")
    saved = tmp_path / "got.bsq"
    dl.value.save_as(saved)
    assert saved.read_bytes() == expected.files["image.bsq"]
    page.wait_for_function("document.querySelectorAll('#gen img').length == 10", timeout=120_000)

    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"})
    page.click("#go")
    page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=60_000)
    assert text("#error").startswith("notes.txt: not an image")
    page.close()
