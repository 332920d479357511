"""Sample-quality metrics for generated images: FID, Inception Score, precision / recall.

* **FID**: Fréchet distance between Gaussian fits of the features of generated and reference
  images (:mod:`bsqvit.metrics.fid`). Reference images are resized to the samples' resolution
  first, so that only content differs, not sharpness.
* **IS**: ``exp(E_x KL(p(y|x) || p(y)))``. With the FID InceptionV3 weights, ``p(y|x)`` is its
  1008-way softmax (the published IS). Offline (stand-in features) there is no ImageNet
  classifier; ``p(y|x)`` then comes from a multinomial logistic-regression probe fitted on the
  stand-in features of the *labelled reference images* (C classes, so the score is at most C).
  The result is labelled ``is_probe`` and is not comparable to published IS.
* **Precision / recall** (Kynkäänniemi et al. 2019): the share of generated samples inside the
  k-NN manifold of the reference features, and vice versa (k = 3).
* **Class accuracy**: for samples whose file names carry their class (``<class-id>_*.png``, as
  ``bsqvit generate`` writes them), the share the classifier (Inception top-1 is not used; the
  probe) assigns to the requested class.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import find_images
from ..io import InputError, from_uint8, load_image, load_square, to_uint8
from .fid import FeatureStats, InceptionFeatures, build_fid_features, frechet_distance

log = logging.getLogger("bsqvit.metrics.generation")


@torch.no_grad()
def features_of(extractor, images, batch: int = 64) -> np.ndarray:
    """Features (N, dim) float64 of uint8 images (H, W, 3) (a list or an iterable)."""
    out, buf = [], []
    for a in images:
        buf.append(from_uint8(a))
        if len(buf) == batch:
            out.append(extractor(torch.stack(buf)).double().numpy())
            buf = []
    if buf:
        out.append(extractor(torch.stack(buf)).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, extractor.dim))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = FeatureStats(dim=a.shape[1]), FeatureStats(dim=b.shape[1])
    sa.update(a)
    sb.update(b)
    return float(frechet_distance(sa.mean, sa.cov, sb.mean, sb.cov, method="symmetric"))


def inception_score(probs: np.ndarray, eps: float = 1e-12) -> float:
    """``exp(mean_x KL(p(y|x) || p(y)))`` over all samples (one split)."""
    p = np.asarray(probs, np.float64)
    py = p.mean(0, keepdims=True)
    kl = (p * (np.log(p + eps) - np.log(py + eps))).sum(1)
    return float(math.exp(kl.mean()))


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = torch.cdist(torch.from_numpy(x), torch.from_numpy(x))
    return d.kthvalue(k + 1, dim=1).values.numpy()  # +1: the point itself is at distance 0


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds of each set)."""
    if len(real) <= k or len(fake) <= k:
        return float("nan"), float("nan")
    r_rad, f_rad = _kth_radius(real, k), _kth_radius(fake, k)
    d = torch.cdist(torch.from_numpy(fake), torch.from_numpy(real)).numpy()  # (F, R)
    precision = float((d <= r_rad[None, :]).any(1).mean())
    recall = float((d.T <= f_rad[None, :]).any(1).mean())
    return precision, recall


class LinearProbe:
    """Multinomial logistic regression on standardised features (L-BFGS, L2), deterministic."""

    def __init__(self, feats: np.ndarray, labels: np.ndarray, num_classes: int, l2: float = 1e-3, iters: int = 200):
        x = torch.from_numpy(np.asarray(feats, np.float64))
        y = torch.from_numpy(np.asarray(labels, np.int64))
        self.mu, self.sd = x.mean(0), x.std(0).clamp_min(1e-6)
        x = (x - self.mu) / self.sd
        self.W = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
        self.b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([self.W, self.b], max_iter=iters, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ self.W + self.b, y) + l2 * (self.W ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.W, self.b = self.W.detach(), self.b.detach()

    def probs(self, feats: np.ndarray) -> np.ndarray:
        x = (torch.from_numpy(np.asarray(feats, np.float64)) - self.mu) / self.sd
        return torch.softmax(x @ self.W + self.b, -1).numpy()


class GenEvaluator:
    """Reference features computed once; :meth:`score` evaluates any number of sample sets."""

    def __init__(self, ref_images: list[np.ndarray], ref_labels: np.ndarray | None = None,
                 features: str = "auto", inception_weights=None, weights_dir=None, batch: int = 64):
        self.extractor = build_fid_features(features, inception_weights, [weights_dir] if weights_dir else [])
        self.inception = isinstance(self.extractor, InceptionFeatures)
        self.batch = batch
        self.ref = features_of(self.extractor, ref_images, batch)
        self.probe = None
        if ref_labels is not None:
            lab = np.asarray(ref_labels)
            keep = lab >= 0
            classes = int(lab[keep].max()) + 1 if keep.any() else 0
            if classes >= 2 and len(np.unique(lab[keep])) == classes:
                self.probe = LinearProbe(self.ref[keep], lab[keep], classes)
        self.probe_accuracy_ref = (float((self.probe.probs(self.ref[keep]).argmax(1) == lab[keep]).mean())
                                   if self.probe is not None else None)

    @property
    def label(self) -> str:
        return self.extractor.label

    def score(self, images: list[np.ndarray], labels: np.ndarray | None = None) -> dict:
        fake = features_of(self.extractor, images, self.batch)
        out = {"n_samples": len(fake), "n_ref": len(self.ref), "features": self.extractor.name,
               "comparable_to_published": bool(self.extractor.comparable_to_published),
               "fid": fid_from_features(fake, self.ref) if len(fake) > 1 else float("nan")}
        out["precision"], out["recall"] = precision_recall(self.ref, fake)
        if self.inception:
            probs = torch.softmax(self.extractor.net.fc(torch.from_numpy(fake).float()), -1).double().numpy()
            out["is"] = inception_score(probs)
        if self.probe is not None:
            probs = self.probe.probs(fake)
            out["is_probe"] = inception_score(probs)
            out["probe_accuracy_on_ref"] = self.probe_accuracy_ref
            if labels is not None and (np.asarray(labels) >= 0).any():
                lab = np.asarray(labels)
                m = lab >= 0
                out["class_accuracy"] = float((probs[m].argmax(1) == lab[m]).mean())
        return out


def load_folder(path: str | Path, resolution: int | None = None, limit: int | None = None,
                exclude: tuple[str, ...] = ()) -> tuple[list, list[str]]:
    """uint8 images of a folder (recursive, sorted), resized to ``resolution`` squares if given;
    files named in ``exclude`` are left out, unreadable ones skipped with a warning."""
    images, kept = [], []
    for f in find_images(path):
        if Path(f).name in exclude:
            continue
        if limit is not None and len(kept) >= limit:
            break
        try:
            images.append(load_square(f, resolution) if resolution else to_uint8(load_image(f)))
        except InputError as e:  # unreadable files are skipped, as in training
            log.warning("skipping %s (%s)", f, e)
            continue
        kept.append(f)
    return images, kept
