"""Tokenizer evaluation (``bsqvit eval``): reconstruction metrics, token statistics, reports; and
the reference feature statistics of ``bsqvit fid-stats``.

Protocols are stated in every output (:mod:`bsqvit.evaluation.protocol`); the items are images or
video clips (:mod:`bsqvit.evaluation.items`).

Video (``video=True``): clips of ``frames`` (default: the model's ``num_frames``) consecutive
frames; PSNR / SSIM / MS-SSIM / LPIPS are computed per frame and averaged over the clip; rFVD
(I3D) when its weights are found.

Metrics are computed on 8-bit values (reconstructions rounded as when saved to PNG). PSNR is per
item on [0, 255], then averaged over items. Dataset-level scores: :mod:`bsqvit.evaluation.scores`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from ..io import InputError, to_uint8
from ..metrics import pixel
from ..metrics.fid import FeatureStats, Stats, build_fid_features, load_stats, save_stats
from ..metrics.fvd import I3DFeatures
from ..metrics.lpips import build_lpips
from ..metrics.tokens import TokenStats
from ..nets.backbones import WeightsNotFound
from ..version import __version__
from . import scores
from .items import Item, batches, iter_clips, iter_images
from .protocol import STAND_IN, EvalConfig, check_config, data_protocol, default_weight_dirs, protocol_string
from .results import write_report

__all__ = ["evaluate", "compute_reference_stats", "encode_decode"]


# ---- model --------------------------------------------------------------------------------------
def encode_decode(model, x: torch.Tensor, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B,3,H,W) or clips (B,3,T,H,W) -> (indices, reconstruction in [-1, 1], same shape).

    Image models code clips frame by frame; video models code clips in pieces of at most
    ``num_frames`` frames."""
    H, W = x.shape[-2:]
    if x.dim() == 4:
        idx = model.encode(x, amp=amp)
        return idx, model.decode(idx, size=(H, W), amp=amp)
    B, C, T = x.shape[:3]
    if model.config.num_frames == 1:
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)
        idx = model.encode(frames, amp=amp)
        rec = model.decode(idx, size=(H, W), amp=amp)
        return idx.reshape(B, T, *idx.shape[1:]), rec.reshape(B, T, C, H, W).transpose(1, 2)
    n = model.config.num_frames
    idxs, recs = [], []
    for s in range(0, T, n):
        idx = model.encode(x[:, :, s:s + n], amp=amp)
        idxs.append(idx)
        recs.append(model.decode(idx, size=(H, W), amp=amp))
    return torch.cat(idxs, 1), torch.cat(recs, 2)


# ---- metric networks ----------------------------------------------------------------------------
def _build_fid(cfg: EvalConfig, dirs: list[str]):
    if cfg.fid == "none":
        return None, {"status": "not computed (--fid none)"}
    try:
        fx = build_fid_features(cfg.fid, cfg.inception_weights, dirs)
    except WeightsNotFound as e:
        if cfg.fid != "auto":
            raise
        return None, {"status": "unavailable (no InceptionV3 or SqueezeNet-Caffe weights found)", "error": str(e)}
    info = {"features": fx.name, "label": fx.label, "comparable_to_published": fx.comparable_to_published,
            "stand_in": not fx.comparable_to_published}
    if cfg.fid == "auto" and not fx.comparable_to_published:
        info["note_weights"] = "auto: the FID InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth) were not found"
    return fx, info


def _build_i3d(cfg: EvalConfig, dirs: list[str]):
    try:
        return I3DFeatures(cfg.i3d_weights, dirs), None
    except WeightsNotFound:
        if cfg.i3d_weights is not None:
            raise
        return None, "unavailable (no I3D weights)"


@dataclass
class _Nets:
    """The metric networks of a run (None: not computed, the info/status says why)."""
    lp: object
    lpips_info: dict
    fx: object
    fid_info: dict
    i3d: object
    fvd_status: str | None
    ref_stats: Stats | None  # --fid-ref statistics read from an existing file


def _build_nets(cfg: EvalConfig, device: torch.device) -> _Nets:
    dirs = default_weight_dirs(cfg.weights_dir)
    lp, lpips_info = build_lpips(cfg.lpips, dirs)
    fx, fid_info = _build_fid(cfg, dirs)
    i3d, fvd_status = _build_i3d(cfg, dirs) if cfg.video else (None, "not applicable (images)")
    ref_stats = None
    if cfg.fid_ref and fx is not None and Path(cfg.fid_ref).is_file():
        ref_stats = load_stats(cfg.fid_ref)
        if ref_stats.feature and ref_stats.feature != fx.name:
            raise InputError(f"{cfg.fid_ref}: statistics of {ref_stats.feature!r} features, this run uses {fx.name!r}")
    for m in (lp, fx, i3d):
        if m is not None:
            m.to(device)
    return _Nets(lp, lpips_info, fx, fid_info, i3d, fvd_status, ref_stats)


