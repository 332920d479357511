"""The BSQ-ViT trainer: objective, optimisation, EMA, evaluation, checkpoints, DDP/FSDP.

One optimisation step (``global batch = data.batch_size x world_size x optim.grad_accum``):

1. generator: ``L1 (+L2) + w_p LPIPS + w_g G_adv + w_q(step) quantizer_loss``, backward over the
   micro-batches (DDP syncs on the last one), clip, AdamW, LR schedule, EMA update;
2. discriminator (from ``loss.gan_start``): non-saturating (or hinge) loss on real vs detached
   reconstructions, plus lazy R1 every ``r1_every`` steps; gradients averaged across ranks by
   hand (R1 needs double backward, which DDP's reducer does not support).

Everything a resumed run needs is in the checkpoint: model, EMA, both optimizers and
schedulers, grad scaler, step, RNG states and the data position. Augmentations are a function
of (seed, epoch, sample index), so a resumed CPU run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import to_dict
from ..models.bsqvit import BSQViT
from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_mean, all_reduce_sum_int, average_gradients, barrier, init_distributed

log = logging.getLogger("bsqvit.train")


def warmup_cosine(step: int, warmup: int, total: int, start: float, end: float) -> float:
    """LR multiplier: linear ``start -> 1`` over ``warmup`` steps, then half-cosine ``1 -> end``."""
    if step < warmup:
        return start + (1.0 - start) * step / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + 0.5 * (1.0 - end) * (1 + math.cos(math.pi * t))


def adamw_warmup_cosine(module: torch.nn.Module, o, total_steps: int):
    """AdamW (weight decay on matrices, not on embeddings, norms or biases) and its warm-up +
    half-cosine schedule (``o``: lr, betas, weight_decay, warmup_steps, warmup_start, min_lr_ratio).
    Used by the token-prior and generator trainers."""
    decay = [p for n, p in module.named_parameters() if p.ndim >= 2 and "emb" not in n]
    other = [p for n, p in module.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=o.lr, betas=tuple(o.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, o.warmup_steps, total_steps, o.warmup_start, o.min_lr_ratio))
    return opt, sched


def tensorboard_writer(log_dir):
    """A TensorBoard ``SummaryWriter``, or None when tensorboard is not installed (logs only)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def unwrap(m: torch.nn.Module) -> torch.nn.Module:
    return m.module if isinstance(m, DDP) else m


