"""Stratified, deterministic splits of the training set: the validation images a search is
judged on, and A/B of part A of the assignment (made from what validation leaves)."""

from __future__ import annotations

from dataclasses import replace

import torch

from sweeper.config import ConfigError
from sweeper.data.sources import ImageSet


def stratified_split(
    labels: torch.Tensor, b_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of A and B: each class gives round(b_fraction * its count) images to B.

    Disjoint, covering every index, and the same for the same labels and seed.
    """
    g = torch.Generator().manual_seed(seed)
    a_parts, b_parts = [], []
    for c in labels.unique(sorted=True):
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        n_b = round(b_fraction * len(members))
        b_parts.append(members[:n_b])
        a_parts.append(members[n_b:])
    return torch.cat(a_parts).sort().values, torch.cat(b_parts).sort().values


def hold_out(images: ImageSet, val_size: int, seed: int) -> ImageSet:
    """The training set less `val_size` images, stratified by class, which become `x_val`,
    `y_val`. Training never sees them; `val_size=0` returns `images` unchanged."""
    if val_size == 0:
        return images
    n = len(images.y_train)
    if val_size > n - 2:
        raise ConfigError(f"data.val_size={val_size} is not allowed: the training set has {n} "
                          f"images and needs at least 2 left to train on")
    keep, val = stratified_split(images.y_train.cpu(), val_size / n, seed)
    keep, val = keep.to(images.y_train.device), val.to(images.y_train.device)
    return replace(images, x_train=images.x_train[keep], y_train=images.y_train[keep],
                   x_val=images.x_train[val], y_val=images.y_train[val])