# ---- per batch ----------------------------------------------------------------------------------
class _Tally:
    """What the batches leave behind: a row per item, token and feature statistics, report items."""

    def __init__(self, model, cfg: EvalConfig, nets: _Nets):
        q = model.quantizer
        g = getattr(q, "group_size", None)
        self.tokens = TokenStats(q.bits, binary=hasattr(q, "group_size"), group_size=g if g and g > 1 else None,
                                 codebook_size=q.codebook_size)
        fx, i3d = nets.fx, nets.i3d
        self.f_orig, self.f_rec = (FeatureStats(fx.name), FeatureStats(fx.name)) if fx is not None else (None, None)
        self.v_orig, self.v_rec = (FeatureStats("i3d"), FeatureStats("i3d")) if i3d is not None else (None, None)
        self.per_item: list[dict] = []
        self.shown: list[tuple] = []  # (item, original uint8, reconstruction uint8, PSNR) for the report
        self.bits = float(model.bits_per_token)
        self.cfg, self.nets = cfg, nets

    def add(self, batch: list[Item], x: torch.Tensor, idx: torch.Tensor, rec: torch.Tensor) -> None:
        """One batch: originals ``x``, token indices ``idx``, float reconstructions ``rec``."""
        ps = pixel.per_frame(pixel.psnr, rec, x)
        ss = pixel.per_frame(pixel.ssim, rec, x)
        ms = pixel.per_frame(pixel.ms_ssim, rec, x)
        lv = self.nets.lp(rec, x) if self.nets.lp is not None else None
        self._update_features(x, rec)
        self.tokens.update(idx)
        for j, it in enumerate(batch):
            row = self._row(it, int(idx[j].numel()), float(ps[j]), float(ss[j]),
                            None if ms is None else float(ms[j]), None if lv is None else float(lv[j]))
            self.per_item.append(row)
            if len(self.shown) < self.cfg.report_items and self.cfg.report:
                self.shown.append((it, to_uint8(it.x.cpu()), to_uint8(rec[j].cpu()), row["psnr"]))

    def _update_features(self, x: torch.Tensor, rec: torch.Tensor) -> None:
        fx, i3d = self.nets.fx, self.nets.i3d
        if fx is not None:
            xa, ra = (pixel.frames_as_batch(x), pixel.frames_as_batch(rec)) if x.dim() == 5 else (x, rec)
            self.f_orig.update(fx(xa))
            self.f_rec.update(fx(ra))
        if i3d is not None and x.shape[2] >= 9:
            self.v_orig.update(i3d(x))
            self.v_rec.update(i3d(rec))

    def _row(self, it: Item, n_tok: int, psnr: float, ssim: float, ms_ssim, lpips) -> dict:
        H, W = it.x.shape[-2:]
        frames = it.x.shape[1] if it.x.dim() == 4 else 1
        return {
            "name": it.name,
            "width": int(W),
            "height": int(H),
            **({"frames": int(frames), "start": it.start} if self.cfg.video else {}),
            "psnr": psnr,
            "ssim": ssim,
            "ms_ssim": ms_ssim,
            "lpips": lpips,
            "tokens": n_tok,
            "bpp": self.bits * n_tok / (frames * H * W),
        }


