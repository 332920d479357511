"""bsqvit.io: images and videos as tensors (reading, conversion rules, writing, atomicity)."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from bsqvit.io import (
    InputError,
    VideoWriter,
    from_uint8,
    is_video_path,
    iter_video_frames,
    load_image,
    read_video,
    save_image,
    to_uint8,
    video_info,
    write_video,
    write_video_lossless,
)
from shared_data import KODIM01 as KODAK
from shared_data import MP4, RAW_H264, leftovers
from shared_data import needs_kodak_and_video as needs_data



# ---- images -------------------------------------------------------------------------------------
def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)  # H=20, W=40 as stored
    a[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rot.jpg"
    Image.fromarray(a).save(p, exif=exif, quality=95)
    x = load_image(p)
    assert x.shape == (3, 40, 20)  # transposed
    # after a 90 degree CW rotation the stored left half becomes the top half
    assert x[:, :15].mean() > 0.8 and x[:, 25:].mean() < -0.8


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "P+transparency", "L", "1", "CMYK", "I;16"])
def test_modes_convert_to_three_channels(tmp_path, mode):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 17, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray((rng.integers(0, 65536, (12, 17))).astype(np.uint16))
        assert img.mode == "I;16"
    elif mode == "P+transparency":  # palette with a transparent entry (PNG tRNS): opens as P + info
        img = rgb.convert("P")
        img.info["transparency"] = 0
    else:
        img = rgb.convert(mode)
    suffix = ".tif" if mode == "CMYK" else ".png"
    p = tmp_path / f"img{suffix}"
    img.save(p)
    if mode == "P+transparency":
        assert "transparency" in Image.open(p).info
    x = load_image(p)
    assert x.shape == (3, 12, 17) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    if mode in ("L", "1", "I;16"):
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    if mode == "I;16":  # 16-bit precision kept
        ref = torch.from_numpy(np.asarray(img).astype(np.float32) / 65535 * 2 - 1)
        assert torch.allclose(x[0], ref, atol=1e-6)


def test_alpha_is_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255  # red
    a[:2, :, 3] = 0  # top half fully transparent
    a[2:, :, 3] = 255  # bottom half opaque
    p = tmp_path / "a.png"
    Image.fromarray(a).save(p)
    x = load_image(p)
    assert torch.allclose(x[:, :2], torch.ones(3, 2, 4))  # white
    assert torch.allclose(x[:, 2:], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 2, 4))


def test_uint8_round_trip_exact(tmp_path):
    a = np.arange(256, dtype=np.uint8).reshape(16, 16)
    a = np.stack([a, a[::-1], a.T], -1)
    t = from_uint8(a)
    assert t.shape == (3, 16, 16) and t.min() == -1 and t.max() == 1
    assert np.array_equal(to_uint8(t), a)
    v = np.stack([a, a[:, ::-1]])
    assert from_uint8(v).shape == (3, 2, 16, 16) and np.array_equal(to_uint8(from_uint8(v)), v)
    # PNG save/load round trip is exact too
    p = tmp_path / "u.png"
    save_image(t, p)
    assert np.array_equal(np.asarray(Image.open(p)), a)
    assert torch.equal(load_image(p), t)
    assert leftovers(tmp_path) == []


def test_save_image_rounds_and_checks(tmp_path):
    t = torch.full((3, 2, 2), 0.001)  # 127.6275 -> 128
    save_image(t, tmp_path / "r.png")
    assert np.asarray(Image.open(tmp_path / "r.png")).max() == 128
    save_image(t, tmp_path / "noext")  # no suffix: PNG
    assert Image.open(tmp_path / "noext").format == "PNG"
    with pytest.raises(InputError, match="does not exist"):
        save_image(t, tmp_path / "missing" / "x.png")
    with pytest.raises(InputError, match="suffix"):
        save_image(t, tmp_path / "x.notaformat")
    assert leftovers(tmp_path) == []


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.png") as e:
        load_image(tmp_path / "nope.png")
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    bad = tmp_path / "bad.png"
    bad.write_bytes(KODAK.read_bytes()[:300] if KODAK.is_file() else b"\x89PNG\r\n\x1a\nxxxx")
    with pytest.raises(InputError, match="bad.png"):
        load_image(bad)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"hello")
    with pytest.raises(InputError, match="junk.jpg"):
        load_image(junk)


# ---- videos -------------------------------------------------------------------------------------
def test_is_video_path():
    for s in ("a.mp4", "b.AVI", "c.mkv", "d.mov", "e.webm", "f.264", "g.h264", "h.jsv", "i.265", "j.hevc"):
        assert is_video_path(s), s
    for s in ("a.png", "b.jpg", "c.npz", "noext"):
        assert not is_video_path(s), s


@needs_data
def test_read_raw_h264_stream():
    v, fps = read_video(RAW_H264)
    assert v.shape == (3, 62, 144, 176) and v.dtype == torch.float32
    assert fps == 25.0
    assert -1 <= v.min() and v.max() <= 1 and v.std() > 0.1
    info = video_info(RAW_H264)
    assert (info["width"], info["height"], info["fps"]) == (176, 144, 25.0)
    # lazy iteration gives the same frames
    frames = list(iter_video_frames(RAW_H264, start=3, stride=5, max_frames=4))
    assert len(frames) == 4 and frames[0].shape == (144, 176, 3) and frames[0].dtype == np.uint8
    assert np.array_equal(frames[1], to_uint8(v[:, 8]))


@needs_data
def test_read_mp4_with_selection():
    v, fps = read_video(MP4)
    assert v.shape == (3, 36, 240, 320)
    assert abs(fps - 45000 / 1499) < 1e-6
    s, fps2 = read_video(MP4, max_frames=5, start=2, stride=3)
    assert s.shape == (3, 5, 240, 320) and abs(fps2 - fps / 3) < 1e-9
    assert torch.equal(s[:, 1], v[:, 5])


def test_read_video_errors(tmp_path):
    with pytest.raises(InputError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(InputError, match="junk.mp4"):
        read_video(junk)


def _smooth_video(T=6, H=38, W=50):
    y, x = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    frames = [torch.stack([x * 0.8, y * 0.8, (x + y).clamp(-1, 1) * 0.5 + 0.1 * t / T]) for t in range(T)]
    return torch.stack(frames, 1)  # (3, T, H, W)


def test_write_then_read_video(tmp_path):
    v = _smooth_video()
    write_video(v, tmp_path / "v.mp4", fps=12)
    r, fps = read_video(tmp_path / "v.mp4")
    assert r.shape == v.shape and fps == 12
    assert (r - v).abs().mean() < 0.02  # lossy but close
    # lossless: exact after uint8 quantisation, odd sizes fine
    v_odd = _smooth_video(T=3, H=37, W=51)
    write_video_lossless(v_odd, tmp_path / "l.mp4", fps=30000 / 1001)
    r, fps = read_video(tmp_path / "l.mp4")
    assert np.array_equal(to_uint8(r), to_uint8(v_odd)) and abs(fps - 30000 / 1001) < 1e-6
    # yuv420p needs even sizes: pad (default) or crop
    write_video(v_odd, tmp_path / "p.mp4", fps=25)
    assert read_video(tmp_path / "p.mp4")[0].shape == (3, 3, 38, 52)
    write_video(v_odd, tmp_path / "c.mp4", fps=25, odd_size="crop")
    assert read_video(tmp_path / "c.mp4")[0].shape == (3, 3, 36, 50)
    assert leftovers(tmp_path) == []


def test_video_writer_is_atomic(tmp_path):
    out = tmp_path / "w.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, fps=25) as w:
            w.write(_smooth_video(T=2))
            raise RuntimeError("boom")
    assert not out.exists() and leftovers(tmp_path) == []
    with pytest.raises(InputError):
        VideoWriter(tmp_path / "x.gif", fps=25)
    with pytest.raises(InputError, match="does not exist"):
        VideoWriter(tmp_path / "nodir" / "x.mp4", fps=25)


