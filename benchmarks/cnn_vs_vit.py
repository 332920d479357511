"""CNN vs ViT tokenizer at equal CPU time and equal bits: the table of benchmarks/results/cnn_vs_vit.md.

Reads finished training runs (RUN/model, RUN/log.jsonl, RUN/config.json) and the ``/usr/bin/time -v``
output of each (RUN.log), evaluates RUN/model on Kodak at native resolution with ``bsqvit eval``
(one thread, CPU, no rFID / LPIPS; written to RUN/eval-kodak.json, reused when present) and
writes the Markdown table.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/cnn_vs_vit.py \
        runs/compare-vit-small runs/compare-cnn-small --data ../shared/data/kodak \
        --out benchmarks/results/cnn_vs_vit.md
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import torch

from bsqvit.models import load_tokenizer


def time_log(path: Path) -> dict:
    """User + system CPU seconds, wall time and exit status from ``/usr/bin/time -v`` output."""
    text = path.read_text()

    def num(label):
        m = re.search(rf"{label}:\s*([\d.:]+)", text)
        return m.group(1) if m else None
    user, sys_ = float(num(r"User time \(seconds\)")), float(num(r"System time \(seconds\)"))
    return {"cpu_s": user + sys_, "user_s": user, "sys_s": sys_, "wall": num(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\)"),
            "exit": int(num("Exit status"))}


def evaluate(run: Path, data: str) -> tuple[dict, float]:
    """``bsqvit eval`` of RUN/model on ``data`` (cached in RUN/eval-kodak.json); its CPU seconds."""
    out = run / "eval-kodak.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not out.is_file():
        cmd = ["bsqvit", "eval", "--model", str(run / "model"), "--data", data, "--resize", "none", "--device", "cpu",
               "--threads", "1", "--fid", "none", "--lpips", "none", "--no-progress", "--json", str(out)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(out.read_text()), cpu


def row(run: Path, data: str) -> dict:
    model = load_tokenizer(run / "model")
    cfg = json.loads((run / "config.json").read_text())
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = max(r["step"] for r in logs if "l1" in r)
    t = time_log(run.with_suffix(".log"))
    ev, eval_cpu = evaluate(run, data)
    last = [r for r in logs if "l1" in r][-1]
    return {
        "run": run.name, "arch": model.config.arch, "params": model.num_parameters(),
        "gflops_64": model.flops(64, 64)["total"] / 1e9, "gflops_kodak": model.flops(512, 768)["total"] / 1e9,
        "steps": steps, "steps_config": cfg["steps"], "cpu_s": t["cpu_s"], "s_per_step": t["cpu_s"] / steps,
        "wall": t["wall"], "exit": t["exit"], "train_l1": last["l1"], "train_l2": last["l2"],
        "psnr": ev["means"]["psnr"], "ssim": ev["means"]["ssim"], "ms_ssim": ev["means"]["ms_ssim"],
        "ms_ssim_db": ev["means"]["ms_ssim_db"], "entropy": ev["tokens"]["entropy_bits"],
        "code_usage": ev["tokens"]["code_usage"], "bits": ev["tokens"]["bits_per_token"], "n": ev["n"],
        "eval_cpu_s": eval_cpu, "hash": model.weights_hash()[:16],
    }


def table(rows: list[dict]) -> str:
    head = ("| arch | run | params | GFLOPs/img 64² | GFLOPs/img Kodak | steps | CPU-s | CPU-s/step | bits/token "
            "| Kodak PSNR (dB) | SSIM | MS-SSIM | token entropy (bits) | code usage | train L1 (last log) |")
    lines = [head, "|---|---|" + "---:|" * 13]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['run']} | {r['params'] / 1e6:.2f}M | {r['gflops_64']:.2f} | {r['gflops_kodak']:.0f} "
                     f"| {r['steps']} | {r['cpu_s']:.0f} | {r['s_per_step']:.2f} | {r['bits']:g} | {r['psnr']:.2f} "
                     f"| {r['ssim']:.4f} | {r['ms_ssim']:.4f} | {r['entropy']:.2f} | {100 * r['code_usage']:.2f}% "
                     f"| {r['train_l1']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", default="../shared/data/kodak")
    ap.add_argument("--out", type=Path, default=None,
                    help="Markdown file: the table replaces the block between <!-- table --> and <!-- /table --> "
                         "(or is the whole file); the rows go to OUT.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [row(r, args.data) for r in args.runs]
    text = table(rows)
    print(text)
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
        old = args.out.read_text() if args.out.is_file() else ""
        m = re.search(r"<!-- table -->.*?<!-- /table -->", old, flags=re.S)
        block = f"<!-- table -->\n{text}\n<!-- /table -->"
        args.out.write_text(old[:m.start()] + block + old[m.end():] if m else text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
