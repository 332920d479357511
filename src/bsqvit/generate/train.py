"""``bsqvit train-gen``: train a :class:`~bsqvit.generate.model.MaskedTokenModel` on cached tokens.

1. **Tokens.** The training images are resized to ``data.resolution`` squares, tokenized once
   with the tokenizer (and their horizontal flips when ``data.flip``), and cached in
   ``OUTPUT_DIR/tokens/`` (format: :mod:`bsqvit.generate.data`). Labels are file-name prefixes.
2. **Training.** The MaskGIT objective (:func:`~bsqvit.generate.model.masked_token_loss`: cosine
   masking ratio, condition dropout ``cond_dropout`` for classifier-free guidance), AdamW with
   warm-up + half-cosine, gradient clipping, an EMA of the weights (exported), crash-safe
   checkpoints (``checkpoints/last`` valid at every instant, ``--resume`` bit-exact on CPU since
   batches are a function of (seed, step)), tqdm, TensorBoard (``tb/``), ``log.jsonl``.
3. **Evaluation** at step 0, every ``eval_every`` steps and at the end: ``eval.samples_per_class``
   samples per class (or ``eval.samples`` unconditional ones) with the fixed sampling settings of
   ``eval``, decoded by the tokenizer and scored against the reference images (FID, IS or its probe
   stand-in, precision/recall, class accuracy: :mod:`bsqvit.metrics.generation`) into
   ``eval.jsonl``; a sample grid per evaluation in ``samples/``. The first evaluation also scores
   the tokenizer's reconstructions of reference images: the floor that the tokenizer sets.
4. **Export.** ``OUTPUT_DIR/gen/`` (``config.json`` + ``model.safetensors``, EMA weights) at every
   evaluation and at the end, atomically.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, from_dict, load_yaml, parse_overrides, set_by_path, to_dict
from ..io.grid import tile
from .model import GenConfig, MaskedTokenModel, masked_token_loss

log = logging.getLogger("bsqvit.generate.train")


@dataclass
class GenArchConfig:
    width: int = 256
    layers: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    group_bits: int = 9
    embed: str = "groups"


@dataclass
class GenDataConfig:
    train: list[str] = field(default_factory=list)  # folders of class-named training images (required)
    resolution: int = 64
    flip: bool = True
    classes: list[str] = field(default_factory=list)  # class ids; empty = the wnid prefixes found
    keep_unlabelled: bool = False  # train on unlabelled files too (as null-class examples)
    limit: int | None = None
    encode_batch: int = 64


@dataclass
class GenEvalConfig:
    samples_per_class: int = 50  # class-conditional models
    samples: int = 500  # unconditional models
    steps: int = 12
    guidance: float = 2.0
    temperature: float = 1.0
    choice_temperature: float = 4.5
    features: str = "auto"  # auto | inception | squeeze-caffe
    weights_dir: str | None = None  # where the feature weights are looked for (besides the torch hub cache)
    ref: list[str] = field(default_factory=list)  # reference images; empty = data.train
    ref_limit: int | None = None
    batch: int = 100
    grid_per_class: int = 8


@dataclass
class GenOptimConfig:
    lr: float = 4e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.96])
    weight_decay: float = 0.045
    warmup_steps: int = 200
    warmup_start: float = 0.01
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.999


@dataclass
class GenTrainConfig:
    model: GenArchConfig = field(default_factory=GenArchConfig)
    data: GenDataConfig = field(default_factory=GenDataConfig)
    eval: GenEvalConfig = field(default_factory=GenEvalConfig)
    optim: GenOptimConfig = field(default_factory=GenOptimConfig)
    conditional: bool = True
    cond_dropout: float = 0.2
    batch_size: int = 64
    steps: int = 3000
    seed: int = 0
    threads: int | None = None
    log_every: int = 20
    eval_every: int = 1000
    checkpoint_every: int = 250
    keep_checkpoints: int = 2

    def __post_init__(self):
        if self.batch_size < 1 or self.steps < 1:
            raise ConfigError("batch_size and steps must be >= 1")
        if not (0 <= self.cond_dropout < 1):
            raise ConfigError("cond_dropout must be in [0, 1)")


def load_gen_train_config(path, overrides: list[str] | None = None) -> GenTrainConfig:
    data = load_yaml(path)
    for key, value in parse_overrides(overrides or []):
        set_by_path(data, key, value)
    return from_dict(GenTrainConfig, data)


def _files_and_classes(cfg: GenTrainConfig) -> tuple[list[str], list[str]]:
    from ..data.images import find_images
    from .data import class_of, discover_classes

    if not cfg.data.train:
        raise ConfigError("data.train (folders of training images) is required")
    files = find_images(cfg.data.train)
    if not files:
        raise ConfigError(f"no images under {cfg.data.train}")
    classes = list(cfg.data.classes) or (discover_classes(files) if cfg.conditional else [])
    if cfg.conditional and len(classes) < 2:
        raise ConfigError("conditional training needs at least 2 classes (file-name prefixes or data.classes)")
    if cfg.conditional and not cfg.data.keep_unlabelled:
        known = set(classes)
        files = [f for f in files if class_of(f) in known]
    if cfg.data.limit is not None:
        files = files[: cfg.data.limit]
    return files, classes


@torch.no_grad()
def decode_tokens(tokenizer, tokens: torch.Tensor, batch: int = 100) -> list[np.ndarray]:
    from ..io import to_uint8

    out = []
    for i in range(0, len(tokens), batch):
        x = tokenizer.decode(tokens[i : i + batch])
        out.extend(to_uint8(im) for im in x)
    return out


def eval_labels(gen_cfg: GenConfig, ev: GenEvalConfig) -> torch.Tensor:
    if gen_cfg.num_classes:
        return torch.arange(gen_cfg.num_classes).repeat_interleave(ev.samples_per_class)
    return torch.full((ev.samples,), -1, dtype=torch.int64)


@torch.no_grad()
def generate_images(gen, tokenizer, labels: torch.Tensor, seed: int, batch: int = 100, **kw) -> tuple[torch.Tensor, list]:
    """Sample token grids for ``labels`` in batches of ``batch`` (batch ``i`` uses seed
    ``(seed, i)``) and decode them: (tokens, uint8 images)."""
    from .sampling import sample_tokens

    toks = []
    for i in range(0, len(labels), batch):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i // batch]).generate_state(1)[0]))
        toks.append(sample_tokens(gen, labels[i : i + batch], gen=g, **kw))
    tokens = torch.cat(toks) if toks else torch.zeros(0, *gen.config.grid, dtype=torch.int64)
    return tokens, decode_tokens(tokenizer, tokens, batch)


def image_grid(images: list[np.ndarray], cols: int) -> np.ndarray:
    """Tile equal-size uint8 images (H, W, 3) into rows of ``cols`` (2-pixel white gaps)."""
    return tile([images[i : i + cols] for i in range(0, len(images), cols)], gap=2, cols=cols)


def train_gen(cfg: GenTrainConfig, tokenizer_dir, output_dir, resume: bool = False, max_steps: int | None = None,
              progress: bool = True) -> dict:
    from PIL import Image
    from tqdm import tqdm

    from ..io import atomic_path
    from ..models import BSQViT
    from ..train import checkpoint as ckpt
    from ..train.trainer import adamw_warmup_cosine, ema_update, tensorboard_writer
    from .data import class_names, extract_gen_tokens, load_square
    from ..metrics.generation import GenEvaluator

    out = Path(output_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tokenizer = BSQViT.from_pretrained(str(tokenizer_dir)).eval()
    files, classes = _files_and_classes(cfg)
    out.mkdir(parents=True, exist_ok=True)
    cache = extract_gen_tokens(tokenizer, files, classes, cfg.data.resolution, out / "tokens", flip=cfg.data.flip,
                               batch=cfg.data.encode_batch, progress=progress)
    tokens_np, labels_np = cache["tokens"], cache["labels"]
    if len(tokens_np) == 0:
        raise ConfigError("no training images could be read")
    if cache["meta"].get("skipped"):
        log.warning("%d unreadable training files skipped", cache["meta"]["skipped"])
    if classes:  # classes whose every file was unreadable are dropped (labels re-indexed)
        present = sorted({int(v) for v in labels_np if v >= 0})
        if len(present) < len(classes):
            log.warning("classes without readable images dropped: %s",
                        [c for i, c in enumerate(classes) if i not in present])
            remap = np.full(len(classes) + 1, -1, np.int64)
            remap[present] = np.arange(len(present))
            labels_np = remap[labels_np]  # -1 indexes the last entry, which stays -1
            classes = [classes[i] for i in present]
        if cfg.conditional and len(classes) < 2:
            raise ConfigError("conditional training needs at least 2 classes with readable images")
    a = cfg.model
    r = cfg.data.resolution
    gc = GenConfig(bits=cache["meta"]["bits"], group_bits=a.group_bits, grid=list(tokens_np.shape[-2:]), width=a.width,
                   layers=a.layers, heads=a.heads, mlp_ratio=a.mlp_ratio, embed=a.embed, num_classes=len(classes),
                   class_ids=classes, class_names=class_names(classes), image_size=[r, r],
                   tokenizer_hash=tokenizer.weights_hash())
    torch.manual_seed(cfg.seed)
    model = MaskedTokenModel(gc)
    ema = copy.deepcopy(model).requires_grad_(False)
    o = cfg.optim
    opt, sched = adamw_warmup_cosine(model, o, cfg.steps)
    step = 0
    ckpt_dir = out / "checkpoints"
    if resume:
        last = ckpt.find_last(ckpt_dir)
        if last is None:
            raise ConfigError(f"--resume: no checkpoint in {ckpt_dir}")
        state = ckpt.load_checkpoint(last)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        ckpt.set_rng_state(state["rng"])
    (out / "config.json").write_text(json.dumps({**to_dict(cfg), "gen": to_dict(gc), "tokenizer": str(tokenizer_dir),
                                                 "train_images": len(tokens_np)}, indent=2, sort_keys=True))
    writer = tensorboard_writer(out / "tb")

    ev = cfg.eval
    evaluator = None

    def evaluate(first: bool) -> dict:
        nonlocal evaluator
        ema.eval()
        rec: dict = {"step": step}
        labels = eval_labels(gc, ev)
        if len(labels):
            t0 = time.time()
            _, images = generate_images(ema, tokenizer, labels, seed=cfg.seed + 12345, batch=ev.batch, steps=ev.steps,
                                        guidance=ev.guidance, temperature=ev.temperature,
                                        choice_temperature=ev.choice_temperature)
            rec["sample_seconds"] = round(time.time() - t0, 2)
            if evaluator is None:
                from ..metrics.generation import load_folder

                ref_imgs, ref_files = load_folder(ev.ref or cfg.data.train, r, ev.ref_limit)
                from .data import class_of

                index = {c: i for i, c in enumerate(classes)}
                ref_labels = np.array([index.get(class_of(f), -1) for f in ref_files])
                evaluator = GenEvaluator(ref_imgs, ref_labels if classes else None, features=ev.features,
                                         weights_dir=ev.weights_dir)
                evaluator.ref_images = ref_imgs
            rec.update(evaluator.score(images, labels.numpy() if gc.num_classes else None))
            rec["features_label"] = evaluator.label
            rec["sampling"] = {"steps": ev.steps, "guidance": ev.guidance, "temperature": ev.temperature}
            if first:
                n = min(len(evaluator.ref_images), len(images))
                idx = np.linspace(0, len(evaluator.ref_images) - 1, n).astype(int)
                ref = [evaluator.ref_images[i] for i in idx]
                x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 127.5 - 1 for im in ref])
                with torch.no_grad():
                    recon = decode_tokens(tokenizer, torch.cat([tokenizer.encode(x[i : i + 100])
                                                                for i in range(0, len(x), 100)]))
                rec["tokenizer_reconstruction"] = {
                    k: v for k, v in evaluator.score(recon).items() if k in ("fid", "precision", "recall", "is_probe", "is")}
            # a sample grid: grid_per_class per class (rows = classes)
            per = ev.samples_per_class if gc.num_classes else len(images)
            pick = [images[c * per + j] for c in range(max(1, gc.num_classes)) for j in range(min(ev.grid_per_class, per))]
            (out / "samples").mkdir(exist_ok=True)
            with atomic_path(out / "samples" / f"step_{step:08d}.png") as tmp:
                Image.fromarray(image_grid(pick, min(ev.grid_per_class, per))).save(tmp)
        with open(out / "eval.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if writer:
            for k in ("fid", "is", "is_probe", "precision", "recall", "class_accuracy"):
                if k in rec and isinstance(rec[k], float) and math.isfinite(rec[k]):
                    writer.add_scalar(f"eval/{k}", rec[k], step)
        ckpt.export_model(ema, out / "gen")
        return rec

    stop = min(cfg.steps, max_steps) if max_steps is not None else cfg.steps
    last_eval: dict = {"step": step}
    if step == 0 and cfg.eval_every >= 0:
        last_eval = evaluate(first=True)
    model.train()
    bar = tqdm(total=stop, initial=step, disable=not progress, dynamic_ncols=True, desc="train-gen")
    t_last = time.time()
    N = len(tokens_np)
    V = tokens_np.shape[1]
    while step < stop:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, N, (cfg.batch_size,), generator=g).numpy()
        view = torch.randint(0, V, (cfg.batch_size,), generator=g).numpy()
        tokens = torch.from_numpy(tokens_np[idx, view])
        labels = torch.from_numpy(labels_np[idx]) if gc.num_classes else None
        loss, stats = masked_token_loss(model, tokens, labels, g, cfg.cond_dropout if gc.num_classes else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip if o.grad_clip > 0 else float("inf"))
        opt.step()
        sched.step()
        ema_update(ema, model, o.ema_decay)
        step += 1
        lv = loss.item()
        if not math.isfinite(lv):
            raise FloatingPointError(f"non-finite loss at step {step}")
        bar.update(1)
        if step % cfg.log_every == 0 or step == stop:
            dt = time.time() - t_last
            t_last = time.time()
            rec = {"step": step, "loss": round(lv, 5), "lr": sched.get_last_lr()[0], "grad_norm": round(float(gnorm), 4),
                   **{k: round(v, 4) for k, v in stats.items()}, "s_per_step": round(dt / cfg.log_every, 4)}
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            if writer:
                writer.add_scalar("train/loss", lv, step)
                writer.add_scalar("train/token_acc", stats["token_acc"], step)
                writer.add_scalar("train/lr", rec["lr"], step)
            bar.set_postfix(loss=f"{lv:.3f}", acc=f"{stats['token_acc']:.3f}")
        if cfg.checkpoint_every > 0 and (step % cfg.checkpoint_every == 0 or step == stop):
            ckpt.save_checkpoint({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                                  "scheduler": sched.state_dict(), "step": step, "rng": ckpt.rng_state()},
                                 ckpt_dir, step, keep=cfg.keep_checkpoints)
        if cfg.eval_every > 0 and step % cfg.eval_every == 0 and step != stop:
            last_eval = evaluate(first=False)
    bar.close()
    if cfg.eval_every >= 0:
        last_eval = evaluate(first=False)
    else:
        ckpt.export_model(ema, out / "gen")
    if writer:
        writer.close()
    return last_eval
