"""Tasks say what a batch is, what is trained and what is logged, as a list of `Phase`s.

A task option (sweeper.options.TaskOption) builds its phases from these parts; the train loop
runs them in order and knows nothing of rotations or fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Protocol

import torch
from torch import nn

from sweeper.config import Settings
from sweeper.errors import ConfigError
from sweeper.data.augment import Augmentation

Batch = tuple[torch.Tensor, torch.Tensor]


class TrainFeed(Protocol):
    """What a phase trains on: `len()` batches per epoch, any epoch startable at any batch."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]: ...


@dataclass
class Phase:
    name: str  # the `phase` column of metrics.csv
    model: nn.Module  # images -> logits
    train: TrainFeed
    test: Iterable[Batch]
    epochs: int
    val: Optional[Iterable[Batch]] = None  # the held-out validation images, when there are some
    frozen: Optional[nn.Module] = None  # no gradients, eval mode, in this phase (linear probe)
    # Flip TTA: the class of an image's mirror image, per class (None: its own class).
    mirror_classes: Optional[list[int]] = None
    on_end: Optional[Callable[[Path], None]] = None  # called with the run dir when it completes
    meta: dict = field(default_factory=dict)  # extra summary fields, e.g. which encoder was loaded


def augmentation(s: Settings, epochs: int, classes: int = 0) -> Augmentation:
    """The recipe's augmentation for a training feed of `epochs` epochs; Mixup/CutMix only
    where the feed has labels of `classes` classes."""
    return Augmentation(s.augment, s.erasing, s.mixup_alpha, s.cutmix_alpha,
                        round(s.mix_until * epochs), classes)


def require_images(n: int, split: str, keys: str) -> None:
    """A training split needs two images at least (batch norm trains on no fewer)."""
    if n < 2:
        raise ConfigError(f"split {split} has {n} training image(s), too few to train on: "
                          f"give it at least 2 (change {keys})")
