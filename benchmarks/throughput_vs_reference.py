#!/usr/bin/env python
"""CPU throughput of our BSQViT against the reference VITBSQModel, side by side in one process.

Same architecture and weights (the reference's random init, converted with
``convert_reference_state_dict``), fp32, eval, ``torch.no_grad()``, the same thread count. One
timed call is "encode + decode" of a batch:

* reference: ``quant, _, info = model.encode(x)`` then ``model.decode(quant).clamp(-1, 1)``
  (its inference path; ``encode`` also computes the entropy terms, cheap with the released
  per-bit (g = 1) 256^2 config and g = 9 at 128^2);
* ours: ``idx = model.encode(x)`` then ``model.decode(idx)`` (indices out, pixels back).

Repetitions are interleaved (ref, ours, ours, ref, ...) after warm-up, and the median is
reported (also the best-of ratio and the median of back-to-back pair ratios, which are less
sensitive to other processes on a shared machine, and the ratio of process CPU times, which with
``--threads 1`` hardly depends on them). Configs: the released 128^2 (L=18, g=9) and 256^2 (L=18, per-bit) ViT-B configs and a
small-width 128^2 variant.

    PYTHONPATH=src python benchmarks/throughput_vs_reference.py --reference-repo /tmp/bsq-ref \
        [--threads 2] [--batch 1] [--configs small-128 B-128 B-256] [--profile]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from reference_parity import import_reference  # this folder: the one way to put the reference on the path

CONFIGS = {
    # name -> (yaml, vitconfig overrides, default repeats)
    "small-128": ("configs/tokenizer/imagenet_128x128_bsqvit_stylegan_f8_fp16.yaml", dict(width=256, layers=4, heads=4), 9),
    "B-128": ("configs/tokenizer/imagenet_128x128_bsqvit_stylegan_f8_fp16.yaml", {}, 5),
    "B-256": ("configs/tokenizer/imagenet_256x256_bsqvit_b18g18_stylegan_f8_fp16.yaml", {}, 3),
}


def build_pair(VITBSQModel, repo: Path, name: str, seed: int):
    from omegaconf import OmegaConf

    from bsqvit.models.bsqvit import BSQViT
    from bsqvit.models.official import config_from_reference, convert_reference_state_dict

    yaml, over, _ = CONFIGS[name]
    cfg = OmegaConf.load(repo / yaml)
    vit = OmegaConf.to_container(cfg.model.params.vitconfig)
    vit.update(over)
    cfg.model.params.vitconfig = vit
    cfg.model.params.clamp_range = [-1, 1]
    params = OmegaConf.to_container(cfg.model.params, resolve=True)
    torch.manual_seed(seed)
    ref = VITBSQModel(**params).eval()
    ours = BSQViT(config_from_reference(OmegaConf.to_container(cfg, resolve=True)))
    ours.load_state_dict(convert_reference_state_dict(ref.state_dict()), strict=True)
    ours.eval()
    return ref, ours, int(vit["image_size"])


def ref_step(model, x):
    quant, _, info = model.encode(x)
    t = time.perf_counter()
    y = model.decode(quant).clamp(-1, 1)
    return info["indices"], y, t


def ours_step(model, x):
    idx = model.encode(x)
    t = time.perf_counter()
    y = model.decode(idx)
    return idx, y, t


def timed(step, model, x):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    c0 = time.process_time()
    t0 = time.perf_counter()
    _, _, t1 = step(model, x)
    t2 = time.perf_counter()
    c1 = time.process_time()
    return t2 - t0, t1 - t0, t2 - t1, c1 - c0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


def bench(name: str, ref, ours, size: int, batch: int, repeats: int, warmup: int, seed: int) -> dict:
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        # sanity: same tokens and pixels (so both really do the same work)
        i_r, y_r, _ = ref_step(ref, x)
        i_o, y_o, _ = ours_step(ours, x)
        agree = float((i_r.reshape(batch, -1) == i_o.reshape(batch, -1)).float().mean())
        diff = float((y_r - y_o).abs().max())
        for _ in range(warmup):
            timed(ref_step, ref, x)
            timed(ours_step, ours, x)
        times = {"ref": [], "ours": []}
        for r in range(repeats):
            order = ("ref", "ours") if r % 2 == 0 else ("ours", "ref")
            for who in order:
                times[who].append(timed(ref_step if who == "ref" else ours_step, ref if who == "ref" else ours, x))
    out = {"config": name, "image_size": size, "batch": batch, "repeats": repeats,
           "index_agreement": agree, "pixel_maxdiff": diff}
    for who, ts in times.items():
        tot = statistics.median(t[0] for t in ts)
        out[who] = {
            "median_s": tot,
            "min_s": min(t[0] for t in ts),
            "encode_median_s": statistics.median(t[1] for t in ts),
            "decode_median_s": statistics.median(t[2] for t in ts),
            "images_per_s": batch / tot,
            "cpu_median_s": statistics.median(t[3] for t in ts),
            "page_faults_median": statistics.median(t[4] for t in ts),
            "all_s": [round(t[0], 4) for t in ts],
        }
    out["ratio_ours_over_ref"] = out["ours"]["images_per_s"] / out["ref"]["images_per_s"]
    # noise-robust companions: best-of ratio, and the median of per-repeat ratios (each pair ran back to back)
    out["ratio_min_times"] = out["ref"]["min_s"] / out["ours"]["min_s"]
    out["ratio_paired_median"] = statistics.median(r[0] / o[0] for r, o in zip(times["ref"], times["ours"]))
    # process CPU time: with 1 thread it is barely affected by other processes taking the cores
    out["ratio_cpu_time_paired_median"] = statistics.median(r[3] / o[3] for r, o in zip(times["ref"], times["ours"]))
    return out


def profile(ref, ours, size: int, batch: int, rows: int = 15) -> None:
    from torch.profiler import ProfilerActivity, profile as tprof

    x = torch.rand(batch, 3, size, size) * 2 - 1
    for label, step, model in (("reference", ref_step, ref), ("ours", ours_step, ours)):
        with torch.no_grad():
            step(model, x)
            with tprof(activities=[ProfilerActivity.CPU]) as prof:
                step(model, x)
        print(f"\n## profile: {label} ({size}^2, batch {batch})\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-repo", type=Path, default=Path("/tmp/bsq-ref"))
    ap.add_argument("--timm-site", type=Path, default=Path("/tmp/refsite"))
    ap.add_argument("--torchvision-stub", type=Path, default=Path("/tmp/refstub"))
    ap.add_argument("--configs", nargs="*", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=None, help="override the per-config default (9 / 5 / 3)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler tables per config")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    VITBSQModel = import_reference(args.reference_repo, args.timm_site, args.torchvision_stub)[0].VITBSQModel

    results = []
    for name in args.configs:
        print(f"[throughput] {name} ...", file=sys.stderr, flush=True)
        ref, ours, size = build_pair(VITBSQModel, args.reference_repo, name, args.seed)
        reps = args.repeats or CONFIGS[name][2]
        results.append(bench(name, ref, ours, size, args.batch, reps, args.warmup, args.seed))
        if args.profile:
            profile(ref, ours, size, args.batch)
        del ref, ours

    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch,
            "cpu": platform.processor() or platform.machine(), "dtype": "float32"}
    print(f"\n# Encode+decode throughput, CPU fp32, eval, no_grad, {meta['threads']} threads, batch {args.batch} "
          f"(torch {meta['torch']})\n")
    print("| config | image | repeats | ref img/s | ours img/s | ours/ref (medians) | ours/ref (best) | "
          "ours/ref (paired median) | ours/ref (CPU time) | ref enc / dec s | ours enc / dec s | idx agree | pixel maxdiff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['image_size']}^2 | {r['repeats']} | {r['ref']['images_per_s']:.3f} | "
              f"{r['ours']['images_per_s']:.3f} | {r['ratio_ours_over_ref']:.3f} | {r['ratio_min_times']:.3f} | "
              f"{r['ratio_paired_median']:.3f} | {r['ratio_cpu_time_paired_median']:.3f} | "
              f"{r['ref']['encode_median_s']:.3f} / {r['ref']['decode_median_s']:.3f} | "
              f"{r['ours']['encode_median_s']:.3f} / {r['ours']['decode_median_s']:.3f} | "
              f"{r['index_agreement']:.4f} | {r['pixel_maxdiff']:.1e} |")
    print("\nMinor page faults per call (median), ref / ours: "
          + ", ".join(f"{r['config']} {r['ref']['page_faults_median']:.0f} / {r['ours']['page_faults_median']:.0f}"
                      for r in results))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0 if all(r["ratio_ours_over_ref"] >= 1.0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
