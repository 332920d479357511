"""``bsqvit train-gen``: train a :class:`~bsqvit.generate.model.MaskedTokenModel` on cached tokens.

1. **Tokens.** The training images are resized to ``data.resolution`` squares, tokenized once
   with the tokenizer (and their horizontal flips when ``data.flip``), and cached in
   ``OUTPUT_DIR/tokens/`` (format: :mod:`bsqvit.generate.data`). Labels are file-name prefixes.
2. **Training** (:class:`GenTrainer`, a specialisation of :class:`bsqvit.train.loop.SingleModelLoop`).
   The MaskGIT objective (:func:`~bsqvit.generate.model.masked_token_loss`: cosine masking ratio,
   condition dropout ``cond_dropout`` for classifier-free guidance), AdamW with warm-up +
   half-cosine, gradient clipping, an EMA of the weights (exported), crash-safe checkpoints
   (``checkpoints/last`` valid at every instant, ``--resume`` bit-exact on CPU since batches are a
   function of (seed, step)), tqdm, TensorBoard (``tb/``), ``log.jsonl``.
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

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import ConfigError, from_dict, load_yaml, parse_overrides, set_by_path, to_dict
from ..data.images import find_images
from ..io import atomic_path, to_uint8
from ..io.grid import tile
from ..metrics.generation import GenEvaluator, load_folder
from ..models import load_tokenizer
from ..train import checkpoint as ckpt
from ..train.loop import SingleModelLoop, step_generator
from .data import class_names, class_of, discover_classes, extract_gen_tokens
from .model import GenConfig, MaskedTokenModel, masked_token_loss
from .sampling import sample_tokens

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
    toks = []
    for i in range(0, len(labels), batch):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i // batch]).generate_state(1)[0]))
        toks.append(sample_tokens(gen, labels[i : i + batch], gen=g, **kw))
    tokens = torch.cat(toks) if toks else torch.zeros(0, *gen.config.grid, dtype=torch.int64)
    return tokens, decode_tokens(tokenizer, tokens, batch)


def image_grid(images: list[np.ndarray], cols: int) -> np.ndarray:
    """Tile equal-size uint8 images (H, W, 3) into rows of ``cols`` (2-pixel white gaps)."""
    return tile([images[i : i + cols] for i in range(0, len(images), cols)], gap=2, cols=cols)


_EVAL_SCALARS = ("fid", "is", "is_probe", "precision", "recall", "class_accuracy")


class GenTrainer(SingleModelLoop):
    """The masked token model's specialisation of the training loop: a batch of cached token grids
    (a random view: the image or its flip) per step, a function of (seed, step); evaluations
    sample with the EMA weights, which are what is exported."""

    desc = "train-gen"

    def __init__(self, cfg: GenTrainConfig, model: MaskedTokenModel, tokenizer, tokens: np.ndarray,
                 labels: np.ndarray, classes: list[str], output_dir, max_steps: int | None = None,
                 progress: bool = True):
        super().__init__(cfg, output_dir, model, ema=True, max_steps=max_steps, progress=progress)
        self.tokenizer = tokenizer
        self.tokens, self.labels, self.classes = tokens, labels, classes
        self.evaluator: GenEvaluator | None = None

    # ---- the step ----------------------------------------------------------------------------
    def next_batch(self):
        cfg = self.cfg
        g = step_generator(cfg.seed, self.step)
        idx = torch.randint(0, len(self.tokens), (cfg.batch_size,), generator=g).numpy()
        view = torch.randint(0, self.tokens.shape[1], (cfg.batch_size,), generator=g).numpy()
        tokens = torch.from_numpy(self.tokens[idx, view])
        labels = torch.from_numpy(self.labels[idx]) if self.model.config.num_classes else None
        return tokens, labels, g  # g goes on drawing the masks

    def train_step(self, batch) -> dict:
        tokens, labels, g = batch
        dropout = self.cfg.cond_dropout if self.model.config.num_classes else 0.0
        loss, stats = masked_token_loss(self.model, tokens, labels, g, dropout)
        grad_norm = self.optimizer_step(loss)
        return {"loss": loss.item(), "grad_norm": grad_norm, **stats}

    def format_log(self, logs: dict, elapsed: float) -> tuple[dict, dict, dict]:
        lv = logs["loss"]
        stats = {k: v for k, v in logs.items() if k not in ("loss", "grad_norm")}  # mask_ratio, token_acc
        record = {"loss": round(lv, 5), "lr": self.lr, "grad_norm": round(logs["grad_norm"], 4),
                  **{k: round(v, 4) for k, v in stats.items()}, "s_per_step": round(elapsed / self.cfg.log_every, 4)}
        scalars = {"loss": lv, "token_acc": stats["token_acc"], "lr": record["lr"]}
        return record, scalars, {"loss": f"{lv:.3f}", "acc": f"{stats['token_acc']:.3f}"}

    def on_fit_start(self) -> None:
        self.last_eval = {"step": self.step}
        if self.step == 0 and self.cfg.eval_every >= 0:
            self.last_eval = self.evaluate(first=True)
        self.model.train()

    def on_fit_end(self) -> dict:
        if self.cfg.eval_every >= 0:
            self.last_eval = self.evaluate()
        else:
            ckpt.export_model(self.ema, self.out / "gen")
        return self.last_eval

    # ---- evaluation --------------------------------------------------------------------------
    def _get_evaluator(self) -> GenEvaluator:
        """The reference images' features, computed at the first evaluation."""
        if self.evaluator is None:
            ev = self.cfg.eval
            ref_imgs, ref_files = load_folder(ev.ref or self.cfg.data.train, self.cfg.data.resolution, ev.ref_limit)
            index = {c: i for i, c in enumerate(self.classes)}
            ref_labels = np.array([index.get(class_of(f), -1) for f in ref_files])
            self.evaluator = GenEvaluator(ref_imgs, ref_labels if self.classes else None, features=ev.features,
                                          weights_dir=ev.weights_dir)
            self.evaluator.ref_images = ref_imgs
        return self.evaluator

    @torch.no_grad()
    def _tokenizer_floor(self, evaluator: GenEvaluator, n_images: int) -> dict:
        """Scores of the tokenizer's reconstructions of (up to ``n_images``) reference images."""
        n = min(len(evaluator.ref_images), n_images)
        idx = np.linspace(0, len(evaluator.ref_images) - 1, n).astype(int)
        ref = [evaluator.ref_images[i] for i in idx]
        x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 127.5 - 1 for im in ref])
        tok = self.tokenizer
        recon = decode_tokens(tok, torch.cat([tok.encode(x[i : i + 100]) for i in range(0, len(x), 100)]))
        keep = ("fid", "precision", "recall", "is_probe", "is")
        return {k: v for k, v in evaluator.score(recon).items() if k in keep}

    def _save_grid(self, images: list[np.ndarray]) -> None:
        """``samples/step_XXXXXXXX.png``: grid_per_class samples per class (rows = classes)."""
        ev, nc = self.cfg.eval, self.model.config.num_classes
        per = ev.samples_per_class if nc else len(images)
        cols = min(ev.grid_per_class, per)
        pick = [images[c * per + j] for c in range(max(1, nc)) for j in range(cols)]
        (self.out / "samples").mkdir(exist_ok=True)
        with atomic_path(self.out / "samples" / f"step_{self.step:08d}.png") as tmp:
            Image.fromarray(image_grid(pick, cols)).save(tmp)

    def _score_samples(self, labels: torch.Tensor, first: bool) -> dict:
        ev, conditional = self.cfg.eval, bool(self.model.config.num_classes)
        t0 = time.time()
        _, images = generate_images(self.ema, self.tokenizer, labels, seed=self.cfg.seed + 12345, batch=ev.batch,
                                    steps=ev.steps, guidance=ev.guidance, temperature=ev.temperature,
                                    choice_temperature=ev.choice_temperature)
        rec: dict = {"sample_seconds": round(time.time() - t0, 2)}
        evaluator = self._get_evaluator()
        rec.update(evaluator.score(images, labels.numpy() if conditional else None))
        rec["features_label"] = evaluator.label
        rec["sampling"] = {"steps": ev.steps, "guidance": ev.guidance, "temperature": ev.temperature}
        if first:
            rec["tokenizer_reconstruction"] = self._tokenizer_floor(evaluator, len(images))
        self._save_grid(images)
        return rec

    def evaluate(self, first: bool = False) -> dict:
        """Sample with the EMA weights and score (``first``: also the tokenizer's floor); a grid in
        ``samples/``; exports ``OUTPUT_DIR/gen``."""
        self.ema.eval()
        rec: dict = {"step": self.step}
        labels = eval_labels(self.model.config, self.cfg.eval)
        if len(labels):
            rec.update(self._score_samples(labels, first))
        scalars = {k: rec[k] for k in _EVAL_SCALARS if isinstance(rec.get(k), float) and math.isfinite(rec[k])}
        self.log_eval(rec, scalars)
        ckpt.export_model(self.ema, self.out / "gen")
        return rec


