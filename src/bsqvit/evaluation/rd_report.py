"""The outputs of ``bsqvit rd``: the Markdown table (points and BD-rates), the RD plot (PSNR and
MS-SSIM against bpp), and the JSON / Markdown / PNG files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..extras import require
from ..io import atomic_path

__all__ = ["markdown", "plot", "write_outputs"]


def _f(v, nd=3):
    return "-" if v is None else f"{v:.{nd}f}"


def markdown(report: dict) -> str:
    lines = [f"Rate-distortion on `{report['data']}` ({len(report['items'])} {'videos' if report['video'] else 'images'}).",
             "", f"Protocol: {report['protocol']}.", "",
             "| codec | setting | bpp | PSNR (dB) | MS-SSIM (dB) | LPIPS* | bits/token |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for p in sorted(report["points"], key=lambda p: (p["codec"], p["bpp"])):
        lines.append(f"| {p['codec']} | {p['setting']} | {_f(p['bpp'], 4)} | {_f(p['psnr'], 2)} | "
                     f"{_f(p.get('ms_ssim_db'), 2)} | {_f(p.get('lpips'), 4)} | {_f(p.get('bits_per_token'), 3)} |")
    lines += ["", "BD-rate (PSNR, % bits; negative = ours smaller) and PSNR difference at our rate:", "",
              "| ours | baseline | BD-rate (%) | ΔPSNR at equal bpp (dB) | method |", "|---|---|---:|---:|---|"]
    for o, d in report["bd_rate"].items():
        for b, r in d.items():
            lines.append(f"| {o} | {b} | {_f(r['bd_rate'], 1)} | {_f(r.get('delta_psnr_at_equal_rate'), 2)} | "
                         f"{r['method']}{' (' + r['note'] + ')' if r.get('note') else ''} |")
    streamed = [p for p in report["points"] if "stream_exact" in p]
    if streamed:
        lines += ["", "Per-frame streaming (one frame pushed at a time through the key/value cache; its tokens "
                  "are the clip path's, so the file and the points above are the same):", "",
                  "| ours | tokens equal to the clip path | encode s/frame | decode s/frame |", "|---|---|---:|---:|"]
        for p in streamed:
            if p["codec"] == "bsq-raw":
                lines.append(f"| {p['label']} | {'yes' if p['stream_exact'] else 'NO'} | "
                             f"{_f(p.get('stream_encode_s_per_frame'), 3)} | {_f(p.get('stream_decode_s_per_frame'), 3)} |")
    lines.append("")
    lines.append("*LPIPS column: " + (report["lpips"] or "not computed"))
    return "\n".join(lines)


def _plot_panel(ax, points: list[dict], key: str, ylabel: str) -> None:
    """One panel: ``key`` against bpp, a line per baseline codec and per curve of ours (the rates
    ``@L'`` of one nested-bits model and coder join one curve), stars for our points."""
    series: dict[str, list[dict]] = {}
    for p in points:
        name = p["codec"] if not p["codec"].startswith("bsq-") else re.sub(r"@\d+", "", p["label"])
        series.setdefault(name, []).append(p)
    for name, pts in sorted(series.items()):
        pts = sorted((q for q in pts if q.get(key) is not None), key=lambda q: q["bpp"])
        if not pts:
            continue
        ours = name.startswith("bsq-")
        style = (".-" if not ours else "*-" if len(pts) > 1 else "*")
        ax.plot([q["bpp"] for q in pts], [q[key] for q in pts], style, markersize=12 if ours else 5, label=name)
    ax.set_xlabel("bpp")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def plot(report: dict, out) -> None:
    matplotlib = require("matplotlib", "the RD plot")  # heavy and optional: only when a plot is asked for
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "the RD plot")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, ylabel in ((axes[0], "psnr", "PSNR-RGB (dB)"), (axes[1], "ms_ssim_db", "MS-SSIM (dB)")):
        _plot_panel(ax, report["points"], key, ylabel)
    axes[0].legend(fontsize=7)
    title = f"{report['data']} ({len(report['items'])} {'videos' if report['video'] else 'images'})"
    fig.suptitle(title.replace("$", r"\$"), fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_outputs(report: dict, json_out=None, md_out=None, plot_out=None) -> None:
    """The report as JSON (without its Markdown), its Markdown, its plot: each when a path is given."""
    if json_out:
        with atomic_path(json_out) as tmp:
            Path(tmp).write_text(json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=2) + "\n")
    if md_out:
        with atomic_path(md_out) as tmp:
            Path(tmp).write_text(report["markdown"] + "\n")
    if plot_out:
        plot(report, plot_out)
