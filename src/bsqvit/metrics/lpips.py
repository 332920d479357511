"""LPIPS perceptual distance (Zhang et al. 2018, ``lpips`` package v0.1 semantics), own implementation.

``LPIPS(net)`` with ``net`` in

* ``"vgg"``, ``"alex"``, ``"squeeze"``: the torchvision ImageNet backbones (VGG16 / AlexNet /
  SqueezeNet1.1, loaded from the torch-hub cache or an explicit file, never downloaded), the
  ``lpips`` input scaling, and, when ``calibrated`` (default), the v0.1 linear calibration weights.
  Calibrated values are comparable to published LPIPS numbers.
* ``"squeeze-caffe"``: an offline stand-in, the Caffe SqueezeNet v1.1 ImageNet weights in
  torchvision's ``squeezenet1_1().features`` layout, with Caffe input convention (0-255, BGR, mean
  subtraction, no std). Always uncalibrated (the v0.1 calibration was fitted to torchvision's
  SqueezeNet and does not apply). NOT comparable to published LPIPS.

Distance, per layer ``l`` with features ``f_l`` (N, C, H, W) after the ReLU taps ``lpips`` uses::

    f^ = f / (sqrt(sum_c f^2) + 1e-10)                  # unit-normalise over channels
    d_l = mean_hw( sum_c w_c (f^_x - f^_y)^2 )          # calibrated (1x1 conv, no bias)
    d_l = mean_hw( sum_c      (f^_x - f^_y)^2 )         # uncalibrated "baseline"
    LPIPS = sum_l d_l

Inputs are images in [-1, 1] of shape (B, 3, H, W), or videos (B, 3, T, H, W) whose frames are
scored independently and averaged over T. The network is frozen (no parameter gradients, always in
eval mode) but differentiable with respect to its inputs, so it can be used as a training loss.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..nets.backbones import (
    WEIGHTS_DIR_ENV,
    WeightsNotFound,
    build_backbone,
    find_weights_file,
)

__all__ = ["LPIPS", "NET_SPECS", "AUTO_NETS", "build_perceptual", "build_lpips", "WeightsNotFound",
           "lpips_package_weights_dir"]

# ImageNet normalisation expressed for [-1, 1] inputs, as in the lpips ScalingLayer.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
# Caffe SqueezeNet: BGR channel means on a 0-255 scale.
_CAFFE_BGR_MEAN = (104.006, 116.669, 122.679)


@dataclass(frozen=True)
class NetSpec:
    backbone: str  # name for bsqvit.nets.build_backbone
    taps: tuple[int, ...]  # indices into ``features`` whose outputs are used (lpips slice ends - 1)
    channels: tuple[int, ...]
    lin_file: str | None  # v0.1 calibration file name, None = no calibration available
    title: str
    caffe_input: bool = False


NET_SPECS: dict[str, NetSpec] = {
    # lpips vgg16 slices [0:4], [4:9], [9:16], [16:23], [23:30] -> relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    "vgg": NetSpec("vgg16", (3, 8, 15, 22, 29), (64, 128, 256, 512, 512), "vgg.pth", "VGG"),
    # lpips alexnet slices [0:2], [2:5], [5:8], [8:10], [10:12] -> relu1 ... relu5
    "alex": NetSpec("alexnet", (1, 4, 7, 9, 11), (64, 192, 384, 256, 256), "alex.pth", "Alex"),
    # lpips squeezenet slices [0:2], [2:5], [5:8], [8:10], [10:11], [11:12], [12:13]
    "squeeze": NetSpec(
        "squeezenet1_1", (1, 4, 7, 9, 10, 11, 12), (64, 128, 256, 384, 384, 512, 512), "squeeze.pth", "Squeeze"
    ),
    "squeeze-caffe": NetSpec(
        "squeezenet1_1_caffe", (1, 4, 7, 9, 10, 11, 12), (64, 128, 256, 384, 384, 512, 512), None,
        "SqueezeNet-Caffe", caffe_input=True,
    ),
}
_ALIASES = {"vgg16": "vgg", "alexnet": "alex", "squeezenet": "squeeze", "squeezenet1_1": "squeeze",
            "squeeze_caffe": "squeeze-caffe", "squeezenet-caffe": "squeeze-caffe"}


def _canonical(net: str) -> str:
    n = net.lower().removeprefix("lpips-").removeprefix("lpips_")
    n = _ALIASES.get(n, n)
    if n not in NET_SPECS:
        raise ValueError(f"unknown LPIPS network {net!r}; expected one of {sorted(NET_SPECS)}")
    return n


def lpips_package_weights_dir() -> Path | None:
    """``<site-packages>/lpips/weights/v0.1`` if the ``lpips`` package is installed (not imported)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "weights" / "v0.1"
        if d.is_dir():
            return d
    return None


def _unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + eps)


