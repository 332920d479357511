"""The classical codecs ``bsqvit rd`` compares against: quality sweeps through Pillow (JPEG, WebP,
AVIF, JPEG2000) or PyAV (libx264, libx265, libsvtav1 CRF sweeps, ``preset medium`` / default
speed, yuv420p). Each encoder returns the whole file's size and the decoded pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import InputError, VideoWriter, iter_video_frames, to_rgb

__all__ = ["IMAGE_SWEEPS", "VIDEO_SWEEPS", "pillow_codecs", "encode_image", "video_codecs", "encode_video"]

IMAGE_SWEEPS = {
    "jpeg": [1, 3, 5, 10, 15, 20, 30, 40, 50, 60, 75, 90],
    "webp": [0, 2, 5, 10, 20, 30, 40, 50, 60, 75, 90],
    "avif": [0, 5, 10, 20, 30, 40, 50, 60, 70, 80],
    "jpeg2000": [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.2],  # target bpp -> compression ratio 24 / bpp
}
VIDEO_SWEEPS = {
    "h264": ("libx264", [20, 26, 32, 38, 44, 50]),
    "h265": ("libx265", [20, 26, 32, 38, 44, 50]),
    "av1": ("libsvtav1", [25, 35, 45, 52, 58, 63]),
}


def pillow_codecs() -> list[str]:
    """The image baselines this Pillow build can encode."""
    from PIL import features  # probes the codec libraries: only when a sweep is asked for

    out = ["jpeg"]
    if features.check("webp"):
        out.append("webp")
    if features.check("avif"):
        out.append("avif")
    if features.check("jpg_2000"):
        out.append("jpeg2000")
    return out


def encode_bytes(a: np.ndarray, codec: str, q) -> bytes:
    """uint8 (H, W, 3) -> the file a Pillow codec writes at setting ``q`` (the sweeps' settings)."""
    img = Image.fromarray(a)
    buf = io.BytesIO()
    if codec == "jpeg":
        img.save(buf, format="JPEG", quality=int(q))
    elif codec == "webp":
        img.save(buf, format="WEBP", quality=int(q), method=4)
    elif codec == "avif":
        img.save(buf, format="AVIF", quality=int(q))
    elif codec == "jpeg2000":
        img.save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[24.0 / float(q)], irreversible=True)
    else:
        raise InputError(f"unknown image codec {codec!r}")
    return buf.getvalue()


def encode_image(a: np.ndarray, codec: str, q) -> tuple[int, np.ndarray]:
    """uint8 (H, W, 3) -> (bytes, decoded uint8 (H, W, 3)) with a Pillow codec at setting ``q``."""
    data = encode_bytes(a, codec, q)
    with Image.open(io.BytesIO(data)) as im:
        dec = np.array(to_rgb(im))
    return len(data), dec


def video_codecs() -> list[str]:
    """The video baselines this PyAV build can encode."""
    import av  # heavy (FFmpeg): only for video sweeps

    names = set(av.codecs_available)
    return [k for k, (enc, _) in VIDEO_SWEEPS.items() if enc in names]


def encode_video(frames: np.ndarray, fps: float, codec: str, crf: int, tmpdir: Path) -> tuple[int, np.ndarray]:
    """uint8 (T, H, W, 3) -> (file bytes, decoded uint8 (T, H, W, 3)) at ``crf``: an MP4 file, or a
    Matroska one where FFmpeg's MP4 muxer refuses the stream (it does for some very short libx265
    streams: "not yet implemented"); the file goes through ``tmpdir`` and is removed."""
    import av

    try:
        return _encode_video_file(frames, fps, codec, crf, tmpdir / f"{codec}_{crf}.mp4")
    except av.error.FFmpegError:
        return _encode_video_file(frames, fps, codec, crf, tmpdir / f"{codec}_{crf}.mkv")


def _encode_video_file(frames: np.ndarray, fps: float, codec: str, crf: int, path: Path) -> tuple[int, np.ndarray]:
    enc = VIDEO_SWEEPS[codec][0]
    opts = {} if enc in ("libx264", "libx265") else {"crf": str(crf)}
    with VideoWriter(path, fps, codec=enc, crf=crf if enc in ("libx264", "libx265") else None, options=opts) as w:
        w.write(frames)
    n = path.stat().st_size
    T, H, W = frames.shape[:3]
    dec = np.stack([f[:H, :W] for f in iter_video_frames(path)])
    path.unlink()
    if dec.shape != frames.shape:
        raise RuntimeError(f"{codec}: decoded {dec.shape}, expected {frames.shape}")
    return n, dec