def _run_batches(model, cfg: EvalConfig, items: Iterator[Item], total: int, tally: _Tally,
                 device: torch.device) -> tuple[float, float]:
    """Code every batch and tally it; returns (seconds in all, seconds in the tokenizer)."""
    bar = tqdm(total=total, desc="eval", unit="clip" if cfg.video else "img", disable=not cfg.progress,
               file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    t_model = 0.0
    try:
        for batch in batches(items, cfg.batch):
            x = torch.stack([it.x for it in batch]).to(device)
            tm = time.perf_counter()
            idx, rec = encode_decode(model, x, cfg.amp)
            t_model += time.perf_counter() - tm
            tally.add(batch, x, idx, rec.float())
            bar.update(len(batch))
    finally:
        bar.close()
    return time.perf_counter() - t0, t_model


# ---- the run ------------------------------------------------------------------------------------
def _items(cfg: EvalConfig, model, resolution: int | None) -> tuple[int | None, int, Iterator[Item], list]:
    """(frames per clip or None, number of items, the items, the list skipped sources go to)."""
    skipped: list = []
    if not cfg.video:
        if cfg.frames is not None:
            raise InputError("--frames applies to --video evaluation")
        total, items = iter_images(cfg, resolution)
        return None, total, items, skipped
    T = cfg.frames or int(model.config.num_frames)
    if T == 1 and cfg.frames is None:
        T = 16  # an image model on video: 16-frame clips coded frame by frame
    total, items = iter_clips(cfg, T, resolution, skipped)
    return T, total, items, skipped


def _model_info(model, model_path: str | None, bits: float) -> dict:
    return {
        "path": model_path,
        "hash": model.weights_hash(),
        "parameters": model.num_parameters(),
        "bits_per_token": bits,
        "patch_size": model.patch_size,
        "image_size": list(model.config.image_size),
        "num_frames": int(model.config.num_frames),
        "quantizer": getattr(model.config.quantizer, "type", None),
    }


def _result(model, cfg: EvalConfig, model_path, resolution, T, skipped, nets: _Nets, tally: _Tally,
            seconds: float, t_model: float, device: torch.device) -> dict:
    """The result dict: run description, per-item rows, means and dataset-level scores, timing."""
    n = len(tally.per_item)
    fid = scores.fid_score(cfg, nets.fid_info, tally.f_orig, tally.f_rec, nets.ref_stats, resolution, n)
    fvd = scores.fvd_score(cfg, nets.i3d, nets.fvd_status, tally.v_orig, tally.v_rec)
    tok = scores.token_summary(tally.tokens, tally.bits, model.patch_size, tally.per_item)
    means = scores.item_means(tally.per_item)
    labels, stand_ins = scores.labels(cfg.video, nets.lpips_info, fid, fvd)
    return {
        "bsqvit_version": __version__,
        "kind": "video" if cfg.video else "image",
        "model": _model_info(model, model_path, tally.bits),
        "data": str(cfg.data),
        "protocol": protocol_string(cfg, model, resolution, T),
        "protocol_args": {"resize": cfg.resize, "resolution": resolution, "frames": T,
                          "clips_per_video": cfg.clips_per_video if cfg.video else None, "limit": cfg.limit},
        "n": n,
        "skipped": skipped,
        "means": means,
        "lpips": nets.lpips_info,
        "fid": fid,
        "fvd": fvd,
        "tokens": tok,
        "labels": labels,
        "stand_ins": stand_ins,
        "stand_in_note": STAND_IN if stand_ins else None,
        "per_item": tally.per_item,
        "timing": {"seconds": seconds, "model_seconds": t_model, "items_per_second": n / seconds if seconds else None},
        "settings": {"batch": cfg.batch, "amp": cfg.amp, "device": str(device), "threads": torch.get_num_threads()},
    }


@torch.no_grad()
def evaluate(model, cfg: EvalConfig, model_path: str | None = None) -> dict:
    """Evaluate ``model`` on ``cfg.data``; returns the result dict (see :func:`~.results.write_json`)."""
    check_config(cfg)
    device = torch.device(cfg.device)
    model = model.to(device).eval()
    resolution = None if cfg.resize == "none" else (cfg.resolution or int(model.config.image_size[0]))
    T, total, items, skipped = _items(cfg, model, resolution)
    nets = _build_nets(cfg, device)
    tally = _Tally(model, cfg, nets)
    seconds, t_model = _run_batches(model, cfg, items, total, tally, device)
    if not tally.per_item:
        raise InputError(f"{cfg.data}: nothing to evaluate" + (f" (skipped: {skipped})" if skipped else ""))
    result = _result(model, cfg, model_path, resolution, T, skipped, nets, tally, seconds, t_model, device)
    if cfg.report:
        result["report"] = write_report(tally.shown, cfg.report, video=cfg.video)
    return result


# ---- reference statistics -----------------------------------------------------------------------
@torch.no_grad()
def compute_reference_stats(cfg: EvalConfig, out: str | os.PathLike, model_image_size: int | None = None) -> dict:
    """Feature statistics of the (protocol-transformed) originals in ``cfg.data`` -> ``out`` (.npz).

    Without a model, the resize protocols need ``cfg.resolution`` (or ``model_image_size``)."""
    check_config(cfg)
    if cfg.video:
        raise InputError("reference statistics are for images (rFID); video clips are compared with rFVD")
    if cfg.fid == "none":
        raise InputError("--fid none: nothing to compute")
    resolution = None if cfg.resize == "none" else (cfg.resolution or model_image_size)
    if cfg.resize != "none" and resolution is None:
        raise InputError("--resolution is required for the resize protocols")
    fx, info = _build_fid(cfg, default_weight_dirs(cfg.weights_dir))
    if fx is None:
        raise InputError(info["status"])
    device = torch.device(cfg.device)
    fx.to(device)
    total, items = iter_images(cfg, resolution)
    fs = FeatureStats(fx.name)
    for batch in tqdm(batches(items, cfg.batch), desc="features", disable=not cfg.progress, file=sys.stderr,
                      total=None):
        fs.update(fx(torch.stack([it.x for it in batch]).to(device)))
    if fs.n < 2:
        raise InputError(f"{cfg.data}: statistics need at least 2 images, found {fs.n}")

    proto = data_protocol(cfg, resolution)
    save_stats(out, fs.stats(data=str(cfg.data), data_protocol=proto, unit="images"))
    return {"n": fs.n, "feature": fx.name, "label": fx.label, "out": str(out), "protocol": proto,
            "comparable_to_published": fx.comparable_to_published, "data": str(cfg.data)}