class _LinLayer(nn.Module):
    """Same key layout as lpips' NetLinLayer (``model.1.weight``); the dropout slot is a no-op."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


class LPIPS(nn.Module):
    """LPIPS distance. ``forward(x, y)`` returns per-item distances (B,) (or reduced, see ``reduction``).

    Args:
        net: ``"vgg"`` | ``"alex"`` | ``"squeeze"`` | ``"squeeze-caffe"``.
        weights_path: backbone weight file (or a directory holding it). Default search: ``weights_dir``,
            ``$BSQVIT_WEIGHTS_DIR``, ``torch.hub.get_dir()/checkpoints`` (torchvision file names).
        lin_path: v0.1 calibration file (or a directory holding ``{net}.pth``). Default search:
            ``weights_dir[/lpips_v0.1]``, ``$BSQVIT_WEIGHTS_DIR[/lpips_v0.1]``, the installed ``lpips``
            package's ``weights/v0.1``.
        calibrated: use the learned linear layers (LPIPS proper) or the uncalibrated baseline.
            ``None`` (default) = True for torchvision nets, False for ``squeeze-caffe`` (which
            rejects ``True``).
        weights_dir: extra directory searched for both kinds of files.
        reduction: ``"none"`` (B,), ``"mean"`` or ``"sum"``; can be overridden per call.
    """

    def __init__(
        self,
        net: str = "vgg",
        weights_path: str | os.PathLike | None = None,
        lin_path: str | os.PathLike | None = None,
        calibrated: bool | None = None,
        weights_dir: str | os.PathLike | None = None,
        reduction: str = "none",
    ):
        super().__init__()
        self.net_name = _canonical(net)
        spec = NET_SPECS[self.net_name]
        self.spec = spec
        if calibrated is None:
            calibrated = spec.lin_file is not None
        if calibrated and spec.lin_file is None:
            raise ValueError(
                f"LPIPS net {self.net_name!r} has no calibration weights (the v0.1 linear layers were fitted to "
                "torchvision backbones); use calibrated=False"
            )
        if lin_path is not None and not calibrated:
            raise ValueError("lin_path given but calibrated=False")
        self.calibrated = bool(calibrated)
        self.reduction = _check_reduction(reduction)

        search = [weights_dir] if weights_dir else []
        backbone = build_backbone(spec.backbone, weights_path, search)
        # keep only up to the last tap (drops e.g. VGG's final max-pool)
        self.features = nn.Sequential(*list(backbone.features.children())[: max(spec.taps) + 1])
        self.taps = spec.taps

        if spec.caffe_input:
            self.register_buffer("shift", torch.tensor(_CAFFE_BGR_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("scale", torch.ones(1, 3, 1, 1), persistent=False)
        else:
            self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

        self.lin_file: Path | None = None
        if self.calibrated:
            self.lins = nn.ModuleList([_LinLayer(c) for c in spec.channels])
            self.lin_file = self._find_lin_file(lin_path, weights_dir)
            self._load_lins(self.lin_file)
        else:
            self.lins = None

        self.requires_grad_(False)
        super().train(False)

    # ---- metadata --------------------------------------------------------------------------------
    @property
    def comparable_to_published(self) -> bool:
        """True only for the calibrated torchvision backbones (the real LPIPS v0.1)."""
        return self.calibrated and not self.spec.caffe_input

    @property
    def label(self) -> str:
        if self.spec.caffe_input:
            return "LPIPS-like (SqueezeNet-Caffe stand-in, not comparable to published LPIPS)"
        if self.calibrated:
            return f"LPIPS-{self.spec.title} (v0.1)"
        return f"LPIPS-{self.spec.title} baseline (uncalibrated, not comparable to published LPIPS)"

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, calibrated={self.calibrated}, reduction={self.reduction!r}"

    def train(self, mode: bool = True) -> "LPIPS":  # always frozen / eval
        return super().train(False)

    # ---- weights ---------------------------------------------------------------------------------
    def _find_lin_file(self, lin_path, weights_dir) -> Path:
        dirs: list = []
        if weights_dir:
            dirs.append(weights_dir)
        if os.environ.get(WEIGHTS_DIR_ENV):
            dirs.append(os.environ[WEIGHTS_DIR_ENV])
        pkg = lpips_package_weights_dir()
        if pkg is not None:
            dirs.append(pkg)
        return find_weights_file(
            (self.spec.lin_file,), lin_path, dirs, subdirs=("lpips_v0.1",),
            what=f"LPIPS v0.1 calibration weights for {self.net_name!r}",
        )

    def _load_lins(self, path: Path) -> None:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        for k, (lin, c) in enumerate(zip(self.lins, self.spec.channels)):
            key = f"lin{k}.model.1.weight"
            if key not in sd:
                raise ValueError(f"{path}: missing {key!r} (found {sorted(sd)})")
            w = sd[key]
            if tuple(w.shape) != (1, c, 1, 1):
                raise ValueError(f"{path}: {key} has shape {tuple(w.shape)}, expected {(1, c, 1, 1)}")
            lin.model[1].weight.data.copy_(w)

    # ---- computation -----------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.caffe_input:
            x = (x + 1.0) * 127.5  # [-1, 1] -> [0, 255]
            x = x.flip(1)  # RGB -> BGR
        return (x - self.shift) / self.scale

    def _memory_format(self) -> torch.memory_format:
        """Channels-last when the backbone's conv weights are (``net.to(memory_format=
        torch.channels_last)``), so the input matches them and no layer converts back and forth."""
        w = next((p for p in self.features.parameters() if p.dim() == 4), None)
        if w is not None and w.shape[1] > 1 and w.is_contiguous(memory_format=torch.channels_last) \
                and not w.is_contiguous():
            return torch.channels_last
        return torch.contiguous_format

    def _tapped_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.contiguous(memory_format=self._memory_format())
        outs = []
        last = self.taps[-1]
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
            if i == last:
                break
        return outs

    def layer_distances(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer distances, each (N,), for image batches (N, 3, H, W) in [-1, 1]."""
        if x.shape != y.shape:
            raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got {tuple(x.shape)}")
        n = x.shape[0]
        feats = self._tapped_features(self._prepare(torch.cat([x, y], 0)))
        res = []
        for k, f in enumerate(feats):
            f = f.float()
            fx, fy = _unit_normalize(f[:n]), _unit_normalize(f[n:])
            d = (fx - fy) ** 2
            if self.calibrated:
                # 1x1 conv without bias, written as a weighted channel sum (stays fp32 under autocast)
                d = (d * self.lins[k].model[1].weight.float().view(1, -1, 1, 1)).sum(dim=1, keepdim=True)
            else:
                d = d.sum(dim=1, keepdim=True)
            res.append(d.mean(dim=(1, 2, 3)))
        return res

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, reduction: str | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """Distance between ``x`` and ``y`` ((B,3,H,W) images or (B,3,T,H,W) videos, in [-1, 1];
        in [0, 1] with ``normalize=True``). Returns (B,) unless ``reduction`` is mean/sum."""
        reduction = _check_reduction(reduction or self.reduction)
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        if x.shape != y.shape:
            raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
        video = x.dim() == 5
        if video:
            b, c, t, h, w = x.shape
            x = x.transpose(1, 2).reshape(b * t, c, h, w)
            y = y.transpose(1, 2).reshape(b * t, c, h, w)
        d = torch.stack(self.layer_distances(x, y), 0).sum(0)
        if video:
            d = d.view(b, t).mean(1)
        if reduction == "mean":
            return d.mean()
        if reduction == "sum":
            return d.sum()
        return d


