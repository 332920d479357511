"""I3D (Inflated Inception-v1, Carreira & Zisserman 2017) for FVD, own definition.

Module layout and state-dict keys follow the widely used PyTorch port ``pytorch_i3d.InceptionI3d``
(piergiaj/pytorch-i3d), whose Kinetics-400 RGB weights are distributed as
``i3d_pretrained_400.pt`` by the FVD code of VideoGPT, TATS, MAGVIT re-implementations, ...:
``Conv3d_1a_7x7.conv3d.weight``, ``Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var}``,
``Mixed_3b.b0.conv3d.weight``, ``Mixed_3b.b1a...``, ``Mixed_5c.b3b...``, ``logits.conv3d.{weight,bias}``.

Computation (as in that port):

* "same" padding computed from the input size (TensorFlow style, zero padding), for the
  convolutions and the max-pools;
* BatchNorm eps 1e-5; ReLU after every unit except the logits;
* final ``AvgPool3d((2, 7, 7), stride 1)`` then a 1x1x1 conv to 400 logits, averaged over the
  remaining time steps.

Input: clips (B, 3, T, 224, 224) in [-1, 1]; T >= 9 (the temporal pooling needs two steps after
the network's 8x temporal reduction). FVD uses the 400-d logits (:meth:`InceptionI3d.forward`),
as the TF-Hub FVD and VideoGPT do.

Verified offline: key names and shapes against the port's source (tests build a random state
dict with them and run a forward pass). Not verified offline: agreement with published FVD
numbers (the weight file is not on the development machine).
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import WEIGHTS_DIR_ENV, WeightsNotFound, find_weights_file
from .inception import load_state_dict_lenient_bn

__all__ = ["I3D_FILENAMES", "Unit3D", "InceptionModule", "InceptionI3d", "load_i3d", "WeightsNotFound"]

I3D_FILENAMES = ("i3d_pretrained_400.pt",)

_Triple = Sequence[int]


def _same_pad(size: Sequence[int], kernel: _Triple, stride: _Triple) -> tuple[int, ...]:
    """F.pad tuple (w_front, w_back, h_front, h_back, t_front, t_back) for TF "same" padding."""
    pads = []
    for s, k, st in zip(size, kernel, stride):
        p = max(k - st, 0) if s % st == 0 else max(k - s % st, 0)
        pads.append((p // 2, p - p // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return (wf, wb, hf, hb, tf, tb)


def _triple(v) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(int(a) for a in v)  # type: ignore[return-value]


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "same" padding (zeros: inputs are post-ReLU, so zeros never win wrongly)."""

    def __init__(self, kernel_size, stride):
        super().__init__()
        self.kernel_size, self.stride = _triple(kernel_size), _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, _same_pad(x.shape[2:], self.kernel_size, self.stride))
        return F.max_pool3d(x, self.kernel_size, self.stride)


