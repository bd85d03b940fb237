"""Part A: the rotation pretext on split A, then fine-tuning on split B; and its baselines.

Pre-training is fed split A's images only: its batches are built without labels, and each
image appears in all four rotations (0, 90, 180, 270 degrees -> labels 0..3), made on the
device with `torch.rot90` after the usual crop and flip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Optional

import torch
from torch import nn

from sweeper.checkpoint import atomic_save
from sweeper.config import Settings
from sweeper.data.batches import Batches
from sweeper.data.sources import ImageSet
from sweeper.data.split import stratified_split
from sweeper.errors import ConfigError, not_allowed
from sweeper.models import Classifier
from sweeper.options import TaskOption
from sweeper.records import TASKS, TaskSpec
from sweeper.tasks import Batch, Phase, augmentation, require_images

ROTATIONS = 4
ENCODER_FILE = "encoder.pt"


@dataclass
class RotationTask(TaskOption):
    """`task=rotation_pretrain`: the pretext on A, then fine-tuning on B; with
    `freeze_encoder` (`task=rotation_probe`) only the new 10-way head trains on B."""

    spec: ClassVar[TaskSpec] = TASKS["rotation_pretrain"]
    name: str = "rotation_pretrain"
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        self.name = "rotation_probe" if self.freeze_encoder else "rotation_pretrain"

    def phases(self, s: Settings, images: ImageSet) -> list[Phase]:
        return pretrain_then_finetune(s, images)


@dataclass
class FinetuneTask(TaskOption):
    """`task=finetune task.encoder=PATH`: a saved encoder fine-tuned (or probed) on B."""

    spec: ClassVar[TaskSpec] = TASKS["finetune"]
    name: str = "finetune"
    encoder: Optional[str] = None
    freeze_encoder: bool = False

    def check(self) -> None:
        if not self.encoder:
            raise not_allowed("task.encoder", self.encoder, "the path of a saved encoder.pt")
        if not Path(self.encoder).expanduser().is_file():
            raise not_allowed("task.encoder", self.encoder, "an existing encoder.pt file")

    def phases(self, s: Settings, images: ImageSet) -> list[Phase]:
        return finetune_saved(s, images)


@dataclass
class ScratchTask(TaskOption):
    """`task=scratch`: the same network trained on B only, the baseline for fine-tuning."""

    spec: ClassVar[TaskSpec] = TASKS["scratch"]
    name: str = "scratch"

    def phases(self, s: Settings, images: ImageSet) -> list[Phase]:
        return scratch_on_b(s, images)


# The rotation a rotated image's mirror image shows: mirrored, k * 90 degrees is (4 - k) * 90.
MIRRORED_ROTATION = [0, 3, 2, 1]


def rotate4(x: torch.Tensor) -> Batch:
    """Every image in all four rotations; label k means rotated by k * 90 degrees."""
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(len(x))
    return rotated, labels


class Rotated:
    """Wraps unlabelled batches into rotation-pretext batches (4x the images)."""

    def __init__(self, batches: Batches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        for x, _ in self.batches:
            yield rotate4(x)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        for x, _ in self.batches.epoch(epoch, start):
            yield rotate4(x)


SPLIT_KEYS = "data.b_fraction, or the number of training images"


def split_a_b(s: Settings, images: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of A and B in the training set, on its device."""
    a, b = stratified_split(images.y_train.cpu(), s.data.b_fraction, s.data.split_seed)
    return a.to(images.x_train.device), b.to(images.x_train.device)


def pretrain_then_finetune(s: Settings, images: ImageSet) -> list[Phase]:
    task: RotationTask = s.task
    a, b = split_a_b(s, images)
    require_images(len(a), "A", SPLIT_KEYS)
    encoder = s.model.build()
    per_batch = max(1, s.batch_size // ROTATIONS)  # a step still sees batch_size examples
    eval_batch = max(1, s.eval_batch_size // ROTATIONS)
    pretrain = Phase(
        name="pretrain",
        model=Classifier(encoder, ROTATIONS),
        train=Rotated(Batches(images.x_train[a], None, per_batch, s.seed, "pretrain",  # no labels
                              augmentation(s, s.pretrain_epochs))),
        test=Rotated(Batches(images.x_test, None, eval_batch)),
        epochs=s.pretrain_epochs,
        val=None if images.x_val is None else Rotated(Batches(images.x_val, None, eval_batch)),
        on_end=lambda run_dir: save_encoder(encoder, s, run_dir / ENCODER_FILE),
        mirror_classes=MIRRORED_ROTATION,
    )
    finetune = _on_b(s, images, b, encoder, "finetune", task.freeze_encoder)
    return [pretrain, finetune]


def finetune_saved(s: Settings, images: ImageSet) -> list[Phase]:
    task: FinetuneTask = s.task
    encoder = s.model.build()
    load_encoder(encoder, task.encoder)
    _, b = split_a_b(s, images)
    phase = _on_b(s, images, b, encoder, "finetune", task.freeze_encoder)
    phase.meta["encoder"] = str(Path(task.encoder).expanduser().resolve())
    return [phase]


def scratch_on_b(s: Settings, images: ImageSet) -> list[Phase]:
    """The baseline that says what pre-training bought: the same network, B only, no pretext."""
    encoder = s.model.build()
    _, b = split_a_b(s, images)
    return [_on_b(s, images, b, encoder, "train", False)]


def _on_b(s: Settings, images: ImageSet, b: torch.Tensor, encoder: nn.Module, name: str,
          freeze: bool) -> Phase:
    """Training on B for `epochs`, evaluated on the test set: fine-tuning, probe or scratch."""
    require_images(len(b), "B", SPLIT_KEYS)
    return Phase(
        name=name,
        model=Classifier(encoder, len(images.classes)),
        train=Batches(images.x_train[b], images.y_train[b], s.batch_size, s.seed, name,
                      augmentation(s, s.epochs, len(images.classes))),
        test=Batches(images.x_test, images.y_test, s.eval_batch_size),
        epochs=s.epochs,
        val=None if images.x_val is None else Batches(images.x_val, images.y_val, s.eval_batch_size),
        frozen=encoder if freeze else None,
    )


def save_encoder(encoder: nn.Module, s: Settings, path: Path) -> None:
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    atomic_save({"model": s.model.name, "state": state}, path)


def load_encoder(encoder: nn.Module, path: str) -> None:
    try:
        blob = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
        encoder.load_state_dict(blob["state"])
    except Exception as err:
        raise ConfigError(
            f"task.encoder={path!r} cannot be loaded into this model ({type(err).__name__}): "
            f"give an encoder.pt saved by task=rotation_pretrain with the same model"
        ) from err
