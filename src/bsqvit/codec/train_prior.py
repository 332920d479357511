"""``bsqvit train-prior``: train a :class:`~bsqvit.codec.prior.TokenPrior` on a tokenizer's tokens.

1. **Tokens.** Random crops (native resolution, ``data.crop`` pixels, ``data.crops_per_image``
   per image, positions a function of (seed, image, crop)) of the training images are tokenized
   once with the tokenizer and cached in ``OUTPUT_DIR/tokens/`` under a key of (tokenizer hash,
   file list, crop settings). Video sources (``data.video``) give pairs of consecutive frames
   (same crop) for priors conditioned on the previous frame (:mod:`.prior_data`). A fraction of
   the crops is held out for validation. With ``prior.temporal_copy`` (skip maps) the second
   frame is copied from the first as the video encoder would (:mod:`.temporal`) and the loss
   counts only the tokens that differ from the previous frame's: the others are sent by the map.
2. **Training** (:class:`PriorTrainer`, a specialisation of :class:`bsqvit.train.loop.SingleModelLoop`).
   AdamW, linear warm-up then half-cosine (:func:`bsqvit.train.optim.warmup_cosine`), gradient
   clipping, crash-safe checkpoints (:mod:`bsqvit.train.checkpoint`: ``checkpoints/last`` is
   valid at every instant, ``--resume`` continues bit-exactly on CPU since batches are a function
   of (seed, step)), tqdm, TensorBoard (``tb/``), ``log.jsonl`` / ``eval.jsonl``.
   The loss is the negative log2-likelihood in bits per token. ``ar``: every position, teacher
   forced. ``parallel``: each item of a batch is assigned one pass ``s`` of the fixed schedule
   and trained on exactly what the coder will do at that pass (positions of pass ``s`` given
   those of passes ``< s``); per pass the sum over its positions is averaged, and the passes are
   added up, so the loss estimates the coded bits per token.
3. **Export.** ``OUTPUT_DIR/prior/`` (``config.json`` + ``model.safetensors``) at every
   evaluation and at the end, atomically. Validation reports the exact expected code length of
   the fixed schedule (all passes, every validation tile).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, from_dict, load_yaml, parse_overrides, set_by_path, to_dict
from ..models import Tokenizer, load_tokenizer
from ..quantizers.base import index_bits
from ..train import checkpoint as ckpt
from ..train.loop import SingleModelLoop, step_generator
from .prior import PriorConfig, TokenPrior
from .prior_data import PriorDataConfig, extract_tokens
from .prior_init import warm_start

log = logging.getLogger("bsqvit.codec.train_prior")


@dataclass
class PriorOptimConfig:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.01
    warmup_steps: int = 100
    warmup_start: float = 0.01
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class PriorTrainConfig:
    prior: PriorConfig = field(default_factory=PriorConfig)
    data: PriorDataConfig = field(default_factory=PriorDataConfig)
    optim: PriorOptimConfig = field(default_factory=PriorOptimConfig)
    batch_size: int = 16
    steps: int = 2000
    seed: int = 0
    threads: int | None = None
    log_every: int = 20
    eval_every: int = 250
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    # a trained prior to start from (e.g. the image prior, for a video prior of a tokenizer fine-tuned
    # from that image tokenizer): see warm_start
    init_from: str | None = None

    def __post_init__(self):
        if self.batch_size < 1 or self.steps < 1:
            raise ConfigError("batch_size and steps must be >= 1")
        if not (0 <= self.data.val_fraction < 1):
            raise ConfigError("data.val_fraction must be in [0, 1)")


def load_prior_train_config(path, overrides: list[str] | None = None) -> PriorTrainConfig:
    data = load_yaml(path)
    for key, value in parse_overrides(overrides or []):
        set_by_path(data, key, value)
    prior = data.get("prior") or {}
    if not isinstance(prior, dict):
        raise ConfigError("prior: expected a mapping")
    data["prior"] = prior
    return from_dict(PriorTrainConfig, data)


# ---- token extraction ------------------------------------------------------------------------------
def split_val(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng([seed, 7]).permutation(n)
    k = int(round(n * frac)) if n > 1 else 0
    return np.sort(perm[k:]), np.sort(perm[:k])


# ---- the loss ------------------------------------------------------------------------------------------
def at_rate(tokens: torch.Tensor | None, full_bits: int, bits: int | None) -> torch.Tensor | None:
    """Full-width tokens -> their first ``bits`` bits (a nested prior's input at that rate)."""
    return tokens if tokens is None or bits is None else tokens >> (full_bits - bits)


def coded_mask(prior: TokenPrior, tokens: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor | float:
    """(B, h*w) 1 where a token is range-coded: with skip maps (``temporal_copy``, a previous frame)
    the tokens equal to the previous frame's are sent by the map instead (its bits are not counted)."""
    if prev is None or not prior.config.temporal_copy:
        return 1.0
    return (tokens != prev).reshape(tokens.shape[0], -1).to(torch.float32)


def prior_loss(prior: TokenPrior, tokens: torch.Tensor, prev: torch.Tensor | None, step: int,
               bits: int | None = None) -> torch.Tensor:
    """Estimated coded bits per token of a batch of tiles (see the module docstring); ``bits``:
    the rate of a nested prior (the tokens are then ``bits``-bit values)."""
    c = prior.config
    N = tokens.shape[1] * tokens.shape[2]
    if c.kind == "ar":
        return (prior(tokens, prev, bits=bits) * coded_mask(prior, tokens, prev)).mean()
    S = c.passes
    passes = [(b + step) % S for b in range(tokens.shape[0])]
    total, present = 0.0, 0
    for s in sorted(set(passes)):
        idx = torch.tensor([b for b, q in enumerate(passes) if q == s])
        nll = prior(tokens[idx], prev[idx] if prev is not None else None, pass_index=s, bits=bits)
        total = total + nll.sum(1).mean()
        present += 1
    return total * (S / present) / N


@torch.no_grad()
def expected_bits(prior: TokenPrior, tokens: torch.Tensor, prev: torch.Tensor | None, batch: int = 32,
                  bits: int | None = None) -> float:
    """Exact expected code length (bits per token) of the full-width tiles under the fixed
    schedule, at rate ``bits`` of a nested prior (None: the full rate)."""
    c = prior.config
    tokens, prev = at_rate(tokens, c.bits, bits), at_rate(prev, c.bits, bits)
    total, n = 0.0, 0
    for i in range(0, tokens.shape[0], batch):
        t = tokens[i : i + batch]
        pv = prev[i : i + batch] if prev is not None else None
        if c.kind == "ar":
            total += float((prior(t, pv, bits=bits) * coded_mask(prior, t, pv)).sum())
        else:
            total += sum(float(prior(t, pv, pass_index=s, bits=bits).sum()) for s in range(c.passes))
        n += t.numel()
    return total / max(n, 1)


# ---- training --------------------------------------------------------------------------------------------
def _windows(tokens: np.ndarray, idx: np.ndarray, tile, gen: torch.Generator) -> np.ndarray:
    """Random tile-sized windows of the selected token grids (..., h, w)."""
    h, w = tokens.shape[-2:]
    th, tw = tile
    out = []
    for i in idx:
        r = int(torch.randint(0, h - th + 1, (1,), generator=gen))
        q = int(torch.randint(0, w - tw + 1, (1,), generator=gen))
        out.append(tokens[i, ..., r : r + th, q : q + tw])
    return np.stack(out)


class PriorTrainer(SingleModelLoop):
    """The token prior's specialisation of the training loop: a batch of tile windows (of images,
    or of pairs of consecutive video frames) per step, a function of (seed, step)."""

    desc = "train-prior"
    model_key = "prior"

    def __init__(self, cfg: PriorTrainConfig, prior: TokenPrior, toks: dict, raw_bits: int, output_dir,
                 max_steps: int | None = None, progress: bool = True):
        super().__init__(cfg, output_dir, prior, max_steps=max_steps, progress=progress)
        self.images, self.pairs = toks["images"], toks["pairs"]
        self.copied = toks.get("copied")  # (R, M, h, w): second frames with temporal copying, per rate
        self.raw_bits = raw_bits
        self.tr_i, va_i = split_val(len(self.images), cfg.data.val_fraction, cfg.seed)
        self.tr_p, va_p = split_val(len(self.pairs), cfg.data.val_fraction, cfg.seed)
        if len(self.tr_i) + len(self.tr_p) == 0:
            raise ConfigError("no training crops left after the validation split")
        th, tw = prior.config.tile
        self.val_sets = []
        if len(va_i):
            self.val_sets.append(("images", torch.from_numpy(self.images[va_i][..., :th, :tw]), None))
        if len(va_p):
            vp = torch.from_numpy(self.pairs[va_p][..., :th, :tw])
            self.val_sets.append(("video", vp[:, 1], vp[:, 0]))
        # temporal copying: the second frame as sent at each rate (rate index -> tiles)
        self.val_copied = ({} if self.copied is None or not len(va_p) else
                           {i: torch.from_numpy(c[va_p][..., :th, :tw]) for i, c in enumerate(self.copied)})

    def _rate_index(self, bits: int | None) -> int:
        rates = self.model.config.rates
        return len(rates or [None]) - 1 if bits is None else rates.index(bits)

    def _val_tokens(self, name: str, tokens: torch.Tensor, bits: int | None) -> torch.Tensor:
        """Validation tiles at rate ``bits``: the copied second frames for video with copying."""
        if name != "video" or not self.val_copied:
            return tokens
        return self.val_copied[self._rate_index(bits)]

    def next_batch(self):
        cfg, tile = self.cfg, self.model.config.tile
        gen = step_generator(cfg.seed, self.step)
        tr_i, tr_p = self.tr_i, self.tr_p
        use_video = len(tr_p) > 0 and (len(tr_i) == 0 or float(torch.rand((), generator=gen)) < cfg.data.video_fraction)
        rates = self.model.config.rates  # nested priors: a rate per batch, uniform over the rates
        bits = None if rates is None else rates[int(torch.randint(0, len(rates), (), generator=gen))]
        L = self.model.config.bits
        if use_video:
            sel = tr_p[torch.randint(0, len(tr_p), (cfg.batch_size,), generator=gen).numpy()]
            src = self.pairs
            if self.copied is not None:  # the second frame as the encoder sends it at this rate
                src, sel = np.stack([self.pairs[sel, 0], self.copied[self._rate_index(bits)][sel]], 1), np.arange(len(sel))
            w = at_rate(torch.from_numpy(_windows(src, sel, tile, gen)), L, bits)
            return w[:, 1], w[:, 0], True, bits
        sel = tr_i[torch.randint(0, len(tr_i), (cfg.batch_size,), generator=gen).numpy()]
        return at_rate(torch.from_numpy(_windows(self.images, sel, tile, gen)), L, bits), None, False, bits

    def train_step(self, batch) -> dict:
        tokens, prev, video, bits = batch
        loss = prior_loss(self.model, tokens, prev, self.step, bits)
        grad_norm = self.optimizer_step(loss)
        return {"bits_per_token": loss.item(), "grad_norm": grad_norm, "video": video}

    def format_log(self, logs: dict, elapsed: float) -> tuple[dict, dict, dict]:
        lv = logs["bits_per_token"]
        record = {"bits_per_token": round(lv, 5), "lr": self.lr, "grad_norm": round(logs["grad_norm"], 4),
                  "video": logs["video"], "s_per_step": round(elapsed / self.cfg.log_every, 4)}
        return record, {"bits_per_token": lv, "lr": record["lr"]}, {"bits": f"{lv:.3f}"}

    def on_fit_start(self) -> None:
        self.model.train()

    def evaluate(self) -> dict:
        """Expected code length of the validation tiles; exports ``OUTPUT_DIR/prior``."""
        self.model.eval()
        res = {f"val_{name}_bits_per_token": expected_bits(self.model, self._val_tokens(name, t, None), pv)
               for name, t, pv in self.val_sets}
        if res:
            res["val_bits_per_token"] = float(np.mean(list(res.values())))
        for r in (self.model.config.rates or [])[:-1]:  # nested priors: the other rates, on every val set
            res[f"val_bits_per_token@{r}"] = float(np.mean([expected_bits(self.model, self._val_tokens(n, t, r), pv, bits=r)
                                                            for n, t, pv in self.val_sets]))
        self.model.train()
        rec = {"step": self.step, "raw_bits": self.raw_bits, **res}
        self.log_eval(rec, res)
        ckpt.export_model(self.model, self.out / "prior")
        return rec


def _prior_rates(cfg: PriorTrainConfig, model: Tokenizer) -> list[int] | None:
    """The rates a prior for ``model`` codes: ``prior.rates`` if given (each a level of the model),
    else the model's nested levels that are whole groups; None for a fixed-rate tokenizer."""
    levels = list(getattr(model, "nested_bits", None) or [])
    g = cfg.prior.group_bits
    if cfg.prior.rates is not None:
        bad = [r for r in cfg.prior.rates if r not in levels and r != index_bits(model.quantizer.codebook_size)]
        if bad:
            raise ConfigError(f"prior.rates {bad} are not levels of the tokenizer ({levels or 'fixed rate'})")
        return list(cfg.prior.rates)
    rates = [r for r in levels if r % g == 0]
    return rates or None


def _prior_config(cfg: PriorTrainConfig, model: Tokenizer) -> PriorConfig:
    """``cfg.prior`` completed with the tokenizer's bits, rates and hash; checks the crop against the tile."""
    pc = from_dict(PriorConfig, {**to_dict(cfg.prior), "bits": index_bits(model.quantizer.codebook_size),
                                 "rates": _prior_rates(cfg, model), "tokenizer_hash": model.weights_hash()})
    g = cfg.data.crop // model.patch_size
    if g < max(pc.tile):
        raise ConfigError(f"data.crop {cfg.data.crop} gives {g}x{g} tokens, smaller than the tile {pc.tile}")
    return pc


def train_prior(cfg: PriorTrainConfig, tokenizer_dir, output_dir, resume: bool = False,
                max_steps: int | None = None, progress: bool = True) -> dict:
    out = Path(output_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = load_tokenizer(str(tokenizer_dir)).eval()
    pc = _prior_config(cfg, model)
    out.mkdir(parents=True, exist_ok=True)
    toks = extract_tokens(model, cfg.data, cfg.seed, cfg.prior.temporal_copy, out / "tokens", progress=progress,
                          rates=pc.rates)
    del model
    if len(toks["images"]) + len(toks["pairs"]) == 0:
        raise ConfigError("no training crops (images smaller than data.crop, or no files)")
    if len(toks["pairs"]) and not pc.video:
        raise ConfigError("data.video is set but prior.video is false")
    torch.manual_seed(cfg.seed)
    prior = TokenPrior(pc)
    if cfg.init_from and not resume:
        log.info("warm start from %s (new: %s)", cfg.init_from, ", ".join(warm_start(prior, cfg.init_from)) or "none")
    trainer = PriorTrainer(cfg, prior, toks, pc.bits, out, max_steps=max_steps, progress=progress)
    if resume:
        trainer.resume()
    (out / "config.json").write_text(json.dumps({**to_dict(cfg), "prior": to_dict(pc),
                                                 "tokenizer": str(tokenizer_dir)}, indent=2, sort_keys=True))
    return trainer.fit()