def _check_reduction(r: str) -> str:
    if r not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {r!r}")
    return r


def build_perceptual(
    name: str,
    weights_dir: str | os.PathLike | None = None,
    weights_path: str | os.PathLike | None = None,
    lin_path: str | os.PathLike | None = None,
    calibrated: bool | None = None,
    reduction: str = "none",
) -> LPIPS:
    """Build the perceptual loss/metric ``name`` (``vgg``/``alex``/``squeeze``/``squeeze-caffe``,
    ``lpips-`` prefixes accepted). Fails immediately with :class:`WeightsNotFound` (a
    ``FileNotFoundError``) naming the missing file and the directories searched, so a trainer can
    never silently run without its perceptual term."""
    return LPIPS(_canonical(name), weights_path=weights_path, lin_path=lin_path, calibrated=calibrated,
                 weights_dir=weights_dir, reduction=reduction)


# ``build_lpips("auto")`` takes the first of these whose weights are found (standard LPIPS first).
AUTO_NETS = ("vgg", "alex", "squeeze-caffe")


def _build_first_found(name: str, dirs: Sequence[str | os.PathLike | None]) -> LPIPS:
    """:func:`build_perceptual` takes one extra directory: try each in turn."""
    last: Exception | None = None
    for d in dirs or [None]:
        try:
            return build_perceptual(name, weights_dir=d)
        except WeightsNotFound as e:
            last = e
    raise last  # type: ignore[misc]


def build_lpips(kind: str = "auto", dirs: Sequence[str | os.PathLike | None] = ()) -> tuple[LPIPS | None, dict]:
    """The LPIPS metric for evaluation: ``(module or None, info dict)``.

    ``kind``: a net name (its weights must be found: :class:`WeightsNotFound` otherwise), ``"auto"``
    (the first of :data:`AUTO_NETS` found; ``None`` with a status when none is) or ``"none"``.
    ``dirs``: extra weight directories, searched one after the other (empty: the default search).
    """
    if kind == "none":
        return None, {"status": "not computed (--lpips none)"}
    candidates = AUTO_NETS if kind == "auto" else (kind,)
    errors = []
    for name in candidates:
        try:
            lp = _build_first_found(name, dirs)
        except WeightsNotFound as e:
            if kind != "auto":
                raise
            errors.append(f"{name}: {e}")
            continue
        info = {"net": lp.net_name, "label": lp.label, "comparable_to_published": lp.comparable_to_published,
                "stand_in": not lp.comparable_to_published}
        if kind == "auto" and name != candidates[0]:
            missing = ", ".join(candidates[: candidates.index(name)])
            info["note"] = f"auto: the standard LPIPS ({missing}) weights were not found"
        return lp, info
    return None, {"status": "unavailable (no LPIPS weights found)", "searched": errors}
