"""Encoders: each exposes `features(x) -> (N, feature_dim)` and `feature_dim`; tasks add heads."""

from __future__ import annotations

import torch
from torch import nn

from sweeper.config import ModelConfig, ResNetConfig, ViTConfig


def build_encoder(cfg: ModelConfig) -> nn.Module:
    if isinstance(cfg, ViTConfig):
        from sweeper.models.vit import ViT

        return ViT(cfg)
    if isinstance(cfg, ResNetConfig):
        from sweeper.models.resnet import ResNet18

        return ResNet18(cfg.stem)
    raise TypeError(f"unknown model config {cfg!r}")


class Classifier(nn.Module):
    """An encoder with a linear head: images -> logits. Tasks swap heads, never encoders."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.features(x))
