"""The BSQ-ViT objective of the tokenizer trainer (see :mod:`bsqvit.train.trainer`).

* generator: ``L1 (+L2) + w_p LPIPS + w_g G_adv + w_q(step) quantizer_loss``, with the VQGAN
  adaptive weight on ``G_adv`` when ``loss.adaptive_gan_weight``;
* discriminator: non-saturating (or hinge) loss on real vs detached reconstructions, scaled by
  0.5 as the reference, plus lazy R1 every ``r1_every`` steps.

Each returns the loss to back-propagate and a dict of detached terms for the log.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F

from .config import LossConfig
from .gan import (
    REFERENCE_D_LOSS_SCALE,
    adaptive_weight,
    d_loss_hinge,
    d_loss_nonsaturating,
    g_loss_hinge,
    g_loss_nonsaturating,
    r1_due,
    r1_penalty,
)
from .phases import NO_PHASES


class TokenizerObjective:
    """``perceptual``: an LPIPS-like net or None; ``disc``: the discriminator or None;
    ``autocast``: a factory of the mixed-precision context; ``phase``: a factory of the timing
    context of a named phase (:mod:`bsqvit.train.phases`; no-op by default); ``disc_forward``:
    what computes D's logits for the D and G losses (e.g. ``torch.compile(disc)``; default
    ``disc``). R1 always runs the eager ``disc`` (compiled graphs have no double backward)."""

    def __init__(self, cfg: LossConfig, perceptual: torch.nn.Module | None, disc: torch.nn.Module | None,
                 autocast: Callable[[], AbstractContextManager], phase: Callable[[str], AbstractContextManager] = NO_PHASES,
                 disc_forward: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.cfg = cfg
        self.perceptual = perceptual
        self.disc = disc
        self.disc_forward = disc_forward if disc_forward is not None else disc
        self.autocast = autocast
        self.phase = phase

    def gan_active(self, step: int) -> bool:
        return self.disc is not None and step >= self.cfg.gan_start

    def _reconstruction(self, rec: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        lc = self.cfg
        terms = {}
        rec_loss = lc.l1_weight * (rec - x).abs().mean()
        terms["l1"] = (rec - x).abs().mean().detach()
        if lc.l2_weight > 0:
            l2 = F.mse_loss(rec, x)
            rec_loss = rec_loss + lc.l2_weight * l2
            terms["l2"] = l2.detach()
        if self.perceptual is not None:
            with self.phase("perceptual"), self.autocast():
                p = self.perceptual(rec, x).float().mean()
            rec_loss = rec_loss + lc.perceptual_weight * p
            terms["perceptual"] = p.detach()
        return rec_loss, terms

    def _adversarial(self, rec: torch.Tensor, rec_loss: torch.Tensor, last_layer: Callable[[], torch.Tensor],
                     terms: dict) -> torch.Tensor:
        """``w * G_adv`` (D frozen while G's adversarial loss is computed)."""
        lc = self.cfg
        self.disc.requires_grad_(False)
        with self.phase("g_adv"), self.autocast():
            logits = self.disc_forward(rec).float()
            g = g_loss_nonsaturating(logits) if lc.gan_loss == "nonsaturating" else g_loss_hinge(logits)
        self.disc.requires_grad_(True)
        w = lc.gan_weight
        if lc.adaptive_gan_weight:
            w = w * adaptive_weight(rec_loss, g, last_layer())
            terms["gan_adaptive_w"] = torch.as_tensor(w).detach()
        terms["g_adv"] = g.detach()
        return w * g

    def generator(self, out, x: torch.Tensor, step: int, with_gan: bool,
                  last_layer: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The generator's loss of the model output ``out`` (reconstruction + quantizer terms) of
        ``x``: (loss, detached fp32 reconstruction, terms)."""
        rec = out.reconstruction.float()
        rec_loss, terms = self._reconstruction(rec, x)
        total = rec_loss
        if with_gan:
            total = total + self._adversarial(rec, rec_loss, last_layer, terms)
        total = total + self.cfg.quant_weight_at(step) * out.quant.loss
        terms["quant_loss"] = out.quant.loss.detach()
        for name in ("per_sample_entropy", "codebook_entropy"):
            v = getattr(out.quant, name)
            if v is not None:
                terms[name] = v.detach()
        if out.quant.used_codes is not None:
            terms["batch_codes"] = out.quant.used_codes.detach()
        terms["loss"] = total.detach()
        return total, rec.detach(), terms

    def discriminator(self, x: torch.Tensor, rec: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """D's loss on real ``x`` vs detached reconstructions ``rec`` (without R1: see :meth:`r1`)."""
        lc = self.cfg
        with self.autocast():
            lr_, lf = self.disc_forward(x).float(), self.disc_forward(rec).float()
        d_loss = d_loss_nonsaturating if lc.gan_loss == "nonsaturating" else d_loss_hinge
        d = d_loss(lr_, lf, scale=REFERENCE_D_LOSS_SCALE)  # 0.5 (real + fake), as the reference
        terms = {"d_loss": d.detach(), "logits_real": lr_.mean().detach(), "logits_fake": lf.mean().detach()}
        return d, terms

    def r1_active(self, step: int) -> bool:
        lc = self.cfg
        return self.disc is not None and lc.r1_gamma > 0 and lc.r1_every > 0 and r1_due(step, lc.r1_every)

    def r1(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The lazy R1 term ``gamma / 2 * r1_every * R1`` on real ``x`` (add it to D's loss, or
        back-propagate it on its own: the gradients add up), when :meth:`r1_active`.

        Computed in fp32 with the eager discriminator, outside autocast: the penalty is a
        squared input gradient (second-order in D), which bf16's 8-bit mantissa would round at
        every layer of the double backward; after the FIR fix (:mod:`.stylegan_layers`) the fp32
        R1 step is cheap enough that bf16 is not worth that risk. A D built with
        ``num_fp16_res > 0`` still runs those blocks in bfloat16, as the reference does."""
        lc = self.cfg
        r1 = r1_penalty(self.disc, x)
        return 0.5 * lc.r1_gamma * lc.r1_every * r1, {"r1": r1.detach()}
