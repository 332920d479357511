"""The BSQ-ViT trainer: objective, optimisation, EMA, evaluation, checkpoints, DDP/FSDP.

A specialisation of the generic loop (:class:`bsqvit.train.loop.TrainLoop`: cadence, log.jsonl,
TensorBoard, tqdm, checkpoints, resume, NaN guard). One optimisation step
(``global batch = data.batch_size x world_size x optim.grad_accum``):

1. generator: ``L1 (+L2) + w_p LPIPS + w_g G_adv + w_q(step) quantizer_loss``
   (:mod:`bsqvit.train.objective`), backward over the micro-batches (DDP syncs on the last one),
   clip, AdamW, LR schedule, EMA update;
2. discriminator (from ``loss.gan_start``): non-saturating (or hinge) loss on real vs detached
   reconstructions, plus lazy R1 every ``r1_every`` steps, back-propagated on its own after the
   D loss (the gradients add up; D's loss graph is freed first) with the eager D in fp32;
   gradients averaged across ranks by hand (R1 needs double backward, which DDP's reducer does
   not support).

Speed (issue #13; ``benchmarks/train_throughput.py`` times every phase): ``compile: true``
compiles G and D's forward, ``channels_last: true`` puts D and the perceptual net in
channels-last, AdamW is fused on CUDA (``optim.fused``), and the logged terms stay on the
device until one copy per step.

Everything a resumed run needs is in the checkpoint: model, EMA, both optimizers and
schedulers, grad scaler, step, RNG states and the data position. Augmentations are a function
of (seed, epoch, sample index), so a resumed CPU run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import to_dict
from ..data import DataPosition, build_dataloader, count_skipped, infinite_batches
from ..metrics.lpips import build_perceptual
from ..metrics.pixel import psnr, ssim
from ..models import Tokenizer, build_tokenizer
from . import checkpoint as ckpt
from .config import TrainConfig
from .discriminator import build_discriminator
from .distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum_int,
    average_gradients,
    cleanup,
    full_model_state,
    full_optim_state,
    init_distributed,
    load_full_state,
    wrap_fsdp,
)
from .init_from import adapt_init
from .loop import TrainLoop
from .objective import TokenizerObjective
from .optim import adamw, adamw_warmup_cosine, ema_update, keeping_fused, make_ema, warmup_cosine, warmup_cosine_lr
from .phases import NO_PHASES
from .runlog import tensorboard_writer
from .samples import save_grid

log = logging.getLogger("bsqvit.train")


def unwrap(m: torch.nn.Module) -> torch.nn.Module:
    return m.module if isinstance(m, DDP) else m


def _ssim_items(rec: torch.Tensor, x: torch.Tensor) -> list[float]:
    """SSIM per item; a video's is the mean over its frames."""
    if x.ndim == 4:
        return ssim(rec, x).tolist()
    frames = ssim(rec.transpose(1, 2).flatten(0, 1), x.transpose(1, 2).flatten(0, 1))
    return frames.view(x.shape[0], -1).mean(1).tolist()


