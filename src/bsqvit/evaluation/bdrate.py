"""BD-rate (PSNR-based, percent; negative = fewer bits than the baseline at equal PSNR): with at
least 4 points on both curves, the ``bjontegaard`` package (Akima, non-matching points);
otherwise the rate difference at equal PSNR, the baseline's curve interpolated linearly in
log-rate at each of our points' PSNR (then averaged). The ``method`` field says which.
``delta_psnr_at_equal_rate``: our PSNR minus the baseline's at our bpp (log-rate interpolation).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..extras import require

__all__ = ["bd_rate", "interp_rate_at_psnr", "psnr_at_rate"]


def _curve(points: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted((p["bpp"], p["psnr"]) for p in points if p["bpp"] > 0 and math.isfinite(p["psnr"]))
    return np.array([a for a, _ in pts]), np.array([b for _, b in pts])


def interp_rate_at_psnr(base_rate: np.ndarray, base_psnr: np.ndarray, psnr: float) -> float | None:
    """The baseline's rate at ``psnr``: linear in log-rate between its neighbouring points."""
    order = np.argsort(base_psnr)
    q, r = base_psnr[order], np.log(base_rate[order])
    keep = np.concatenate([[True], np.diff(q) > 0])  # strictly increasing PSNR
    q, r = q[keep], r[keep]
    if len(q) < 2 or psnr < q[0] or psnr > q[-1]:
        return None
    return float(np.exp(np.interp(psnr, q, r)))


def psnr_at_rate(base_rate: np.ndarray, base_psnr: np.ndarray, rate: float) -> float | None:
    """The baseline's PSNR at ``rate``: linear in log-rate between its neighbouring points."""
    order = np.argsort(base_rate)
    r, q = np.log(base_rate[order]), base_psnr[order]
    if len(r) < 2 or not (r[0] <= math.log(rate) <= r[-1]):
        return None
    return float(np.interp(math.log(rate), r, q))


def bd_rate(ours: list[dict], base: list[dict]) -> dict:
    """BD-rate of our curve against a baseline (percent; negative = ours needs fewer bits), plus
    ``delta_psnr_at_equal_rate``: our PSNR minus the baseline's at our rate (mean over our points)."""
    r1, d1 = _curve(base)
    r2, d2 = _curve(ours)
    dp = [q - b for rate, q in zip(r2, d2) if (b := psnr_at_rate(r1, d1, float(rate))) is not None]
    out = _bd_rate(r1, d1, r2, d2)
    out["delta_psnr_at_equal_rate"] = float(np.mean(dp)) if dp else None
    return out


def _bd_rate_akima(r1, d1, r2, d2) -> dict:
    bd = require("bjontegaard", "BD-rate")  # imports scipy: only when a BD-rate is computed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            v = float(bd.bd_rate(r1, d1, r2, d2, method="akima", require_matching_points=False))
        except Exception as e:  # non-monotone curves, no overlap
            return {"bd_rate": None, "method": "bjontegaard-akima", "note": f"failed: {type(e).__name__}: {e}"}
    if not math.isfinite(v):  # the package returns NaN when the PSNR ranges do not overlap
        return {"bd_rate": None, "method": "bjontegaard-akima", "note": "the curves' PSNR ranges do not overlap"}
    return {"bd_rate": v, "method": "bjontegaard-akima"}


def _bd_rate(r1, d1, r2, d2) -> dict:
    if len(r2) >= 4 and len(r1) >= 4:
        return _bd_rate_akima(r1, d1, r2, d2)
    diffs = []
    for rate, q in zip(r2, d2):
        base_rate = interp_rate_at_psnr(r1, d1, float(q))
        if base_rate is not None:
            diffs.append(100.0 * (rate / base_rate - 1.0))
    if not diffs:
        return {"bd_rate": None, "method": "log-rate interpolation at equal PSNR",
                "note": "our PSNR is outside the baseline's range"}
    return {"bd_rate": float(np.mean(diffs)), "method": "log-rate interpolation at equal PSNR", "points": len(diffs)}
