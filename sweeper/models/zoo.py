"""Other libraries' classification networks by name, freshly initialised, as encoders: the
baselines a ViT is compared against. `model=torchvision model.name=resnet50`;
`model=timm model.name=vit_tiny_patch16_224 model.img_size=32` where timm is installed."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from sweeper.errors import ConfigError, not_allowed
from sweeper.models.resnet import cifar_stem
from sweeper.options import ModelOption

RESNETS = ("resnet", "resnext", "wide_resnet")  # the stems `stem=cifar` knows how to adapt


class Backbone(nn.Module):
    """A network whose classifier has been removed: its output is the feature vector."""

    def __init__(self, net: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.net, self.feature_dim = net, feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _drop_last_linear(net: nn.Module, name: str) -> int:
    """Replace the network's last nn.Linear (its classifier: fc, classifier[-1], heads.head)
    by the identity; returns its input width."""
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"model.name={name!r} has no linear classifier to remove: choose a "
                          f"network that ends in a dense layer")
    parent_name, _, attr = linears[-1].rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    width = getattr(parent, attr).in_features
    setattr(parent, attr, nn.Identity())
    return width


@dataclass
class TorchvisionConfig(ModelOption):
    """`model=torchvision model.name=ARCH`: any of torchvision's classification models."""

    name: str = "resnet50"  # torchvision.models.list_models(module=torchvision.models)
    stem: str = "cifar"  # cifar: the ResNet family's 3x3 stride-1 stem, no max-pool | imagenet
    args: dict[str, Any] = field(default_factory=dict)  # more constructor keys (image_size=32)

    def check(self) -> None:
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if self.name not in known:
            raise not_allowed("model.name", self.name,
                              f"a torchvision classification model ({', '.join(known[:6])}, ...)")
        if self.stem not in ("cifar", "imagenet"):
            raise not_allowed("model.stem", self.stem, "cifar or imagenet")
        if self.stem == "cifar" and not self.name.startswith(RESNETS):
            raise not_allowed("model.stem", self.stem,
                              f"imagenet for {self.name} (cifar adapts the ResNet family's stem)")

    def build(self) -> Backbone:
        import torchvision

        try:
            net = torchvision.models.get_model(self.name, weights=None, **self.args)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model.args={self.args!r} is not allowed for {self.name}: "
                              f"{str(err).splitlines()[0]}") from None
        if self.stem == "cifar":
            cifar_stem(net)
        return Backbone(net, _drop_last_linear(net, self.name))


@dataclass
class TimmConfig(ModelOption):
    """`model=timm model.name=ARCH`: any of timm's models (pip install timm)."""

    name: str = "vit_tiny_patch16_224"  # timm.list_models()
    img_size: Optional[int] = 32  # for the models that take it (ViTs); null: the model's own
    args: dict[str, Any] = field(default_factory=dict)  # more timm.create_model keys

    def check(self) -> None:
        if importlib.util.find_spec("timm") is None:
            raise ConfigError("model=timm needs timm, which is not installed: pip install timm")
        import timm

        if not timm.is_model(self.name):
            raise not_allowed("model.name", self.name, "a name of timm.list_models()")

    def build(self) -> Backbone:
        import timm

        extra = {"img_size": self.img_size} if self.img_size is not None else {}
        try:
            net = timm.create_model(self.name, pretrained=False, num_classes=0,
                                    **extra, **self.args)
        except (TypeError, ValueError, AssertionError) as err:
            raise ConfigError(f"model={self.name} cannot be built with "
                              f"{ {**extra, **self.args} }: {str(err).splitlines()[0]}") from None
        return Backbone(net, net.num_features)
