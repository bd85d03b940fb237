"""The stratified, deterministic A/B split of the training set (part A of the assignment)."""

from __future__ import annotations

import torch


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