class Trainer:
    def __init__(self, cfg: TrainConfig, output_dir: str | Path, resume: bool = False, max_steps: int | None = None,
                 progress: bool = True):
        self.cfg = cfg
        self.out = Path(output_dir)
        self.dist: DistInfo = init_distributed(cfg.device)
        self.device = self.dist.device
        self.total_steps = cfg.steps
        self.stop_at = min(cfg.steps, max_steps) if max_steps is not None else cfg.steps
        self.progress = progress and self.dist.is_main
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed + self.dist.rank)
        import random

        import numpy as np

        random.seed(cfg.seed + self.dist.rank)
        np.random.seed(cfg.seed + self.dist.rank)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # -- models -----------------------------------------------------------------------
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        if cfg.init_from:
            base = BSQViT.from_pretrained(cfg.init_from)
            self.model = self._adapt_init(base)
        else:
            self.model = BSQViT(cfg.model)
        self.model.to(self.device).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if cfg.optim.ema_decay > 0 else None
        self.perceptual = self._build_perceptual()
        self.disc = self._build_discriminator()
        torch.manual_seed(cfg.seed + 1000 + self.dist.rank)

        # -- optimisation -------------------------------------------------------------------
        o = cfg.optim
        self.opt_g = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas),
                                       weight_decay=o.weight_decay, eps=o.eps)
        decay = o.decay_steps or cfg.steps
        lam = lambda s: warmup_cosine(s, o.warmup_steps, decay, o.warmup_start, o.min_lr_ratio)  # noqa: E731
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, lam)
        self.opt_d = self.sched_d = None
        if self.disc is not None:
            self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=o.disc_lr or o.lr, betas=tuple(o.betas),
                                           weight_decay=o.weight_decay, eps=o.eps)
            self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, lam)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(o.amp)
        if o.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("optim.amp=fp16 needs CUDA; use bf16 or none on CPU")
        self.scaler = torch.amp.GradScaler("cuda", enabled=o.amp == "fp16")

        # -- distributed wrapping -----------------------------------------------------------
        self.train_model: torch.nn.Module = self.model
        if self.dist.enabled:
            if cfg.strategy == "fsdp":
                self.train_model = self._wrap_fsdp(self.model)
            else:
                self.train_model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        # -- data -----------------------------------------------------------------------------
        from ..data import DataPosition, build_dataloader

        self.train_loader = build_dataloader(cfg.data, "train", self.dist.rank, self.dist.world_size, epoch_seed=cfg.seed)
        self.val_loader = None
        if self.dist.is_main and cfg.data.val:
            self.val_loader = build_dataloader(cfg.data, "val", 0, 1, epoch_seed=cfg.seed)
        self.data_pos = DataPosition()
        self.item_key = "video" if cfg.data.kind == "video" else "image"

        # -- state ----------------------------------------------------------------------------
        self.step = 0
        self.skipped_files = 0
        self.history: list[dict] = []
        if resume:
            self._resume()
        self.writer = None
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True))

    # ---- construction helpers -----------------------------------------------------------------
    def _adapt_init(self, base: BSQViT) -> BSQViT:
        """Fine-tune from a pretrained model, e.g. image -> video (temporal embeddings start at 0)."""
        model = BSQViT(self.cfg.model)
        own = model.state_dict()
        state = {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in state]
        bad = [k for k in missing if "temporal_embed" not in k]
        if bad:
            raise ValueError(f"init_from {self.cfg.init_from}: incompatible with the model config ({bad[:3]})")
        model.load_state_dict(state, strict=False)
        return model

    def _build_perceptual(self):
        lc = self.cfg.loss
        if lc.perceptual == "none" or lc.perceptual_weight <= 0:
            return None
        from ..metrics.lpips import build_perceptual

        # Fails here, at start, naming the missing file: never train silently without it.
        net = build_perceptual(lc.perceptual, weights_path=lc.perceptual_weights, lin_path=lc.lpips_calibration)
        return net.to(self.device).eval().requires_grad_(False)

    def _build_discriminator(self):
        if self.cfg.loss.gan_weight <= 0:
            return None
        from .discriminator import build_discriminator

        torch.manual_seed(self.cfg.seed + 1)
        return build_discriminator(self.cfg.discriminator).to(self.device).train()  # per-frame on video

    def _wrap_fsdp(self, model: BSQViT):
        from torch.distributed.fsdp import fully_shard

        for blk in list(model.encoder.blocks) + list(model.decoder.blocks):
            fully_shard(blk)
        fully_shard(model)
        return model

    # ---- the step -----------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _gan_active(self) -> bool:
        return self.disc is not None and self.step >= self.cfg.loss.gan_start

    def _g_adv(self, logits_fake):
        from .gan import g_loss_hinge, g_loss_nonsaturating

        return g_loss_nonsaturating(logits_fake) if self.cfg.loss.gan_loss == "nonsaturating" else g_loss_hinge(logits_fake)

    def generator_loss(self, x: torch.Tensor, with_gan: bool):
        lc = self.cfg.loss
        with self._autocast():
            out = self.train_model(x)
        rec = out.reconstruction.float()
        terms = {}
        rec_loss = lc.l1_weight * (rec - x).abs().mean()
        terms["l1"] = (rec - x).abs().mean().detach()
        if lc.l2_weight > 0:
            l2 = F.mse_loss(rec, x)
            rec_loss = rec_loss + lc.l2_weight * l2
            terms["l2"] = l2.detach()
        if self.perceptual is not None:
            with self._autocast():
                p = self.perceptual(rec, x).float().mean()
            rec_loss = rec_loss + lc.perceptual_weight * p
            terms["perceptual"] = p.detach()
        total = rec_loss
        if with_gan:
            self.disc.requires_grad_(False)
            with self._autocast():
                g = self._g_adv(self.disc(rec).float())
            self.disc.requires_grad_(True)
            w = lc.gan_weight
            if lc.adaptive_gan_weight:
                from .gan import adaptive_weight

                w = w * adaptive_weight(rec_loss, g, self.model.last_layer())
                terms["gan_adaptive_w"] = torch.as_tensor(w).detach()
            total = total + w * g
            terms["g_adv"] = g.detach()
        wq = lc.quant_weight_at(self.step)
        total = total + wq * out.quant.loss
        terms["quant_loss"] = out.quant.loss.detach()
        for name in ("per_sample_entropy", "codebook_entropy"):
            v = getattr(out.quant, name)
            if v is not None:
                terms[name] = v.detach()
        if out.quant.used_codes is not None:
            terms["batch_codes"] = out.quant.used_codes.detach()
        terms["loss"] = total.detach()
        return total, rec.detach(), terms

    def discriminator_loss(self, x: torch.Tensor, rec: torch.Tensor):
        from .gan import REFERENCE_D_LOSS_SCALE, d_loss_hinge, d_loss_nonsaturating, r1_due, r1_penalty

        lc = self.cfg.loss
        with self._autocast():
            lr_, lf = self.disc(x).float(), self.disc(rec).float()
        d_loss = d_loss_nonsaturating if lc.gan_loss == "nonsaturating" else d_loss_hinge
        d = d_loss(lr_, lf, scale=REFERENCE_D_LOSS_SCALE)  # 0.5 (real + fake), as the reference
        terms = {"d_loss": d.detach(), "logits_real": lr_.mean().detach(), "logits_fake": lf.mean().detach()}
        if lc.r1_gamma > 0 and lc.r1_every > 0 and r1_due(self.step, lc.r1_every):
            r1 = r1_penalty(self.disc, x)  # fp32: double backward under autocast is fragile
            d = d + 0.5 * lc.r1_gamma * lc.r1_every * r1
            terms["r1"] = r1.detach()
        return d, terms

    def train_step(self, micro_batches: list[torch.Tensor]) -> dict[str, float]:
        o = self.cfg.optim
        n = len(micro_batches)
        with_gan = self._gan_active()
        self.opt_g.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        recs = []
        for i, x in enumerate(micro_batches):
            sync = i == n - 1 or not isinstance(self.train_model, DDP)
            ctx = nullcontext() if sync else self.train_model.no_sync()
            with ctx:
                loss, rec, terms = self.generator_loss(x, with_gan)
                self.scaler.scale(loss / n).backward()
            recs.append(rec)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) / n
        self.scaler.unscale_(self.opt_g)
        if o.grad_clip > 0:
            sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip))
        self.scaler.step(self.opt_g)
        self.sched_g.step()
        if self.ema is not None:
            ema_update(self.ema, self.model, o.ema_decay)

        if with_gan:
            self.opt_d.zero_grad(set_to_none=True)
            for x, rec in zip(micro_batches, recs):
                d, terms = self.discriminator_loss(x, rec)
                self.scaler.scale(d / n).backward()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / n
            average_gradients(self.disc)
            self.scaler.unscale_(self.opt_d)
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.disc.parameters(), o.grad_clip)
            self.scaler.step(self.opt_d)
            self.sched_d.step()
        self.scaler.update()
        sums["lr"] = self.sched_g.get_last_lr()[0]
        sums["quant_weight"] = self.cfg.loss.quant_weight_at(self.step)
        self.step += 1
        return sums

    # ---- loop -----------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        from tqdm import tqdm

        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))
        from ..data import count_skipped, infinite_batches

        stream = infinite_batches(self.train_loader, self.data_pos.epoch, self.data_pos.batch)

        def next_step_batches():
            micro, skipped = [], 0
            for _ in range(cfg.optim.grad_accum):
                batch, self.data_pos = next(stream)
                micro.append(batch[self.item_key])
                skipped += count_skipped(batch)
            return micro, skipped

        bar = tqdm(total=self.stop_at, initial=self.step, disable=not self.progress, dynamic_ncols=True, desc="train")
        t_last, n_items = time.time(), 0
        last_logged = {}
        if self.step == 0 and self.dist.is_main and cfg.eval_every > 0:
            self.evaluate()
        while self.step < self.stop_at:
            micro, skipped = next_step_batches()
            micro = [m.to(self.device, non_blocking=True) for m in micro]
            self.skipped_files += skipped
            logs = self.train_step(micro)
            n_items += sum(m.shape[0] for m in micro) * self.dist.world_size
            if not all(math.isfinite(v) for v in logs.values()):
                raise FloatingPointError(f"non-finite loss at step {self.step}: {logs}")
            if self.step % cfg.log_every == 0 or self.step == self.stop_at:
                logs = all_reduce_mean(logs, self.device)
                dt = time.time() - t_last
                logs["items_per_s"] = n_items / max(dt, 1e-9)
                logs["skipped_files"] = all_reduce_sum_int(self.skipped_files, self.device)
                t_last, n_items = time.time(), 0
                if self.dist.is_main:
                    self._log(logs)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", l1=f"{logs['l1']:.4f}", ips=f"{logs['items_per_s']:.1f}")
                last_logged = {**logs, "step": self.step}
            bar.update(1)
            if cfg.checkpoint_every > 0 and (self.step % cfg.checkpoint_every == 0 or self.step == self.stop_at):
                self.save_checkpoint()
            if self.dist.is_main and cfg.eval_every > 0 and (self.step % cfg.eval_every == 0 or self.step == self.stop_at):
                self.evaluate()
        bar.close()
        if self.dist.is_main:
            self.export()
            if self.writer:
                self.writer.close()
        barrier()
        return last_logged

    def _log(self, logs: dict) -> None:
        rec = {"step": self.step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in logs.items()}}
        self.history.append(rec)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        for k, v in logs.items():
            self.writer.add_scalar(f"train/{k}", v, self.step)

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """PSNR/SSIM of the EMA model on the held-out set; PNG sample grid; export DIR/model."""
        from ..metrics.pixel import psnr, ssim
        from .samples import save_grid

        model = self.ema if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        ps, ss, shown = [], [], []
        for batch in self.val_loader or []:
            x = batch[self.item_key].to(self.device)
            with self._autocast():
                rec = model(x).reconstruction.float()
            ps.extend(psnr(rec, x).tolist())
            if x.ndim == 4:
                ss.extend(ssim(rec, x).tolist())
            else:
                ss.extend(ssim(rec.transpose(1, 2).flatten(0, 1), x.transpose(1, 2).flatten(0, 1)).view(x.shape[0], -1).mean(1).tolist())
            if len(shown) < self.cfg.sample_images:
                shown.extend(zip(x.cpu(), rec.cpu()))
        model.train(was_training)
        res = {"psnr": sum(ps) / max(1, len(ps)), "ssim": sum(ss) / max(1, len(ss)), "n": len(ps), "step": self.step}
        if ps:
            (self.out / "samples").mkdir(parents=True, exist_ok=True)
            save_grid(shown[: self.cfg.sample_images], self.out / "samples" / f"step_{self.step:08d}.png")
            if self.writer:
                self.writer.add_scalar("eval/psnr", res["psnr"], self.step)
                self.writer.add_scalar("eval/ssim", res["ssim"], self.step)
            with open(self.out / "eval.jsonl", "a") as f:
                f.write(json.dumps(res) + "\n")
            if self.progress:
                print(f"[eval] step {self.step}: PSNR {res['psnr']:.2f} dB  SSIM {res['ssim']:.4f}  ({len(ps)} items)",
                      flush=True)
        self.export()
        return res

    def export(self) -> None:
        model = self.ema if self.ema is not None else self.model
        ckpt.export_model(model, self.out / "model")

    # ---- checkpoints ----------------------------------------------------------------------
    def _full_model_state(self, module) -> dict:
        if self.cfg.strategy == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return module.state_dict()

    def state_dict(self) -> dict:
        return {
            "format": "bsqvit-train-v1",
            "step": self.step,
            "model": self._full_model_state(self.model),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt_g": self._optim_state(self.opt_g, self.model),
            "sched_g": self.sched_g.state_dict(),
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "sched_d": self.sched_d.state_dict() if self.sched_d is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "data": {"epoch": self.data_pos.epoch, "batch": self.data_pos.batch, "skipped_files": self.skipped_files},
            "config": to_dict(self.cfg),
            "world_size": self.dist.world_size,
        }

    def _optim_state(self, opt, module):
        if self.cfg.strategy == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return opt.state_dict()

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # collective under FSDP: every rank calls it
        if self.dist.is_main:
            ckpt.save_checkpoint(state, self.out / "checkpoints", self.step, keep=self.cfg.keep_checkpoints)
        barrier()

    def _resume(self) -> None:
        path = ckpt.find_last(self.out / "checkpoints")
        if path is None:
            log.info("no checkpoint in %s: starting from scratch", self.out / "checkpoints")
            return
        state = ckpt.load_checkpoint(path)
        if state.get("world_size", 1) != self.dist.world_size:
            log.warning("resuming a %d-process run on %d processes: the data order changes",
                        state.get("world_size", 1), self.dist.world_size)
        if self.cfg.strategy == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, state["model"], options=opts)
            set_optimizer_state_dict(self.model, self.opt_g, state["opt_g"], options=opts)
        else:
            self.model.load_state_dict(state["model"])
            self.opt_g.load_state_dict(state["opt_g"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.sched_g.load_state_dict(state["sched_g"])
        if self.disc is not None and state.get("disc") is not None:
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
            self.sched_d.load_state_dict(state["sched_d"])
        self.scaler.load_state_dict(state["scaler"])
        if self.dist.world_size == state.get("world_size", 1):
            ckpt.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.skipped_files = int(state["data"].get("skipped_files", 0))
        from ..data import DataPosition

        self.data_pos = DataPosition(int(state["data"]["epoch"]), int(state["data"]["batch"]))
        if self.dist.is_main:
            print(f"resumed from {path} at step {self.step}", flush=True)


def train(cfg: TrainConfig, output_dir, resume: bool = False, max_steps: int | None = None, progress: bool = True) -> dict:
    trainer = Trainer(cfg, output_dir, resume=resume, max_steps=max_steps, progress=progress)
    try:
        return trainer.fit()
    finally:
        from .distributed import cleanup

        cleanup()


__all__ = ["Trainer", "train", "warmup_cosine", "ema_update"]