def _drop_empty_classes(labels: np.ndarray, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Classes whose every file was unreadable are dropped (labels re-indexed)."""
    present = sorted({int(v) for v in labels if v >= 0})
    if len(present) == len(classes):
        return labels, classes
    log.warning("classes without readable images dropped: %s", [c for i, c in enumerate(classes) if i not in present])
    remap = np.full(len(classes) + 1, -1, np.int64)
    remap[present] = np.arange(len(present))
    return remap[labels], [classes[i] for i in present]  # -1 indexes the last entry, which stays -1


def _training_tokens(cfg: GenTrainConfig, tokenizer, out: Path, progress: bool) -> tuple[np.ndarray, np.ndarray, list, dict]:
    """(tokens, labels, classes, cache meta) of the training images, from the token cache."""
    files, classes = _files_and_classes(cfg)
    out.mkdir(parents=True, exist_ok=True)
    cache = extract_gen_tokens(tokenizer, files, classes, cfg.data.resolution, out / "tokens", flip=cfg.data.flip,
                               batch=cfg.data.encode_batch, progress=progress)
    tokens, labels = cache["tokens"], cache["labels"]
    if len(tokens) == 0:
        raise ConfigError("no training images could be read")
    if cache["meta"].get("skipped"):
        log.warning("%d unreadable training files skipped", cache["meta"]["skipped"])
    if classes:
        labels, classes = _drop_empty_classes(labels, classes)
        if cfg.conditional and len(classes) < 2:
            raise ConfigError("conditional training needs at least 2 classes with readable images")
    return tokens, labels, classes, cache["meta"]


def _gen_config(cfg: GenTrainConfig, tokens: np.ndarray, classes: list[str], bits: int, tokenizer) -> GenConfig:
    a, r = cfg.model, cfg.data.resolution
    n = int(tokenizer.quantizer.codebook_size)
    return GenConfig(bits=bits, group_bits=a.group_bits, codebook_size=None if n == 1 << bits else n,
                     grid=list(tokens.shape[-2:]), width=a.width,
                     layers=a.layers, heads=a.heads, mlp_ratio=a.mlp_ratio, embed=a.embed, num_classes=len(classes),
                     class_ids=classes, class_names=class_names(classes), image_size=[r, r],
                     tokenizer_hash=tokenizer.weights_hash())


def train_gen(cfg: GenTrainConfig, tokenizer_dir, output_dir, resume: bool = False, max_steps: int | None = None,
              progress: bool = True) -> dict:
    out = Path(output_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tokenizer = load_tokenizer(str(tokenizer_dir)).eval()
    tokens, labels, classes, meta = _training_tokens(cfg, tokenizer, out, progress)
    gc = _gen_config(cfg, tokens, classes, meta["bits"], tokenizer)
    torch.manual_seed(cfg.seed)
    trainer = GenTrainer(cfg, MaskedTokenModel(gc), tokenizer, tokens, labels, classes, out, max_steps=max_steps,
                         progress=progress)
    if resume:
        trainer.resume()
    (out / "config.json").write_text(json.dumps({**to_dict(cfg), "gen": to_dict(gc), "tokenizer": str(tokenizer_dir),
                                                 "train_images": len(tokens)}, indent=2, sort_keys=True))
    return trainer.fit()
