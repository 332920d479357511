"""``bsqvit train / ablate-quantizers``: training a tokenizer."""

from __future__ import annotations

from pathlib import Path

from ..evaluation.ablation import run_ablation
from ..train import load_train_config
from ..train.trainer import train as run_training
from .common import check_input


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a tokenizer from a YAML config (torchrun for multi-GPU)",
                       description="Train BSQ-ViT. Multi-process: torchrun --nproc_per_node N -m bsqvit train ...")
    p.add_argument("config", help="YAML training config (see configs/)")
    p.add_argument("--output-dir", required=True, help="run directory: checkpoints/, model/, tb/, samples/, log.jsonl")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (schedule still uses `steps`)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. optim.lr=3e-4 data.batch_size=16")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    cfg = load_train_config(check_input(args.config), args.overrides)
    logs = run_training(cfg, args.output_dir, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress)
    if logs:
        print(f"done: step {logs.get('step', '')} loss {logs.get('loss', float('nan')):.4f} -> {args.output_dir}/model")
    return 0


def add_ablate(sub) -> None:
    p = sub.add_parser("ablate-quantizers", help="train the same tokenizer with BSQ, LFQ, VQ, FSQ and Λ24-SQ (leech) at matched bits")
    p.add_argument("config", help="YAML training config of the shared tokenizer")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--bits", type=int, default=None, help="bits per token for every quantizer (default: model.quantizer.dim)")
    p.add_argument("--quantizers", default="bsq,lfq,vq,fsq",
                   help="comma-separated: bsq, lfq, vq, fsq, leech (Λ24-SQ, fixed 17.58 bits)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args) -> int:
    cfg = load_train_config(check_input(args.config), args.overrides)
    run_ablation(cfg, args.output_dir, bits=args.bits, kinds=tuple(args.quantizers.split(",")), max_steps=args.max_steps)
    print(Path(args.output_dir, "ablation.md").read_text())
    return 0


TRAIN_COMMANDS = [add_train, add_ablate]
