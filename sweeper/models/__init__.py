"""Encoders (sweeper.options.Encoder): `features(x) -> (N, feature_dim)`; tasks add heads."""

from __future__ import annotations

import torch
from torch import nn

from sweeper.options import Encoder


class Classifier(nn.Module):
    """An encoder with a linear head: images -> logits. Tasks swap heads, never encoders."""

    def __init__(self, encoder: Encoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.features(x))
