"""GAN losses and regularisers for the BSQ-ViT objective.

* Non-saturating logistic loss (StyleGAN2; the reference's ``disc_loss: vanilla``):
  D: ``softplus(-D(x)) + softplus(D(G(z)))``, G: ``softplus(-D(G(z)))``.
* Hinge loss (VQGAN): D: ``relu(1 - D(x)) + relu(1 + D(G(z)))``, G: ``-D(G(z))``.
* Lazy R1 (StyleGAN2): every ``r1_every`` D steps add ``gamma / 2 * r1_every * R1``, where
  ``R1 = E ||grad_x D(x)||^2`` on real data (gamma = 10, r1_every = 16 in the reference).
* Adaptive generator weight (VQGAN): ``||grad_W L_rec|| / (||grad_W L_G|| + 1e-4)`` at the
  decoder's last layer W, clamped and detached. Off in the reference's configs.

Note on scale: the reference's D losses (``vanilla_d_loss`` / ``hinge_d_loss``) multiply the sum
of the real and fake terms by 0.5. The functions here default to the StyleGAN2 form (no 0.5);
pass ``scale=REFERENCE_D_LOSS_SCALE`` to reproduce the reference exactly (it changes the
balance between the D loss and R1: with 0.5, R1 weighs twice as much relative to the D loss).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "REFERENCE_D_LOSS_SCALE",
    "adaptive_weight",
    "d_loss_hinge",
    "d_loss_nonsaturating",
    "g_loss_hinge",
    "g_loss_nonsaturating",
    "gan_losses",
    "lazy_r1",
    "r1_due",
    "r1_penalty",
    "r1_scale",
]

REFERENCE_D_LOSS_SCALE = 0.5


def _f32(x: Tensor) -> Tensor:
    """Upcast half precision to fp32; leave fp32 / fp64 alone."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def d_loss_nonsaturating(logits_real: Tensor, logits_fake: Tensor, scale: float = 1.0) -> Tensor:
    """``scale * (mean softplus(-real) + mean softplus(fake))``, computed in (at least) fp32."""
    return scale * (F.softplus(-_f32(logits_real)).mean() + F.softplus(_f32(logits_fake)).mean())


def g_loss_nonsaturating(logits_fake: Tensor) -> Tensor:
    """``mean softplus(-fake)``, computed in (at least) fp32."""
    return F.softplus(-_f32(logits_fake)).mean()


def d_loss_hinge(logits_real: Tensor, logits_fake: Tensor, scale: float = 1.0) -> Tensor:
    """``scale * (mean relu(1 - real) + mean relu(1 + fake))``."""
    return scale * (F.relu(1.0 - _f32(logits_real)).mean() + F.relu(1.0 + _f32(logits_fake)).mean())


def g_loss_hinge(logits_fake: Tensor) -> Tensor:
    """``-mean fake``."""
    return -_f32(logits_fake).mean()


def gan_losses(name: str) -> tuple[Callable[..., Tensor], Callable[[Tensor], Tensor]]:
    """(d_loss, g_loss) for ``nonsaturating`` (alias ``vanilla``) or ``hinge``."""
    if name in ("nonsaturating", "vanilla"):
        return d_loss_nonsaturating, g_loss_nonsaturating
    if name == "hinge":
        return d_loss_hinge, g_loss_hinge
    raise ValueError(f"unknown GAN loss {name!r} (nonsaturating | hinge)")


def r1_penalty(D: Callable[[Tensor], Tensor], real: Tensor, return_logits: bool = False):
    """R1 gradient penalty ``||grad_x sum D(x)||^2 / #logits`` on real data.

    For a discriminator that returns one logit per sample this is the mean over the batch of
    ``||grad_{x_i} D(x_i)||^2``. For a per-frame discriminator on video ((B, C, T, H, W) ->
    (B*T,) logits) it is the mean over frames, as the reference computes it on ``(n t)`` frames.
    The graph is kept (``create_graph=True``) so the penalty can be back-propagated into D.
    ``real`` is detached first; half-precision logits / gradients are upcast to fp32.
    """
    x = real.detach().requires_grad_(True)
    logits = D(x)
    (grad,) = torch.autograd.grad(_f32(logits).sum(), x, create_graph=True)
    penalty = _f32(grad).square().sum() / logits.numel()
    return (penalty, logits) if return_logits else penalty


def r1_scale(gamma: float = 10.0, r1_every: int = 16) -> float:
    """Weight of a lazy R1 term: ``gamma / 2 * r1_every``."""
    return gamma / 2.0 * max(r1_every, 1)


def r1_due(step: int, r1_every: int = 16) -> bool:
    """Whether D step ``step`` (0-based) gets the lazy R1 term: ``(step + 1) % r1_every == 0``
    (the reference's schedule); ``r1_every <= 0`` disables R1."""
    return r1_every > 0 and (step + 1) % r1_every == 0


def lazy_r1(D: Callable[[Tensor], Tensor], real: Tensor, step: int, gamma: float = 10.0, r1_every: int = 16):
    """``(gamma / 2 * r1_every * R1, R1)`` on the steps where :func:`r1_due`, else ``None``
    (no forward pass is spent on the other steps). Add the first element to the D loss."""
    if gamma <= 0 or not r1_due(step, r1_every):
        return None
    r1 = r1_penalty(D, real)
    return r1_scale(gamma, r1_every) * r1, r1


def adaptive_weight(
    rec_loss: Tensor,
    g_loss: Tensor,
    last_layer: Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> Tensor:
    """VQGAN's adaptive adversarial weight ``||d rec/d W|| / (||d g/d W|| + eps)`` at the last
    layer's weight ``W``, clamped to [0, max_weight] and detached. Both graphs are retained, so
    the caller can back-propagate ``rec_loss + w * g_loss`` afterwards. Multiply by the fixed GAN
    weight yourself (the reference does ``d_weight * disc_weight``)."""
    (g_rec,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (g_adv,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    w = _f32(g_rec).norm() / (_f32(g_adv).norm() + eps)
    return w.clamp(0.0, max_weight).detach()
