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
    counts = labels.unique(sorted=True, return_counts=True)[1]
    return _split(labels, [round(b_fraction * int(n)) for n in counts], seed)


def stratified_counts(labels: torch.Tensor, total: int) -> list[int]:
    """How many of `total` images each class gives, in proportion to its count, summing to
    exactly `total`: floors first, then one more to the largest remainders (lowest class
    first on ties)."""
    counts = [int(n) for n in labels.unique(sorted=True, return_counts=True)[1]]
    exact = [total * n / len(labels) for n in counts]
    taken = [int(q) for q in exact]
    by_remainder = sorted(range(len(counts)), key=lambda c: (taken[c] - exact[c], c))
    for c in by_remainder[: total - sum(taken)]:
        taken[c] += 1
    return taken


def _split(labels: torch.Tensor, n_b: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class, in label order, shuffled by one generator: its first n_b[c] go to B."""
    g = torch.Generator().manual_seed(seed)
    a_parts, b_parts = [], []
    for c, n in zip(labels.unique(sorted=True), n_b):
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        b_parts.append(members[:n])
        a_parts.append(members[n:])
    return torch.cat(a_parts).sort().values, torch.cat(b_parts).sort().values


def hold_out(images: ImageSet, val_size: int, seed: int) -> ImageSet:
    """The training set less exactly `val_size` images, stratified by class, which become
    `x_val`, `y_val`. Training never sees them; `val_size=0` returns `images` unchanged."""
    if val_size == 0:
        return images
    n = len(images.y_train)
    if val_size > n - 2:
        raise ConfigError(f"data.val_size={val_size} is not allowed: the training set has {n} "
                          f"images and needs at least 2 left to train on")
    labels = images.y_train.cpu()
    keep, val = _split(labels, stratified_counts(labels, val_size), seed)
    keep, val = keep.to(images.y_train.device), val.to(images.y_train.device)
    return replace(images, x_train=images.x_train[keep], y_train=images.y_train[keep],
                   x_val=images.x_train[val], y_val=images.y_train[val])
