"""Tasks say what a batch is, what is trained and what is logged, as a list of `Phase`s.

The train loop runs the phases in order; it knows nothing of rotations or fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from sweeper.config import (
    ClassifyTask,
    FinetuneTask,
    RotationTask,
    ScratchTask,
    Settings,
)
from sweeper.data.sources import ImageSet

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Phase:
    name: str  # the `phase` column of metrics.csv
    model: nn.Module  # images -> logits
    train: Iterable[Batch]
    test: Iterable[Batch]
    epochs: int
    generator: torch.Generator  # the one source of randomness in `train`: saved with checkpoints
    frozen: Optional[nn.Module] = None  # no gradients, eval mode, in this phase (linear probe)
    on_end: Optional[Callable[[Path], None]] = None  # called with the run dir when it completes
    meta: dict = field(default_factory=dict)  # extra summary fields, e.g. which encoder was loaded


def build_phases(s: Settings, images: ImageSet, generator: torch.Generator) -> list[Phase]:
    """`images` already live on the training device."""
    from sweeper.tasks import classify, rotation

    if isinstance(s.task, ClassifyTask):
        return classify.phases(s, images, generator)
    if isinstance(s.task, RotationTask):
        return rotation.pretrain_then_finetune(s, images, generator)
    if isinstance(s.task, FinetuneTask):
        return rotation.finetune_saved(s, images, generator)
    if isinstance(s.task, ScratchTask):
        return rotation.scratch_on_b(s, images, generator)
    raise TypeError(f"unknown task {s.task!r}")