class Trainer(TrainLoop):
    resume_optional = True  # --resume without a checkpoint starts afresh

    def __init__(self, cfg: TrainConfig, output_dir: str | Path, resume: bool = False, max_steps: int | None = None,
                 progress: bool = True):
        self.dist: DistInfo = init_distributed(cfg.device)
        self.phase = NO_PHASES  # timing of the step's phases (benchmarks/train_throughput.py)
        self.device = self.dist.device
        super().__init__(cfg, output_dir, max_steps=max_steps, progress=progress, is_main=self.dist.is_main)
        self._seed_and_threads()
        self._build_models()
        self._build_optimizers()
        self.train_model: torch.nn.Module = self._compiled(self._wrap(self.model))
        self._build_data()
        self.skipped_files = 0
        self._items = 0  # items seen since the last log line
        self._fit_start_step = 0
        if resume:
            path = self.resume()
            if path is not None and self.dist.is_main:
                print(f"resumed from {path} at step {self.step}", flush=True)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True))

    # ---- construction -------------------------------------------------------------------------
    def _seed_and_threads(self) -> None:
        cfg, rank = self.cfg, self.dist.rank
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed + rank)
        random.seed(cfg.seed + rank)
        np.random.seed(cfg.seed + rank)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def _build_models(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = adapt_init(cfg.init_from, cfg.model) if cfg.init_from else build_tokenizer(cfg.model)
        self.model.to(self.device).train()
        self.ema = make_ema(self.model) if cfg.optim.ema_decay > 0 else None
        self.perceptual = self._build_perceptual()
        self.disc = None
        if cfg.loss.gan_weight > 0:
            torch.manual_seed(cfg.seed + 1)
            self.disc = build_discriminator(cfg.discriminator).to(self.device).train()  # per-frame on video
            if cfg.channels_last and all(p.ndim != 5 for p in self.disc.parameters()):
                self.disc.to(memory_format=torch.channels_last)
        torch.manual_seed(cfg.seed + 1000 + self.dist.rank)
        disc_forward = self._compiled(self.disc) if self.disc is not None else None
        self.objective = TokenizerObjective(cfg.loss, self.perceptual, self.disc, self._autocast, self.phase,
                                            disc_forward=disc_forward)

    def _compiled(self, module: torch.nn.Module) -> torch.nn.Module:
        """``torch.compile(module)`` when ``compile: true``. The compiled wrapper only runs the
        module: state dicts, optimizers, EMA and checkpoints use the module itself, so their keys
        carry no ``_orig_mod.`` prefix and a run resumes with compile on or off."""
        return torch.compile(module) if self.cfg.compile else module

    def _build_perceptual(self):
        lc = self.cfg.loss
        if lc.perceptual == "none" or lc.perceptual_weight <= 0:
            return None
        # Fails here, at start, naming the missing file: never train silently without it.
        net = build_perceptual(lc.perceptual, weights_path=lc.perceptual_weights, lin_path=lc.lpips_calibration)
        net = net.to(self.device).eval().requires_grad_(False)
        return net.to(memory_format=torch.channels_last) if self.cfg.channels_last else net

    def _build_optimizers(self) -> None:
        o = self.cfg.optim
        decay = o.decay_steps or self.cfg.steps
        self.opt_g = adamw(self.model.parameters(), o, o.lr)
        self.sched_g = warmup_cosine_lr(self.opt_g, o, decay)
        self.opt_d = self.sched_d = None
        if self.disc is not None:
            self.opt_d = adamw(self.disc.parameters(), o, o.disc_lr or o.lr)
            self.sched_d = warmup_cosine_lr(self.opt_d, o, decay)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(o.amp)
        if o.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("optim.amp=fp16 needs CUDA; use bf16 or none on CPU")
        self.scaler = torch.amp.GradScaler("cuda", enabled=o.amp == "fp16")

    @property
    def _fsdp(self) -> bool:
        return self.cfg.strategy == "fsdp" and self.dist.enabled

    def _wrap(self, model: Tokenizer) -> torch.nn.Module:
        if not self.dist.enabled:
            return model
        if self._fsdp:
            return wrap_fsdp(model, list(model.encoder.blocks) + list(model.decoder.blocks))
        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _build_data(self) -> None:
        cfg = self.cfg
        self.train_loader = build_dataloader(cfg.data, "train", self.dist.rank, self.dist.world_size, epoch_seed=cfg.seed)
        self.val_loader = None
        if self.dist.is_main and cfg.data.val:
            self.val_loader = build_dataloader(cfg.data, "val", 0, 1, epoch_seed=cfg.seed)
        self.data_pos = DataPosition()
        self.item_key = "video" if cfg.data.kind == "video" else "image"

    def set_phase_timer(self, timer) -> None:
        """Time the step's phases with ``timer`` (a :class:`~bsqvit.train.phases.PhaseTimer`)."""
        self.phase = self.objective.phase = timer

    # ---- the step -----------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _gan_active(self) -> bool:
        return self.objective.gan_active(self.step)

    def generator_loss(self, x: torch.Tensor, with_gan: bool):
        """(loss, detached reconstruction, terms) of a micro-batch ``x``."""
        with self.phase("g_forward"), self._autocast():
            out = self.train_model(x)
        return self.objective.generator(out, x, self.step, with_gan, self.model.last_layer)

    def discriminator_loss(self, x: torch.Tensor, rec: torch.Tensor):
        return self.objective.discriminator(x, rec, self.step)

    def next_batch(self) -> list[torch.Tensor]:
        """``optim.grad_accum`` micro-batches on the device; counts skipped files and items."""
        micro, skipped = [], 0
        with self.phase("data"):
            for _ in range(self.cfg.optim.grad_accum):
                batch, self.data_pos = next(self._stream)
                micro.append(batch[self.item_key])
                skipped += count_skipped(batch)
            micro = [m.to(self.device, non_blocking=True) for m in micro]
        self.skipped_files += skipped
        self._items += sum(m.shape[0] for m in micro) * self.dist.world_size
        return micro

    @staticmethod
    def _accumulate(sums: dict, terms: dict, n: int) -> None:
        """Sum ``terms / n`` into ``sums``, as tensors: no host-device sync per term."""
        for k, v in terms.items():
            v = v.detach().float().reshape(()) / n if torch.is_tensor(v) else float(v) / n
            sums[k] = sums[k] + v if k in sums else v

    @staticmethod
    def _floats(sums: dict) -> dict[str, float]:
        """The step's logged numbers as floats, with one device-to-host copy."""
        keys = [k for k, v in sums.items() if torch.is_tensor(v)]
        values = torch.stack([sums[k] for k in keys]).tolist() if keys else []
        return {**sums, **dict(zip(keys, values))}

    def _generator_step(self, micro_batches: list[torch.Tensor], with_gan: bool, sums: dict) -> list[torch.Tensor]:
        n = len(micro_batches)
        self.opt_g.zero_grad(set_to_none=True)
        recs = []
        for i, x in enumerate(micro_batches):
            sync = i == n - 1 or not isinstance(self.train_model, DDP)
            with nullcontext() if sync else self.train_model.no_sync():
                loss, rec, terms = self.generator_loss(x, with_gan)
                with self.phase("g_backward"):
                    self.scaler.scale(loss / n).backward()
            recs.append(rec)
            self._accumulate(sums, terms, n)
        with self.phase("g_optim"):
            self.scaler.unscale_(self.opt_g)
            if self.cfg.optim.grad_clip > 0:
                sums["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            self.scaler.step(self.opt_g)
            self.sched_g.step()
        if self.ema is not None:
            with self.phase("ema"):
                ema_update(self.ema, self.model, self.cfg.optim.ema_decay)
        return recs

    def _discriminator_step(self, micro_batches: list[torch.Tensor], recs: list[torch.Tensor], sums: dict) -> None:
        n = len(micro_batches)
        self.opt_d.zero_grad(set_to_none=True)
        r1 = self.objective.r1_active(self.step)
        for x, rec in zip(micro_batches, recs):
            with self.phase("d_step"):
                d, terms = self.discriminator_loss(x, rec)
                self.scaler.scale(d / n).backward()
            self._accumulate(sums, terms, n)
            if r1:  # its own backward: D's loss graph is freed first; the gradients add up
                with self.phase("r1"):
                    r, terms = self.objective.r1(x)
                    self.scaler.scale(r / n).backward()
                self._accumulate(sums, terms, n)
        with self.phase("d_optim"):
            average_gradients(self.disc)
            self.scaler.unscale_(self.opt_d)
            if self.cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.cfg.optim.grad_clip)
            self.scaler.step(self.opt_d)
            self.sched_d.step()

    def train_step(self, micro_batches: list[torch.Tensor]) -> dict[str, float]:
        """One step of G, then of D when the GAN is active; the loop advances ``self.step``."""
        with_gan = self._gan_active()
        sums: dict[str, float] = {}
        recs = self._generator_step(micro_batches, with_gan, sums)
        if with_gan:
            self._discriminator_step(micro_batches, recs, sums)
        self.scaler.update()
        sums["lr"] = self.sched_g.get_last_lr()[0]
        sums["quant_weight"] = self.cfg.loss.quant_weight_at(self.step)
        return self._floats(sums)

    # ---- loop hooks ---------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._fit_start_step = self.step
        self._stream = infinite_batches(self.train_loader, self.data_pos.epoch, self.data_pos.batch)
        if self.step == 0 and self.dist.is_main and self.cfg.eval_every > 0:
            self.evaluate()

    def format_log(self, logs: dict, elapsed: float) -> tuple[dict, dict, dict]:
        logs = all_reduce_mean(logs, self.device)  # every rank takes part
        logs["items_per_s"] = self._items / max(elapsed, 1e-9)
        logs["skipped_files"] = all_reduce_sum_int(self.skipped_files, self.device)
        self._items = 0
        record, scalars, _ = super().format_log(logs, elapsed)
        postfix = {"loss": f"{logs['loss']:.4f}", "l1": f"{logs['l1']:.4f}", "ips": f"{logs['items_per_s']:.1f}"}
        return record, scalars, postfix

    def on_fit_end(self) -> dict:
        """Evaluate at the last step (when steps ran), export; the last log line (with its step)."""
        if self.dist.is_main:
            if self.cfg.eval_every > 0 and self.step > self._fit_start_step:
                self.evaluate()
            self.export()
        return self.last_logs

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def _reconstruct_val(self, model) -> tuple[list[float], list[float], list]:
        ps, ss, shown = [], [], []
        for batch in self.val_loader or []:
            x = batch[self.item_key].to(self.device)
            with self._autocast():
                rec = model(x).reconstruction.float()
            ps.extend(psnr(rec, x).tolist())
            ss.extend(_ssim_items(rec, x))
            if len(shown) < self.cfg.sample_images:
                shown.extend(zip(x.cpu(), rec.cpu()))
        return ps, ss, shown

    @torch.no_grad()
    def evaluate(self) -> dict:
        """PSNR/SSIM of the EMA model on the held-out set; PNG sample grid; export DIR/model."""
        model = self.ema if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        ps, ss, shown = self._reconstruct_val(model)
        model.train(was_training)
        res = {"psnr": sum(ps) / max(1, len(ps)), "ssim": sum(ss) / max(1, len(ss)), "n": len(ps), "step": self.step}
        if ps:
            (self.out / "samples").mkdir(parents=True, exist_ok=True)
            save_grid(shown[: self.cfg.sample_images], self.out / "samples" / f"step_{self.step:08d}.png")
            self.log_eval(res, {"psnr": res["psnr"], "ssim": res["ssim"]})
            if self.progress:
                print(f"[eval] step {self.step}: PSNR {res['psnr']:.2f} dB  SSIM {res['ssim']:.4f}  ({len(ps)} items)",
                      flush=True)
        self.export()
        return res

    def export(self) -> None:
        model = self.ema if self.ema is not None else self.model
        ckpt.export_model(model, self.out / "model")

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": "bsqvit-train-v1",
            "step": self.step,
            "model": full_model_state(self.model, self._fsdp),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt_g": full_optim_state(self.model, self.opt_g, self._fsdp),
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

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size", 1) != self.dist.world_size:
            log.warning("resuming a %d-process run on %d processes: the data order changes",
                        state.get("world_size", 1), self.dist.world_size)
        with keeping_fused(self.opt_g):
            load_full_state(self.model, self.opt_g, state["model"], state["opt_g"], self._fsdp)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.sched_g.load_state_dict(state["sched_g"])
        if self.disc is not None and state.get("disc") is not None:
            self.disc.load_state_dict(state["disc"])
            with keeping_fused(self.opt_d):
                self.opt_d.load_state_dict(state["opt_d"])
            self.sched_d.load_state_dict(state["sched_d"])
        self.scaler.load_state_dict(state["scaler"])
        if self.dist.world_size == state.get("world_size", 1):
            ckpt.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.skipped_files = int(state["data"].get("skipped_files", 0))
        self.data_pos = DataPosition(int(state["data"]["epoch"]), int(state["data"]["batch"]))


def train(cfg: TrainConfig, output_dir, resume: bool = False, max_steps: int | None = None, progress: bool = True) -> dict:
    trainer = Trainer(cfg, output_dir, resume=resume, max_steps=max_steps, progress=progress)
    try:
        return trainer.fit()
    finally:
        cleanup()


__all__ = ["Trainer", "adamw_warmup_cosine", "ema_update", "tensorboard_writer", "train", "unwrap", "warmup_cosine"]
