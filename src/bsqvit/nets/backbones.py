"""Feature networks with exactly torchvision's module layout (and therefore state-dict keys).

These are this project's own definitions of ``torchvision.models.vgg16``, ``alexnet`` and
``squeezenet1_1``, so that the standard ImageNet weight files (the ones torchvision downloads into
the torch-hub cache) load with ``strict=True`` without depending on torchvision. Only the
``features`` part is needed by the perceptual metrics; the classifier head can be built on request
(``with_classifier=True``) so that a full torchvision state dict also loads strictly.

Weights are never downloaded. :func:`load_backbone_weights` looks for the file in an explicit
path, in optional extra directories, and in the torch-hub cache (``torch.hub.get_dir()/checkpoints``,
i.e. ``$TORCH_HOME/hub/checkpoints``) under torchvision's standard file names, and raises
:class:`WeightsNotFound` naming the file and every place searched when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

__all__ = [
    "Fire",
    "VGG16",
    "AlexNet",
    "SqueezeNet1_1",
    "vgg16",
    "alexnet",
    "squeezenet1_1",
    "build_backbone",
    "WeightsNotFound",
    "BACKBONE_FILENAMES",
    "WEIGHTS_DIR_ENV",
    "find_weights_file",
    "load_backbone_weights",
    "extract_features_state_dict",
]

#: Environment variable naming an extra directory searched for weight files.
WEIGHTS_DIR_ENV = "BSQVIT_WEIGHTS_DIR"

#: torchvision's file names in the torch-hub cache (first = current torchvision name; the others
#: are older names of the same ImageNet weights that torchvision used to download).
BACKBONE_FILENAMES: dict[str, tuple[str, ...]] = {
    "vgg16": ("vgg16-397923af.pth",),
    "alexnet": ("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth"),
    "squeezenet1_1": ("squeezenet1_1-b8a52dc0.pth", "squeezenet1_1-f364aa15.pth"),
    # Caffe SqueezeNet v1.1 (ImageNet) converted to torchvision's features layout; not torchvision's.
    "squeezenet1_1_caffe": ("squeezenet1_1_features.pth",),
}

# sub-folders of a weights directory where a file may also live (as in the project's shared dir)
_SUBDIRS: dict[str, tuple[str, ...]] = {"squeezenet1_1_caffe": ("squeezenet1_1_caffe",)}


class WeightsNotFound(FileNotFoundError):
    """A required pretrained weight file is not available locally (nothing is ever downloaded)."""


# ---- architectures --------------------------------------------------------------------------------
class Fire(nn.Module):
    """SqueezeNet Fire module (same attribute names as torchvision)."""

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int):
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


_VGG16_CFG: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg_features(cfg: Sequence) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = int(v)
    return nn.Sequential(*layers)


class _Backbone(nn.Module):
    """``features`` (+ optional ``avgpool``/``classifier``) like the torchvision model."""

    features: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if getattr(self, "classifier", None) is None:
            return x
        x = self.avgpool(x)
        if isinstance(self, SqueezeNet1_1):
            return torch.flatten(self.classifier(x), 1)
        return self.classifier(torch.flatten(x, 1))


class VGG16(_Backbone):
    """torchvision ``vgg16`` (configuration D, no batch norm). ``features.0`` ... ``features.30``."""

    def __init__(self, with_classifier: bool = False, num_classes: int = 1000):
        super().__init__()
        self.features = _vgg_features(_VGG16_CFG)
        self.classifier = None
        if with_classifier:
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5),
                nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5),
                nn.Linear(4096, num_classes),
            )


class AlexNet(_Backbone):
    """torchvision ``alexnet`` (the "one weird trick" variant). ``features.0`` ... ``features.12``."""

    def __init__(self, with_classifier: bool = False, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.classifier = None
        if with_classifier:
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
                nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
                nn.Linear(4096, num_classes),
            )


class SqueezeNet1_1(_Backbone):
    """torchvision ``squeezenet1_1``. ``features.0`` (conv) and Fire modules at 3, 4, 6, 7, 9-12."""

    def __init__(self, with_classifier: bool = False, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
        )
        self.classifier = None
        if with_classifier:
            self.avgpool = nn.Identity()
            self.classifier = nn.Sequential(
                nn.Dropout(0.5), nn.Conv2d(512, num_classes, kernel_size=1), nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d((1, 1)),
            )


def vgg16(with_classifier: bool = False, num_classes: int = 1000) -> VGG16:
    return VGG16(with_classifier, num_classes)


def alexnet(with_classifier: bool = False, num_classes: int = 1000) -> AlexNet:
    return AlexNet(with_classifier, num_classes)


def squeezenet1_1(with_classifier: bool = False, num_classes: int = 1000) -> SqueezeNet1_1:
    return SqueezeNet1_1(with_classifier, num_classes)


_CONSTRUCTORS = {
    "vgg16": vgg16,
    "alexnet": alexnet,
    "squeezenet1_1": squeezenet1_1,
    "squeezenet1_1_caffe": squeezenet1_1,
}


# ---- weight files ---------------------------------------------------------------------------------
def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights_file(
    filenames: Sequence[str],
    path: str | os.PathLike | None = None,
    search_dirs: Iterable[str | os.PathLike | None] = (),
    subdirs: Sequence[str] = (),
    what: str = "weights",
) -> Path:
    """Return the first existing file; raise :class:`WeightsNotFound` listing what was searched.

    ``path`` may be a file (used as is; it must exist) or a directory (searched like the others).
    Each directory ``d`` is searched as ``d/<name>`` and ``d/<sub>/<name>`` for ``sub`` in ``subdirs``.
    """
    dirs: list[Path] = []
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        if not p.is_dir():
            raise WeightsNotFound(f"{what}: file {str(p)!r} does not exist (expected e.g. {filenames[0]!r}).")
        dirs.append(p)
    dirs += [Path(d).expanduser() for d in search_dirs if d]
    searched: list[str] = []
    for d in dirs:
        for sub in ("", *subdirs):
            base = d / sub if sub else d
            if str(base) in searched:
                continue
            searched.append(str(base))
            for name in filenames:
                if (base / name).is_file():
                    return base / name
    raise WeightsNotFound(
        f"{what}: none of {list(filenames)} was found (nothing is downloaded). Searched: "
        + (", ".join(searched) if searched else "<no directory>")
        + f". Put the file into one of these directories, set ${WEIGHTS_DIR_ENV}, or pass an explicit path."
    )


def _default_dirs(name: str, extra: Iterable[str | os.PathLike | None] = ()) -> list:
    dirs = list(extra)
    if os.environ.get(WEIGHTS_DIR_ENV):
        dirs.append(os.environ[WEIGHTS_DIR_ENV])
    dirs.append(_hub_checkpoint_dir())
    return dirs


def extract_features_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a full torchvision state dict (``features.N...``), a features-only dict (``N...``),
    optionally wrapped in ``{"state_dict": ...}`` / prefixed by ``module.``; return features-only keys."""
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    out: dict[str, torch.Tensor] = {}
    has_features = any(k.removeprefix("module.").startswith("features.") for k in sd)
    for k, v in sd.items():
        k = k.removeprefix("module.")
        if has_features:
            if k.startswith("features."):
                out[k[len("features."):]] = v
        else:
            out[k] = v
    if not out:
        raise ValueError("state dict holds no feature-network tensors")
    return out


