"""Data-loader throughput of the training pipeline (decode, resize, random crop, flip, collate).

Builds the trainer's own loader (:func:`bsqvit.data.build_dataloader`) for ``--data`` at
``--resolution`` and reports images/s for each worker count, after one warm-up batch (worker
start-up is reported separately). Compare with the trainer's img/s: a loader slower than the
step starves the accelerator.

    python benchmarks/loader_throughput.py --data ../shared/data/train --workers 0 1 2 --batches 12
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from bsqvit.data import DataConfig, build_dataloader


def measure(data: list[str], resolution: int, batch: int, workers: int, batches: int, prefetch: int | None) -> dict:
    cfg = DataConfig(train=data, resolution=resolution, train_resize=resolution, batch_size=batch,
                     num_workers=workers, prefetch_factor=prefetch)
    t0 = time.perf_counter()
    loader = build_dataloader(cfg, "train", epoch_seed=0)
    it = iter(loader)
    next(it)  # warm-up: worker start-up and the first batch
    t1 = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(it)["image"].shape[0]
    t2 = time.perf_counter()
    del it, loader
    return {"workers": workers, "img_per_s": n / (t2 - t1), "first_batch_s": t1 - t0, "images": n,
            "load": os.getloadavg()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=["../shared/data/train"])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=12, help="timed batches per worker count")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, os.cpu_count() or 1])
    p.add_argument("--prefetch", type=int, default=None, help="data.prefetch_factor")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(args.data, args.resolution, args.batch, w, args.batches, args.prefetch) for w in args.workers]
    print(f"| workers | img/s at {args.resolution}^2 | first batch s | load (1, 5, 15 min) |")
    print("|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['img_per_s']:.1f} | {r['first_batch_s']:.2f} | "
              f"{', '.join(f'{v:.2f}' for v in r['load'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
