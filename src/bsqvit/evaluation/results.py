"""The outputs of a tokenizer evaluation: strict JSON, the Markdown summary printed by
``bsqvit eval``, and the files of its visual report (``--report``)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..io import InputError, atomic_path
from .protocol import STAND_IN
from .report import frame_strip, image_grid, side_by_side_video
from .scores import finite

__all__ = ["write_report", "write_json", "format_markdown", "MAX_TABLE_ROWS"]

MAX_TABLE_ROWS = 50


def write_report(shown: list, out_dir: str | os.PathLike, video: bool) -> dict:
    """PNG grid (images) or, per clip, a side-by-side MP4 and a frame-strip PNG. Returns the paths."""
    d = Path(out_dir)
    if not d.is_dir():
        if not d.parent.is_dir():
            raise InputError(f"{d}: parent directory {d.parent} does not exist")
        d.mkdir()
    files: dict = {}
    if not video:
        rows = [(it.name, a, b, f"{p:.2f} dB") for it, a, b, p in shown]
        path = d / "report.png"
        image_grid(rows, path)
        files["grid"] = str(path)
        return files
    files["videos"], files["strips"] = [], []
    for it, a, b, _ in shown:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in it.name)
        mp4, png = d / f"{safe}_side_by_side.mp4", d / f"{safe}_frames.png"
        side_by_side_video(a, b, mp4, it.fps or 25.0)
        frame_strip(it.name, a, b, png)
        files["videos"].append(str(mp4))
        files["strips"].append(str(png))
    return files


def _clean(o):
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        o = o.item()
    return finite(o)


def write_json(result: dict, path: str | os.PathLike) -> None:
    """Strict JSON (non-finite numbers, e.g. the PSNR of a perfect reconstruction, become null)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(_clean(result), indent=2, allow_nan=False) + "\n")


def _f(v, fmt: str) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, fmt)


def _item_table(r: dict, video: bool) -> list[str]:
    """Per-item rows (up to MAX_TABLE_ROWS) and the means."""
    lp_col = "LPIPS" + ("*" if r["lpips"].get("stand_in") else "")
    lines = [f"| {'clip' if video else 'image'} | PSNR (dB) | SSIM | MS-SSIM | {lp_col} | bpp |",
             "|---|---:|---:|---:|---:|---:|"]
    for it in r["per_item"][:MAX_TABLE_ROWS]:
        lines.append(f"| {it['name']} | {_f(it['psnr'], '.2f')} | {_f(it['ssim'], '.4f')} | {_f(it['ms_ssim'], '.4f')} | "
                     f"{_f(it['lpips'], '.4f')} | {_f(it['bpp'], '.4f')} |")
    if len(r["per_item"]) > MAX_TABLE_ROWS:
        lines.append(f"| ... {len(r['per_item']) - MAX_TABLE_ROWS} more in the JSON | | | | | |")
    m = r["means"]
    lines.append(f"| **mean** | **{_f(m['psnr'], '.2f')}** | **{_f(m['ssim'], '.4f')}** | **{_f(m['ms_ssim'], '.4f')}** | "
                 f"**{_f(m['lpips'], '.4f')}** | **{_f(r['tokens']['bpp_mean'], '.4f')}** |")
    return lines


def _distance_rows(r: dict, video: bool) -> list[str]:
    """rFID (and rFVD for video) rows of the dataset table."""
    lines = []
    fid = r["fid"]
    fname = "rFID" if fid.get("comparable_to_published") else "rFID-like"
    if fid.get("value") is not None:
        note = f"{fid['label']}; n = {fid['n']}{' frames' if video else ''}, reference: {fid.get('reference')}; {fid['note']}"
        lines.append(f"| {fname} | {fid['value']:.3f} | {note} |")
    else:
        lines.append(f"| rFID | n/a | {fid.get('status', 'not computed')} |")
    if video:
        fvd = r["fvd"]
        if fvd.get("value") is not None:
            lines.append(f"| rFVD | {fvd['value']:.3f} | {fvd['label']}; n = {fvd['n']} clips; {fvd['note']} |")
        else:
            lines.append(f"| rFVD | n/a | {fvd.get('status')} |")
    return lines


def _token_rows(r: dict) -> list[str]:
    """MS-SSIM (dB), code usage, per-bit usage, entropy and raw bpp rows of the dataset table."""
    m, t = r["means"], r["tokens"]
    lines = []
    if m["ms_ssim"] is not None:
        lines.append(f"| MS-SSIM (dB) | {_f(m['ms_ssim_db'], '.3f')} | -10 log10(1 - MS-SSIM) of the mean; "
                     f"{m['ms_ssim_n']} of {r['n']} items large enough (>= 161 px) |")
    else:
        lines.append("| MS-SSIM | n/a | items smaller than 161 px on a side |")
    lines.append(f"| code usage | {100 * t['code_usage']:.4g}% | {t['used_codes']:,} of {t['codebook_size']:,} codes seen in "
                 f"{t['tokens']:,} tokens ({100 * t['code_usage_of_possible']:.4g}% of the possible) |")
    if "bit_usage" in t:
        bu = t["bit_usage"]
        lines.append(f"| per-bit usage | {min(bu):.3f}-{max(bu):.3f} | fraction of tokens with bit = 1, min-max over {len(bu)} bits |")
    ent = f"{t['entropy_bits']:.3f}"
    note = "empirical entropy of the token indices (bounded by log2 of the token count)"
    if "group_entropy_bits" in t:
        note += f"; per group: {' + '.join(f'{v:.2f}' for v in t['group_entropy_bits'])} = {t['group_entropy_sum']:.2f}"
    if "bit_entropy_sum" in t:
        note += f"; sum of per-bit entropies {t['bit_entropy_sum']:.2f}"
    lines.append(f"| entropy (bits/token) | {ent} | {note} |")
    lines.append(f"| raw bpp | {t['raw_bpp']:.4f} | L / p^2 = {t['bits_per_token']:g} / {r['model']['patch_size']}^2 "
                 f"(no entropy coding) |")
    return lines


def _notes(r: dict) -> list[str]:
    """LPIPS network, stand-ins, skipped items, time."""
    lp = r["lpips"]
    lines = [f"LPIPS: {lp.get('label') or lp.get('status')}" + (f" ({lp['note']})" if lp.get("note") else "")]
    if r["stand_ins"]:
        lines.append(f"*Stand-in scores ({', '.join(r['stand_ins'])}) are computed on offline SqueezeNet-Caffe "
                     f"features: {STAND_IN}.")
    if r.get("skipped"):
        lines.append(f"Skipped: {', '.join(s['name'] + ' (' + s['reason'] + ')' for s in r['skipped'])}.")
    tm = r["timing"]
    lines.append(f"Time: {tm['seconds']:.1f} s ({tm['model_seconds']:.1f} s in the tokenizer), "
                 f"{r['settings']['threads']} threads, {r['settings']['device']}.")
    return lines


def format_markdown(r: dict) -> str:
    """A Markdown summary: per-item table (up to 50 rows) with the means, then dataset-level scores."""
    video = r["kind"] == "video"
    unit = ("clip" if video else "image") + ("" if r["n"] == 1 else "s")
    lines = [f"## bsqvit eval: {r['data']} ({r['n']} {unit})", "", f"Protocol: {r['protocol']}.", ""]
    lines += _item_table(r, video)
    lines += ["", "| dataset score | value | note |", "|---|---:|---|"]
    lines += _distance_rows(r, video)
    lines += _token_rows(r)
    lines.append("")
    lines += _notes(r)
    return "\n".join(lines)
