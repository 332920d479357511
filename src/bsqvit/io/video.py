"""Videos as ``(3, T, H, W)`` float32 tensors in [-1, 1], read and written with PyAV (FFmpeg).

Reading handles containers (mp4, avi, mkv, mov, webm) and raw Annex-B elementary streams
(``.264``/``.h264``/``.jsv`` H.264, ``.265``/``.hevc`` HEVC). Raw streams carry no timestamps:
their frame rate is reported as 25 fps (FFmpeg's own assumption), as is any stream without a rate.
Frames are converted to RGB by FFmpeg (``rgb24``). :func:`iter_video_frames` decodes lazily
(one uint8 frame at a time) for long videos; :func:`read_video` loads a clip into one tensor.

Writing (:class:`VideoWriter`, :func:`write_video`) is atomic (temporary file + ``os.replace``)
and streams frames, so long videos need not be held in memory. The default is H.264
(``libx264``, ``yuv420p``, CRF 18): 4:2:0 chroma needs even width and height, so odd sizes are
**padded by one replicated row/column** (``odd_size="pad"``, the default: no pixel is lost and
the first H x W pixels of the file are the video) or cropped (``odd_size="crop"``), or refused
(``"error"``). For exact round trips use :func:`write_video_lossless` (``libx264rgb`` with CRF 0:
lossless RGB in MP4, any size; not every player shows RGB H.264, but FFmpeg/PyAV decode it exactly).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .files import InputError, commit_temp, discard_temp, one_line, temp_path_for
from .image import MAX_PIXELS, check_pixels, from_uint8, to_uint8

# The one table of video suffixes (containers and raw streams PyAV/FFmpeg reads); which of them
# can be *written* is WRITE_CONTAINERS. ``.gif`` is an image here (it is read by Pillow).
VIDEO_SUFFIXES: frozenset[str] = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
    ".flv", ".wmv", ".ogv", ".3gp", ".y4m", ".ivf", ".264", ".h264", ".jsv", ".avc", ".265",
    ".h265", ".hevc", ".bit",
})
RAW_STREAM_SUFFIXES = {".264": "h264", ".h264": "h264", ".jsv": "h264", ".avc": "h264",
                       ".265": "hevc", ".h265": "hevc", ".hevc": "hevc"}
WRITE_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".webm": "webm"}
DEFAULT_FPS = 25.0


def is_video_path(path: str | os.PathLike) -> bool:
    """True for a video suffix (case-insensitive); everything else is treated as an image."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


# ---- reading ------------------------------------------------------------------------------------
def _open(path: Path):
    import av

    if not path.is_file():
        raise InputError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    fmt = RAW_STREAM_SUFFIXES.get(path.suffix.lower())
    try:
        container = av.open(str(path), format=fmt)
    except av.error.FFmpegError as e:
        raise InputError(f"{path}: cannot read video ({one_line(getattr(e, 'strerror', None) or e)})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: contains no video stream")
    return container


def _fps(container, stream) -> float:
    if container.format.name in ("h264", "hevc"):  # raw elementary stream: no timestamps
        return DEFAULT_FPS
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    try:
        value = float(rate) if rate else 0.0
    except (TypeError, ZeroDivisionError):
        value = 0.0
    return value if 0 < value < 1000 else DEFAULT_FPS


