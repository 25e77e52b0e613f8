"""Model registry: `build_model(arch, ...)` by the names params.yaml accepts."""

from __future__ import annotations

from torch import nn

from structlth.models.cifar_resnet import CifarResNet
from structlth.models.mobilenet import MobileNetV1
from structlth.models.vgg import VGG


def _torchvision_resnet(arch: str, num_classes: int, in_channels: int, width: float, small: bool) -> nn.Module:
    import torchvision.models  # here, not at import: torchvision costs every stage a second and a half

    if width != 1.0:
        raise ValueError("torchvision ResNets support width 1.0 only")
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if small:  # CIFAR-style stem: 3x3 stride 1, no max-pool
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


def build_model(arch: str, num_classes: int, in_channels: int = 3, width: float = 1.0, small_input_stem: bool = True) -> nn.Module:
    """A freshly initialised model (seed torch first for a deterministic init)."""
    if arch in ("resnet20", "resnet32", "resnet56"):
        return CifarResNet(int(arch[6:]), num_classes, in_channels, width)
    if arch == "wrn32_2":
        return CifarResNet(32, num_classes, in_channels, 2.0 * width)
    if arch == "vgg16":
        return VGG(num_classes, in_channels, width)
    if arch == "mobilenet_v1":
        return MobileNetV1(num_classes, in_channels, width)
    if arch in ("resnet18", "resnet50"):
        return _torchvision_resnet(arch, num_classes, in_channels, width, small_input_stem)
    raise ValueError(f"unknown arch {arch!r}")