class Unit3D(nn.Module):
    """Conv3d ("same" padding, no bias unless ``use_bias``) + optional BatchNorm3d + optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_shape=(1, 1, 1), stride=(1, 1, 1),
                 activation: bool = True, use_batch_norm: bool = True, use_bias: bool = False):
        super().__init__()
        self.kernel_shape, self.stride = _triple(kernel_shape), _triple(stride)
        self.activation = activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel_shape, self.stride, padding=0, bias=use_bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001) if use_batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(F.pad(x, _same_pad(x.shape[2:], self.kernel_shape, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class InceptionModule(nn.Module):
    """Four branches: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | maxpool 3x3x3 -> 1x1 (keys b0, b1a, b1b, b2a, b2b, b3b)."""

    def __init__(self, in_channels: int, out: Sequence[int]):
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0], 1)
        self.b1a = Unit3D(in_channels, out[1], 1)
        self.b1b = Unit3D(out[1], out[2], 3)
        self.b2a = Unit3D(in_channels, out[3], 1)
        self.b2b = Unit3D(out[3], out[4], 3)
        self.b3a = MaxPool3dSame(3, 1)
        self.b3b = Unit3D(in_channels, out[5], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# (name, kind, args) in network order
_LAYOUT = (
    ("Conv3d_1a_7x7", "unit", (3, 64, 7, 2)),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, 64, 1, 1)),
    ("Conv3d_2c_3x3", "unit", (64, 192, 3, 1)),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (192, (64, 96, 128, 16, 32, 32))),
    ("Mixed_3c", "mixed", (256, (128, 128, 192, 32, 96, 64))),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (480, (192, 96, 208, 16, 48, 64))),
    ("Mixed_4c", "mixed", (512, (160, 112, 224, 24, 64, 64))),
    ("Mixed_4d", "mixed", (512, (128, 128, 256, 24, 64, 64))),
    ("Mixed_4e", "mixed", (512, (112, 144, 288, 32, 64, 64))),
    ("Mixed_4f", "mixed", (528, (256, 160, 320, 32, 128, 128))),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (832, (256, 160, 320, 32, 128, 128))),
    ("Mixed_5c", "mixed", (832, (384, 192, 384, 48, 128, 128))),
)


class InceptionI3d(nn.Module):
    """I3D (RGB stream). ``forward(x)`` -> logits averaged over time (B, num_classes);
    :meth:`features` -> the pooled 1024-d pre-logit features (B, 1024)."""

    FEATURE_DIM = 1024

    def __init__(self, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self._order: list[str] = []
        for name, kind, args in _LAYOUT:
            if kind == "unit":
                cin, cout, k, s = args
                mod: nn.Module = Unit3D(in_channels if name == "Conv3d_1a_7x7" else cin, cout, k, s)
            elif kind == "pool":
                mod = MaxPool3dSame(*args)
            else:
                mod = InceptionModule(*args)
            self.add_module(name, mod)
            self._order.append(name)
        self.avg_pool = nn.AvgPool3d(kernel_size=(2, 7, 7), stride=(1, 1, 1))
        self.logits = Unit3D(1024, num_classes, 1, activation=False, use_batch_norm=False, use_bias=True)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"expected clips (B, 3, T, H, W), got {tuple(x.shape)}")
        T, H, W = x.shape[2:]
        t_out = math.ceil(T / 8)
        if t_out < 2 or math.ceil(H / 32) < 7 or math.ceil(W / 32) < 7:
            raise ValueError(f"I3D needs clips of at least 9 frames at 224x224 (got {T}x{H}x{W})")
        x = x.float()
        for name in self._order:
            x = getattr(self, name)(x)
        return self.avg_pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.logits(self._trunk(x))  # (B, classes, t, h, w)
        return x.mean(dim=(3, 4)).mean(dim=2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x).mean(dim=(2, 3, 4))


def load_i3d(path: str | os.PathLike | None = None, search_dirs: Iterable[str | os.PathLike | None] = ()) -> InceptionI3d:
    """I3D with ``i3d_pretrained_400.pt`` loaded (strict up to BatchNorm counters), in eval mode.

    Search order: ``path`` (file or directory), ``search_dirs``, ``$BSQVIT_WEIGHTS_DIR``, the
    torch-hub cache. Raises :class:`WeightsNotFound` (nothing is downloaded).
    """
    dirs = list(search_dirs)
    if os.environ.get(WEIGHTS_DIR_ENV):
        dirs.append(os.environ[WEIGHTS_DIR_ENV])
    dirs.append(os.path.join(torch.hub.get_dir(), "checkpoints"))
    f = find_weights_file(I3D_FILENAMES, path, dirs, subdirs=("i3d",), what="I3D Kinetics-400 weights")
    sd = torch.load(f, map_location="cpu", weights_only=True)
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    num_classes = int(sd["logits.conv3d.bias"].shape[0]) if "logits.conv3d.bias" in sd else 400
    model = InceptionI3d(num_classes=num_classes)
    load_state_dict_lenient_bn(model, sd, str(f))
    model.requires_grad_(False)
    return model.eval()
