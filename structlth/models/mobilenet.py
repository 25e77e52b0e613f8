"""MobileNet-v1 for small images (Howard et al. 2017): depthwise 3x3 + pointwise 1x1 blocks.

[B, C, H, W] -> [B, classes]. Strides follow the CIFAR variant (stem stride 1).
"""

from __future__ import annotations

import torch
from torch import nn

# (out_channels, stride) per depthwise-separable block
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


def _conv_bn(c_in: int, c_out: int, k: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c = max(1, round(32 * width))
        layers = _conv_bn(in_channels, c, 3, 1)
        for c_out, stride in BLOCKS:
            c_out = max(1, round(c_out * width))
            layers += _conv_bn(c, c, 3, stride, groups=c) + _conv_bn(c, c_out, 1, 1)
            c = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))
