"""The web demo's Flask application (``bsqvit serve``): one page, a JSON API, downloads.

Routes:

* ``GET /`` -- the page (:mod:`bsqvit.serve.page`);
* ``POST /api/analyze`` -- multipart form: ``image`` (a file) or ``sample`` (the name of a shipped
  photo), and ``crop`` (a centre square's side in pixels; 0 or absent: the whole image). Answers
  the numbers, the bit-planes (PNG data URIs) and the URLs of the images and files, or HTTP 400
  with ``{"error": "<one line>"}`` for a bad request (no file, wrong type, corrupt, too many
  pixels, a body over the size limit, which is refused from its length before it is read);
* ``GET /api/samples`` -- one generated image per class (computed once, then cached);
* ``GET /files/<id>/<name>`` -- an image or file of a recent result (``?download=1``: as an
  attachment). The last :data:`KEEP` results are kept in memory.

One request is computed at a time (the CPU is the bottleneck; the models are shared).
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from ..extras import require
from ..io import InputError, load_image, one_line
from ..pretrained import sample_images
from . import page
from .pipeline import (
    DEFAULT_MAX_PIXELS,
    analyze,
    center_crop,
    class_samples,
    load_models,
    read_upload,
    sample_files,
)

__all__ = ["CROPS", "DEFAULT_MAX_UPLOAD", "KEEP", "create_app"]

DEFAULT_MAX_UPLOAD = 20_000_000  # bytes of a request body (20 MB)
KEEP = 8  # results kept for downloads (in memory)
CROPS = (0, 128, 256, 512)  # the page's choices of centre crop (0: the whole image)
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp", ".bsq": "application/octet-stream"}
log = logging.getLogger(__name__)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _data_uri(a: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(a)).decode("ascii")


class _State:
    """Models (loaded on first use), recent results, the generated samples and the compute lock."""

    def __init__(self, model_dir, device, max_pixels, samples_dir):
        self.model_dir, self.device, self.max_pixels = model_dir, device, max_pixels
        self.samples = {p.name: p for p in sample_files(samples_dir)} if samples_dir else {}
        self.results: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self.generated: list[dict] | None = None
        self.lock = threading.Lock()

    def models(self):
        return load_models(None if self.model_dir is None else str(self.model_dir), self.device)

    def keep(self, files: dict[str, bytes]) -> str:
        rid = uuid.uuid4().hex[:12]
        self.results[rid] = files
        while len(self.results) > KEEP:
            self.results.popitem(last=False)
        return rid


def _input(request, state: _State):
    """(name, image tensor) of the request, or an InputError."""
    crop = request.form.get("crop", "0")
    if not crop.isdigit() or int(crop) not in CROPS:
        raise InputError(f"crop must be one of {', '.join(map(str, CROPS))}, got {crop!r}")
    up = request.files.get("image")
    if up is not None and up.filename:
        name = Path(up.filename).name or "upload"
        x = read_upload(up.read(), name, state.max_pixels)
    elif request.form.get("sample"):
        name = request.form["sample"]
        if name not in state.samples:
            raise InputError(f"{name}: not one of the shipped samples ({', '.join(state.samples) or 'none'})")
        x = load_image(state.samples[name], max_pixels=state.max_pixels)
    else:
        raise InputError("no image: choose a file to upload or pick a sample")
    return name, center_crop(x, int(crop))


def _response(name: str, rid: str, res) -> dict:
    url = f"/files/{rid}/"
    shown = {"original": "original.png", "reconstruction": "reconstruction.png", "jpeg": "jpeg.jpg",
             "webp": "webp.webp"}  # the lossy files themselves, as the browser decodes them
    return {"id": rid, "name": name, "width": res.width, "height": res.height, "numbers": res.numbers,
            "grid": list(res.planes[0].shape) if res.planes else [], "planes": [_data_uri(p) for p in res.planes],
            "images": {k: url + f for k, f in shown.items() if f in res.files or k == "original"},
            "files": {k: url + k + "?download=1" for k in res.files}}


def _shipped_samples() -> Path | None:
    try:
        return sample_images()
    except InputError:  # an install without the sample photos: uploads only
        return None


def create_app(model_dir=None, device: str = "cpu", max_pixels: int | None = DEFAULT_MAX_PIXELS,
               max_upload: int = DEFAULT_MAX_UPLOAD, samples_dir=None):
    """The Flask app. ``model_dir`` None: the embedded tokenizer; ``samples_dir`` None: the photos
    shipped in the package (:func:`bsqvit.pretrained.sample_images`)."""
    flask = require("flask", "bsqvit serve")
    werkzeug_exc = require("werkzeug.exceptions", "bsqvit serve")
    app = flask.Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload
    state = _State(model_dir, device, max_pixels, samples_dir or _shipped_samples())
    app.extensions["bsqvit"] = state

    def bad(msg: str):
        return flask.jsonify(error=one_line(msg)), 400

    @app.errorhandler(werkzeug_exc.RequestEntityTooLarge)
    def too_large(_e):
        n = flask.request.content_length
        size = f"{n / 1e6:.1f} MB, " if n else ""
        return bad(f"upload too large ({size}the limit is {max_upload / 1e6:.1f} MB)")

    @app.get("/")
    def index():
        return page.render(samples=list(state.samples), crops=CROPS, max_upload=max_upload,
                           max_pixels=max_pixels)

    @app.post("/api/analyze")
    def api_analyze():
        try:
            name, x = _input(flask.request, state)
            with state.lock:
                res = analyze(x, state.models())
        except InputError as e:
            return bad(str(e))
        rid = state.keep({**res.files, "original.png": _png(res.images["original"])})
        return flask.jsonify(_response(name, rid, res))

    @app.get("/api/samples")
    def api_samples():
        with state.lock:
            if state.generated is None:
                state.generated = [{"name": n, "image": _data_uri(a)} for n, a in class_samples(state.models())]
        return flask.jsonify(samples=state.generated)

    @app.get("/files/<rid>/<name>")
    def files(rid: str, name: str):
        data = state.results.get(rid, {}).get(name)
        if data is None:
            return flask.jsonify(error=f"{name}: no such file (results are kept for the last {KEEP} images)"), 404
        return flask.send_file(io.BytesIO(data), mimetype=MIME.get(Path(name).suffix, "application/octet-stream"),
                               as_attachment=flask.request.args.get("download") == "1", download_name=name)

    @app.errorhandler(Exception)
    def internal(e):
        if isinstance(e, werkzeug_exc.HTTPException):
            return flask.jsonify(error=f"{e.code} {e.name}"), e.code
        log.exception("bsqvit serve: unexpected error")
        return flask.jsonify(error=f"internal error: {one_line(e)}"), 500

    return app