def video_info(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> dict:
    """``{width, height, fps, frames, codec, format}`` of the first video stream.

    Width and height come from the first decoded frame (container headers can disagree);
    ``frames`` is the header's count, ``None`` where there is none (raw streams). Frames over
    ``max_pixels`` are refused (see :func:`iter_video_frames`).
    """
    path = Path(path)
    first = next(iter_video_frames(path, max_frames=1, max_pixels=max_pixels), None)
    if first is None:
        raise InputError(f"{path}: contains no decodable video frames")
    with _open(path) as container:
        s = container.streams.video[0]
        return {
            "width": int(first.shape[1]),
            "height": int(first.shape[0]),
            "fps": _fps(container, s),
            "frames": int(s.frames) or None,
            "codec": s.codec_context.name,
            "format": container.format.name,
        }


def iter_video_frames(
    path: str | os.PathLike, start: int = 0, stride: int = 1, max_frames: int | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> Iterator[np.ndarray]:
    """Decode frames lazily: yields uint8 ``(H, W, 3)`` RGB arrays.

    Frames ``start, start + stride, ...`` (0-based decode order), at most ``max_frames`` of them.
    Skipped frames are still decoded (exact, no seeking). Raises :class:`InputError` for an
    unreadable file, a stream with no decodable frame, a frame size that changes mid-stream, or
    frames over ``max_pixels`` (from the stream header before decoding, and from every frame
    before it is converted).
    """
    import av

    if start < 0 or stride < 1 or (max_frames is not None and max_frames < 0):
        raise ValueError(f"bad frame selection start={start} stride={stride} max_frames={max_frames}")
    path = Path(path)
    container = _open(path)
    if max_frames == 0:
        container.close()
        return
    with container:
        stream = container.streams.video[0]
        check_pixels(path, stream.codec_context.width or 0, stream.codec_context.height or 0, max_pixels)
        stream.thread_type = "AUTO"
        i, n_out, size = -1, 0, None
        try:
            for frame in container.decode(stream):
                i += 1
                check_pixels(path, frame.width, frame.height, max_pixels)
                if i < start or (i - start) % stride:
                    continue
                a = frame.to_ndarray(format="rgb24")
                if size is None:
                    size = a.shape
                elif a.shape != size:
                    raise InputError(f"{path}: frame size changes mid-stream at frame {i} ({size[1]}x{size[0]} -> {a.shape[1]}x{a.shape[0]})")
                yield a
                n_out += 1
                if max_frames is not None and n_out >= max_frames:
                    return
        except av.error.FFmpegError as e:
            raise InputError(f"{path}: video decoding failed after frame {i} ({one_line(e)})") from None
        if i < 0:
            raise InputError(f"{path}: contains no decodable video frames")


def read_video(
    path: str | os.PathLike, max_frames: int | None = None, start: int = 0, stride: int = 1
) -> tuple[torch.Tensor, float]:
    """Read frames into a float32 tensor ``(3, T, H, W)`` in [-1, 1], and the frame rate.

    The returned rate is the playback rate of the selected frames: the stream's rate (25 for
    raw streams or streams without one) divided by ``stride``.
    """
    path = Path(path)
    frames = list(iter_video_frames(path, start=start, stride=stride, max_frames=max_frames))
    if not frames:
        raise InputError(f"{path}: no frames selected (start={start}, stride={stride}, max_frames={max_frames})")
    with _open(path) as container:
        fps = _fps(container, container.streams.video[0])
    return from_uint8(np.stack(frames)), fps / stride


# ---- writing ------------------------------------------------------------------------------------
def _needs_even(pix_fmt: str) -> tuple[bool, bool]:
    """(height must be even, width must be even) for a chroma-subsampled pixel format."""
    if pix_fmt.startswith(("yuv420", "yuvj420", "nv12", "nv21", "p010")):
        return True, True
    if pix_fmt.startswith(("yuv422", "yuvj422", "yuyv422", "uyvy422")):
        return False, True
    return False, False


class VideoWriter:
    """Stream frames into a video file, atomically.

    >>> with VideoWriter("out.mp4", fps=25) as w:
    ...     for chunk in chunks:              # (3, t, H, W) in [-1, 1], or uint8 (t, H, W, 3)
    ...         w.write(chunk)

    The file appears at ``path`` only when the writer is closed without error; on an exception
    inside the ``with`` block (or :meth:`abort`) nothing is left behind. The container follows the
    suffix (.mp4, .mov, .mkv, .avi, .webm). ``lossless=True`` selects ``libx264rgb`` CRF 0 (exact RGB).
    See the module docstring for odd frame sizes.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        codec: str = "libx264",
        crf: int | None = 18,
        preset: str = "medium",
        pix_fmt: str | None = None,
        odd_size: str = "pad",
        lossless: bool = False,
        options: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in WRITE_CONTAINERS:
            raise InputError(f"{self.path}: cannot write video with suffix {suffix!r} (use one of {', '.join(WRITE_CONTAINERS)})")
        if not (fps and 0 < float(fps) < 1000):
            raise ValueError(f"fps must be in (0, 1000), got {fps}")
        if odd_size not in ("pad", "crop", "error"):
            raise ValueError(f"odd_size must be pad, crop or error, got {odd_size!r}")
        if lossless:
            codec, crf, pix_fmt = "libx264rgb", 0, "rgb24"
        if pix_fmt is None:
            pix_fmt = {"libx264rgb": "rgb24", "ffv1": "bgr0", "png": "rgb24"}.get(codec, "yuv420p")
        self.container_format = WRITE_CONTAINERS[suffix]
        self.fps = float(fps)
        self.codec, self.crf, self.preset, self.pix_fmt = codec, crf, preset, pix_fmt
        self.odd_size = odd_size
        self.options = dict(options or {})
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (H, W) of the input frames
        self._container = None
        self._stream = None
        self._tmp = temp_path_for(self.path)
        self._done = False

    # -- internals --
    def _start(self, H: int, W: int) -> None:
        import av

        even_h, even_w = _needs_even(self.pix_fmt)
        oh, ow = H, W
        if (even_h and H % 2) or (even_w and W % 2):
            if self.odd_size == "error":
                raise ValueError(f"{self.pix_fmt} needs even sizes, got {W}x{H}")
            step = 1 if self.odd_size == "pad" else -1
            oh, ow = H + step * (even_h and H % 2), W + step * (even_w and W % 2)
            if oh < 1 or ow < 1:
                raise ValueError(f"cannot crop a {W}x{H} frame to even size")
        self.size, self._out_size = (H, W), (oh, ow)
        self._container = av.open(str(self._tmp), "w", format=self.container_format)
        stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(100000))
        stream.width, stream.height, stream.pix_fmt = ow, oh, self.pix_fmt
        opts = {}
        if self.codec.startswith(("libx264", "libx265")):
            if self.crf is not None:
                opts["crf"] = str(self.crf)
            opts["preset"] = self.preset
        if self.codec == "libx265":
            opts["x265-params"] = "log-level=error"
        opts.update(self.options)
        stream.options = opts
        self._stream = stream

    def _fit(self, a: np.ndarray) -> np.ndarray:
        H, W = self.size
        oh, ow = self._out_size
        if (oh, ow) == (H, W):
            return a
        if oh < H or ow < W:
            return np.ascontiguousarray(a[:oh, :ow])
        return np.pad(a, ((0, oh - H), (0, ow - W), (0, 0)), mode="edge")

    # -- API --
    def write(self, frames) -> None:
        """Append frames: tensor (3,H,W)/(3,T,H,W) in [-1,1], or uint8 array (H,W,3)/(T,H,W,3)."""
        import av

        if self._done:
            raise ValueError("VideoWriter is closed")
        a = to_uint8(frames) if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if a.dtype != np.uint8 or a.ndim not in (3, 4) or a.shape[-1] != 3:
            raise ValueError(f"expected uint8 (H,W,3)/(T,H,W,3) frames or a tensor in [-1,1], got {a.dtype} {a.shape}")
        if a.ndim == 3:
            a = a[None]
        if self._container is None:
            self._start(a.shape[1], a.shape[2])
        elif tuple(a.shape[1:3]) != self.size:
            raise ValueError(f"frame size {a.shape[2]}x{a.shape[1]} differs from the first frame's {self.size[1]}x{self.size[0]}")
        for f in a:
            frame = av.VideoFrame.from_ndarray(self._fit(f), format="rgb24")
            frame.pts = self.frames_written
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames_written += 1

    def close(self) -> None:
        """Flush, finish the file and move it onto ``path``."""
        if self._done:
            return
        try:
            if self._container is None:
                raise ValueError(f"{self.path}: no frames were written")
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
            commit_temp(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is left untouched."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                pass
            self._container = None
        discard_temp(self._tmp)
        self._done = True

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):  # an abandoned writer must not leave its temporary file
        if not getattr(self, "_done", True):
            self.abort()


def write_video(
    video: torch.Tensor,
    path: str | os.PathLike,
    fps: float,
    codec: str = "libx264",
    crf: int | None = 18,
    **kwargs,
) -> None:
    """Write a (3, T, H, W) tensor in [-1, 1] (or uint8 (T, H, W, 3)) to ``path`` atomically.

    Extra keyword arguments go to :class:`VideoWriter` (``preset``, ``pix_fmt``, ``odd_size``, ``lossless``, ``options``).
    """
    with VideoWriter(path, fps, codec=codec, crf=crf, **kwargs) as w:
        w.write(video)


def write_video_lossless(video: torch.Tensor, path: str | os.PathLike, fps: float) -> None:
    """Exact RGB video (``libx264rgb``, CRF 0): :func:`read_video` gives back the same uint8 frames."""
    write_video(video, path, fps, lossless=True)
