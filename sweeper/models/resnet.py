"""torchvision's ResNet-18 (freshly initialised) as an encoder, with a choice of stem."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18


class ResNet18(nn.Module):
    """`stem="cifar"`: a 3x3 stride-1 first conv and no max-pool, so 32x32 images keep their
    detail (the ImageNet stem cuts them to 8x8 before the first block). The ImageNet
    classifier is removed: the task puts its own 4- or 10-way head on the 512 features."""

    feature_dim = 512

    def __init__(self, stem: str = "cifar") -> None:
        super().__init__()
        self.net = resnet18(weights=None)
        if stem == "cifar":
            self.net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.net.maxpool = nn.Identity()
        self.net.fc = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
