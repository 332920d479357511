"""Dataset-level scores of a tokenizer evaluation, from what its batches left behind: rFID (or the
stand-in's rFID-like score), rFVD, the means of the per-item metrics and the token statistics.

rFID is the Fréchet distance between the features of the reconstructions and of the originals
over the evaluated set (or cached reference statistics, ``fid_ref``); with the offline
SqueezeNet-Caffe stand-in it is labelled "FID-like, not comparable to published numbers". Few
items bias FID upwards; N is always reported.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from ..metrics import pixel
from ..metrics.fid import FeatureStats, Stats, frechet_distance, save_stats
from ..metrics.tokens import TokenStats, raw_bpp
from .protocol import SMALL_N_NOTE, EvalConfig, data_protocol

__all__ = ["fid_score", "fvd_score", "item_means", "token_summary", "labels", "frechet_distance_of", "mean", "finite"]


def mean(vals) -> float | None:
    """Mean of the values that are not None (None when there are none)."""
    v = [a for a in vals if a is not None]
    return float(np.mean(v)) if v else None


def finite(v):
    """``v``, or None for a non-finite float."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def frechet_distance_of(a, b, method: str = "sqrtm") -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov, method=method)


def _reference(cfg: EvalConfig, f_orig: FeatureStats, ref_stats: Stats | None,
               resolution: int | None) -> tuple[Stats | None, bool]:
    """(reference statistics, whether created now): with ``--fid-ref`` naming a file that does not
    exist yet, the originals' statistics are saved there."""
    if cfg.fid_ref and ref_stats is None and f_orig.n >= 2:
        ref_stats = f_orig.stats(data=str(cfg.data), data_protocol=data_protocol(cfg, resolution),
                                 unit="frames" if cfg.video else "images")
        save_stats(cfg.fid_ref, ref_stats)
        return ref_stats, True
    return ref_stats, False


def fid_score(cfg: EvalConfig, fid_info: dict, f_orig: FeatureStats | None, f_rec: FeatureStats | None,
              ref_stats: Stats | None, resolution: int | None, n: int) -> dict:
    """The ``fid`` entry of the result: ``fid_info`` (the features used) plus the value and its reference."""
    fid: dict = dict(fid_info)
    if f_orig is None:
        fid.setdefault("value", None)
        return fid
    fid.update(n=n if not cfg.video else f_orig.n, note=SMALL_N_NOTE)
    if cfg.video:
        fid["unit"] = "frames"
    ref_stats, ref_created = _reference(cfg, f_orig, ref_stats, resolution)
    if f_rec.n < 2:
        fid.update(value=None, status="needs at least 2 items")
        return fid
    ref = ref_stats if ref_stats is not None else f_orig.stats()
    fid["value"] = ref.distance(f_rec.stats(), method=cfg.fid_method)
    fid["method"] = cfg.fid_method
    fid["reference"] = str(cfg.fid_ref) if cfg.fid_ref else "originals of the evaluated set"
    fid["reference_n"] = int(ref.n)
    if cfg.fid_ref:
        fid["reference_created"] = ref_created
        rp = ref.meta.get("data_protocol") if ref.meta else None
        if rp and rp != data_protocol(cfg, resolution):
            fid["reference_protocol"] = rp
            print(f"bsqvit: warning: {cfg.fid_ref} was computed under another protocol: {rp}", file=sys.stderr)
    return fid


def fvd_score(cfg: EvalConfig, i3d, status: str, v_orig: FeatureStats | None, v_rec: FeatureStats | None) -> dict:
    """The ``fvd`` entry of the result (a value for video runs with I3D weights and >= 2 clips)."""
    if not cfg.video or i3d is None:
        return {"value": None, "status": status}
    if v_orig.n < 2:
        return {"value": None, "status": f"needs at least 2 clips of >= 9 frames (have {v_orig.n})"}
    return {"value": frechet_distance_of(v_orig, v_rec, cfg.fid_method), "method": cfg.fid_method,
            "n": v_orig.n, "label": i3d.label,
            "features": i3d.name, "comparable_to_published": True, "stand_in": False,
            "note": "few clips bias FVD upwards; published rFVD uses the UCF-101 protocol"}


def token_summary(tstats: TokenStats, bits: float, patch_size: int, per_item: list[dict]) -> dict:
    """Token statistics plus the rates: bits per token, raw bpp, mean bpp over items."""
    tok = tstats.summary()
    tok["bits_per_token"] = bits
    tok["raw_bpp"] = raw_bpp(bits, patch_size)
    tok["bpp_mean"] = mean(r["bpp"] for r in per_item)
    return tok


def item_means(per_item: list[dict]) -> dict:
    """Means over items of PSNR, SSIM, MS-SSIM (and its dB form, and how many items had one), LPIPS."""
    means = {
        "psnr": mean(r["psnr"] for r in per_item),
        "ssim": mean(r["ssim"] for r in per_item),
        "ms_ssim": mean(r["ms_ssim"] for r in per_item),
        "ms_ssim_n": sum(r["ms_ssim"] is not None for r in per_item),
        "lpips": mean(r["lpips"] for r in per_item),
    }
    means["ms_ssim_db"] = pixel.ms_ssim_db(means["ms_ssim"]) if means["ms_ssim"] is not None else None
    return means


def labels(video: bool, lpips_info: dict, fid: dict, fvd: dict) -> tuple[dict, list[str]]:
    """(what each network-based score is - its label or why it is missing, the stand-in scores)."""
    out = {
        "lpips": lpips_info.get("label", lpips_info.get("status")),
        "rfid": fid.get("label", fid.get("status")),
    }
    if video:
        out["rfvd"] = fvd.get("label", fvd.get("status"))
    stand_ins = [k for k, info in (("lpips", lpips_info), ("rfid", fid)) if info.get("stand_in")]
    return out, stand_ins
