"""Pretrained feature networks (torchvision-compatible layouts, no torchvision dependency)."""

from .backbones import (
    BACKBONE_FILENAMES,
    WEIGHTS_DIR_ENV,
    AlexNet,
    Fire,
    SqueezeNet1_1,
    VGG16,
    WeightsNotFound,
    alexnet,
    build_backbone,
    extract_features_state_dict,
    find_weights_file,
    load_backbone_weights,
    squeezenet1_1,
    vgg16,
)

__all__ = [
    "BACKBONE_FILENAMES",
    "WEIGHTS_DIR_ENV",
    "AlexNet",
    "Fire",
    "SqueezeNet1_1",
    "VGG16",
    "WeightsNotFound",
    "alexnet",
    "build_backbone",
    "extract_features_state_dict",
    "find_weights_file",
    "load_backbone_weights",
    "squeezenet1_1",
    "vgg16",
]
