"""Pixel limits on inputs: refused from the header, before anything is decoded, with one line."""

from __future__ import annotations

import struct
import time
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from bsqvit.cli import main
from bsqvit.data.images import open_rgb
from bsqvit.io import InputError, iter_video_frames, load_image, video_info, write_video
from bsqvit.io.image import MAX_PIXELS


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` (its pixel data is a stub: never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def test_a_huge_image_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.png"
    _png_header_only(path, 100_000, 80_000)  # 8 GP: Pillow itself would raise a DecompressionBombError
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw Pillow warning leaks out
        with pytest.raises(InputError, match=r"100000x80000 = 8,000,000,000 pixels, over the limit of 64,000,000"):
            load_image(path)
    assert time.perf_counter() - t0 < 1.0  # nothing was decoded
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own setting is restored


def test_the_limit_is_exact_and_can_be_raised_or_lowered(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(path)
    assert load_image(path, max_pixels=42).shape == (3, 6, 7)  # 42 pixels: at the limit
    with pytest.raises(InputError, match="7x6 = 42 pixels, over the limit of 41"):
        load_image(path, max_pixels=41)
    assert load_image(path, max_pixels=None).shape == (3, 6, 7)
    assert MAX_PIXELS == 64_000_000


def test_training_images_are_checked_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    _png_header_only(path, 20_000, 20_000)
    with pytest.raises(InputError, match="over the limit"):
        open_rgb(str(path))


def test_video_frames_over_the_limit_are_refused(tmp_path):
    v = torch.zeros(3, 2, 16, 24)
    write_video(v, tmp_path / "v.mp4", fps=10)
    assert video_info(tmp_path / "v.mp4", max_pixels=384)["width"] == 24
    with pytest.raises(InputError, match="24x16 = 384 pixels, over the limit of 383"):
        next(iter_video_frames(tmp_path / "v.mp4", max_pixels=383))
    with pytest.raises(InputError, match="over the limit"):
        video_info(tmp_path / "v.mp4", max_pixels=100)


@pytest.mark.parametrize("command", ["reconstruct", "tokenize", "compress"])
def test_cli_refuses_with_one_line_and_writes_nothing(tmp_path, capsys, command):
    path = tmp_path / "huge.png"
    _png_header_only(path, 12_000, 8_000)
    out = tmp_path / {"reconstruct": "out.png", "tokenize": "out.npz", "compress": "out.bsq"}[command]
    rc = main([command, str(path), str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and not out.exists()
    assert err.count("\n") == 1 and "12000x8000 = 96,000,000 pixels" in err and "--max-pixels" in err
    rc = main([command, str(path), str(out), "--max-pixels", "0"])
    assert rc != 0 and "--max-pixels must be >= 1" in capsys.readouterr().err