def load_backbone_weights(
    name: str,
    path: str | os.PathLike | None = None,
    search_dirs: Iterable[str | os.PathLike | None] = (),
) -> dict[str, torch.Tensor]:
    """Find and load the ImageNet weights of backbone ``name``; return the ``features`` state dict.

    ``name`` is ``vgg16``, ``alexnet``, ``squeezenet1_1`` (torchvision weights) or
    ``squeezenet1_1_caffe`` (the Caffe SqueezeNet v1.1 stand-in). Search order: ``path`` (a file or
    a directory), ``search_dirs``, ``$BSQVIT_WEIGHTS_DIR``, ``torch.hub.get_dir()/checkpoints``.
    Loaded with ``torch.load(weights_only=True, map_location="cpu")``. Keys are relative to
    ``features`` (``"0.weight"``, ...), ready for ``model.features.load_state_dict(..., strict=True)``.
    """
    if name not in BACKBONE_FILENAMES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONE_FILENAMES)}")
    f = find_weights_file(
        BACKBONE_FILENAMES[name], path, _default_dirs(name, search_dirs), _SUBDIRS.get(name, ()),
        what=f"{name} ImageNet weights",
    )
    sd = torch.load(f, map_location="cpu", weights_only=True)
    return extract_features_state_dict(sd)


def build_backbone(
    name: str,
    path: str | os.PathLike | None = None,
    search_dirs: Iterable[str | os.PathLike | None] = (),
    pretrained: bool = True,
) -> nn.Module:
    """The backbone model (features only) with its ImageNet weights loaded strictly."""
    if name not in _CONSTRUCTORS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(_CONSTRUCTORS)}")
    if not pretrained:
        return _CONSTRUCTORS[name]()
    sd = load_backbone_weights(name, path, search_dirs)
    with torch.device("meta"):  # skip the random initialisation, the weights are loaded right after
        model = _CONSTRUCTORS[name]()
    model.features.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    return model
