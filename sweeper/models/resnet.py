"""torchvision's ResNet-18 (freshly initialised) as an encoder, with a choice of stem."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import resnet18

from sweeper.errors import not_allowed
from sweeper.options import ModelOption

STEMS = ("cifar", "imagenet")


@dataclass
class ResNetConfig(ModelOption):
    """`model=resnet18`."""

    name: str = "resnet18"
    stem: str = "cifar"  # cifar (3x3 stride-1 conv, no max-pool) | imagenet (torchvision's own)

    def check(self) -> None:
        if self.stem not in STEMS:
            raise not_allowed("model.stem", self.stem, " or ".join(STEMS))

    def build(self) -> "ResNet18":
        return ResNet18(self.stem)


def cifar_stem(net: nn.Module) -> None:
    """A 3x3 stride-1 first conv and no max-pool, so 32x32 images keep their detail (the
    ImageNet stem cuts them to 8x8 before the first block)."""
    first = net.conv1
    net.conv1 = nn.Conv2d(first.in_channels, first.out_channels, kernel_size=3, stride=1,
                          padding=1, bias=False)
    net.maxpool = nn.Identity()


class ResNet18(nn.Module):
    """`stem="cifar"`: see `cifar_stem`. The ImageNet classifier is removed: the task puts its
    own 4- or 10-way head on the 512 features."""

    feature_dim = 512

    def __init__(self, stem: str = "cifar") -> None:
        super().__init__()
        self.net = resnet18(weights=None)
        if stem == "cifar":
            cifar_stem(self.net)
        self.net.fc = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
