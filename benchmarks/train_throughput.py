"""Training throughput of the BSQ-ViT trainer, per phase of the step, on CPU or CUDA.

Builds the real :class:`bsqvit.train.Trainer` from a config (the full objective: L1, perceptual,
GAN, R1, entropy), installs a :class:`bsqvit.train.phases.PhaseTimer` and runs ``--steps``
steps. Reported per phase (data wait, G forward, perceptual, G adversarial term, G backward,
G optimizer, EMA, D step, R1 step, D optimizer) for plain steps and R1 steps separately:
median seconds, achieved TFLOP/s (FLOPs counted by ``FlopCounterMode`` on one separate step of
each kind) and, on CUDA, peak memory allocated; then img/s and the R1-step / plain-step ratio.

    python benchmarks/train_throughput.py --config configs/cpu-small.yaml --batch 8 --steps 12
    python benchmarks/train_throughput.py --config configs/imagenet-256-vitb-l18.yaml --device cuda \\
        --batch 32 --amp bf16 --data ../shared/data/train --steps 40 --r1-every 16 --compile

The GAN starts at step 0 (``loss.gan_start=0``); R1 runs every ``--r1-every`` steps; evaluation
and checkpoints are off. The first step of each kind is used to count FLOPs and is not timed
(it also absorbs warm-up / compilation). On CUDA each phase is bracketed by
``torch.cuda.synchronize``; the step total is measured the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from bsqvit.train import stylegan_layers
from bsqvit.train.config import load_train_config
from bsqvit.train.discriminator import build_discriminator
from bsqvit.train.gan import d_loss_nonsaturating, r1_due, r1_penalty
from bsqvit.train.phases import PHASES, PhaseTimer
from bsqvit.train.trainer import Trainer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/cpu-small.yaml")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--r1-every", type=int, default=4, help="lazy R1 interval for the run (default 4)")
    p.add_argument("--amp", default=None, choices=["bf16", "none"], help="default: the config's")
    p.add_argument("--compile", action="store_true", help="compile: true (torch.compile G and D)")
    p.add_argument("--data", default=None, help="training images (overrides data.train)")
    p.add_argument("--workers", type=int, default=None, help="data.num_workers")
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    p.add_argument("--set", nargs="*", default=[], help="more key=value config overrides")
    p.add_argument("--fir-autograd", action="store_true",
                   help="the previous FIR formulation (autograd through a grouped conv): the 'before' of #13")
    p.add_argument("--d-only", type=int, default=0, metavar="N",
                   help="instead: N interleaved repeats of D alone (D loss step vs R1 term), FIR both ways")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def build_trainer(args, out_dir: str) -> Trainer:
    ov = [f"data.batch_size={args.batch}", "data.val=null", "eval_every=0", "checkpoint_every=1000000000",
          f"steps={max(args.steps, 1)}", "loss.gan_start=0", f"loss.r1_every={args.r1_every}",
          f"device={args.device}", f"compile={'true' if args.compile else 'false'}"]
    if args.amp:
        ov.append(f"optim.amp={args.amp}")
    if args.data:
        ov.append(f"data.train=[{args.data}]")
    if args.workers is not None:
        ov.append(f"data.num_workers={args.workers}")
    if args.threads is not None:
        ov.append(f"threads={args.threads}")
    cfg = load_train_config(args.config, ov + list(args.set))
    return Trainer(cfg, out_dir, progress=False)


def _autograd_fir(x, w, stride):
    conv = F.conv2d if x.ndim == 4 else F.conv3d
    return conv(x, w.to(x.dtype), stride=stride, groups=x.shape[1])


def run(args) -> dict:
    if args.fir_autograd:
        stylegan_layers._FirConv.apply = staticmethod(_autograd_fir)
    with tempfile.TemporaryDirectory() as out:
        tr = build_trainer(args, out)
        timer = PhaseTimer(tr.device)
        tr.set_phase_timer(timer)
        tr.on_fit_start()
        counted = set()
        flops: dict[str, dict[str, int]] = {}
        for _ in range(args.steps):
            kind = "r1" if r1_due(tr.step, args.r1_every) else "plain"
            count = kind not in counted
            timer.count_flops = count
            timer.flops.clear()
            timer.start_step()
            tr.train_step(tr.next_batch())
            rec = timer.end_step(kind + ("_counted" if count else ""))
            if count:
                counted.add(kind)
                flops[kind] = dict(timer.flops)
            tr.step += 1
            print(f"step {tr.step - 1:3d} {kind:5s} {rec['total']:.3f} s", file=sys.stderr, flush=True)
        res = {"args": vars(args), "device": str(tr.device), "threads": torch.get_num_threads(),
               "params_g": sum(p.numel() for p in tr.model.parameters()),
               "params_d": sum(p.numel() for p in tr.disc.parameters()) if tr.disc is not None else 0,
               "flops": flops, "phases": {k: timer.summary(k) for k in ("plain", "r1")},
               "n_timed": {k: len(timer.steps.get(k, [])) for k in ("plain", "r1")},
               "peak_cuda_bytes": dict(timer.peak), "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "load": os.getloadavg()}
    return res


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def d_only(args) -> str:
    """Median seconds of a D step (real + fake forward, backward) and of the R1 term (forward,
    input gradient, double backward) on the config's D and batch, with the FIR as a custom
    autograd pair (now) and through autograd of a grouped conv (before), interleaved."""
    cfg = load_train_config(args.config, [f"device={args.device}"] + list(args.set))
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    disc = build_discriminator(cfg.discriminator).to(dev)
    shape = (args.batch, 3, cfg.discriminator.image_size, cfg.discriminator.image_size)
    real, fake = torch.randn(shape, device=dev), torch.randn(shape, device=dev)
    now = stylegan_layers._FirConv.apply
    times = {k: [] for k in ("d_before", "r1_before", "d_now", "r1_now")}

    def d_step():
        disc.zero_grad(set_to_none=True)
        d_loss_nonsaturating(disc(real), disc(fake)).backward()

    def r1_step():
        disc.zero_grad(set_to_none=True)
        r1_penalty(disc, real).backward()

    for i in range(args.d_only + 1):
        for tag, fir in (("before", staticmethod(_autograd_fir)), ("now", staticmethod(now))):
            stylegan_layers._FirConv.apply = fir
            td, tr = _timed(d_step, dev), _timed(r1_step, dev)
            if i:  # the first round warms up
                times[f"d_{tag}"].append(td)
                times[f"r1_{tag}"].append(tr)
    stylegan_layers._FirConv.apply = now
    med = {k: statistics.median(v) for k, v in times.items()}
    return "\n".join([
        "| FIR | D step s | R1 term s | R1 / D step |", "|---|---:|---:|---:|",
        *(f"| {tag} | {med['d_' + tag]:.4f} | {med['r1_' + tag]:.4f} | {med['r1_' + tag] / med['d_' + tag]:.2f} |"
          for tag in ("before", "now")),
        f"\nR1 term before / now = {med['r1_before'] / med['r1_now']:.2f}; batch {args.batch}, {shape[2]}^2, "
        f"{args.d_only} repeats, load {', '.join(f'{v:.2f}' for v in os.getloadavg())}"])


def table(res: dict) -> str:
    batch = res["args"]["batch"]
    plain, r1 = res["phases"]["plain"], res["phases"].get("r1", {})
    fp, fr = res["flops"].get("plain", {}), res["flops"].get("r1", {})
    cuda = bool(res["peak_cuda_bytes"])
    head = "| phase | plain step s | TFLOP/s | R1 step s | TFLOP/s |" + (" peak GiB |" if cuda else "")
    lines = [head, "|---|---:|---:|---:|---:|" + ("---:|" if cuda else "")]

    def tf(f, t):
        return f"{f / t / 1e12:.3f}" if f and t > 0 else "-"

    for ph in PHASES + ("other", "total"):
        tp, tr1 = plain.get(ph, 0.0), r1.get(ph, 0.0)
        if ph == "total":
            f1, f2 = sum(fp.values()), sum(fr.values())
        else:
            f1, f2 = fp.get(ph, 0), fr.get(ph, 0)
        row = f"| {ph} | {tp:.4f} | {tf(f1, tp)} | {tr1:.4f} | {tf(f2, tr1)} |"
        if cuda:
            row += f" {res['peak_cuda_bytes'].get(ph, 0) / 2**30:.2f} |"
        lines.append(row)
    tp, tr1 = plain.get("total", 0.0), r1.get("total", 0.0)
    lines.append("")
    lines.append(f"img/s: plain {batch / tp:.2f}" + (f", R1 step {batch / tr1:.2f}" if tr1 else "")
                 + (f"; R1 step / plain step = {tr1 / tp:.2f}" if tr1 and tp else "")
                 + f"; G {res['params_g'] / 1e6:.1f}M, D {res['params_d'] / 1e6:.2f}M params"
                 + f"; timed steps {res['n_timed']}; max RSS {res['max_rss_mb']:.0f} MB"
                 + f"; load {', '.join(f'{v:.2f}' for v in res['load'])}")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if args.d_only:
        print(d_only(args))
        return
    res = run(args)
    print(table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
