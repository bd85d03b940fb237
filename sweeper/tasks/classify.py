"""Supervised classification on the whole training set (the ViT grid and its baselines)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sweeper.config import Settings
from sweeper.data.batches import Batches
from sweeper.data.sources import ImageSet
from sweeper.models import Classifier
from sweeper.options import TaskOption
from sweeper.records import TASKS, TaskSpec
from sweeper.tasks import Phase, augmentation, require_images


@dataclass
class ClassifyTask(TaskOption):
    """`task=classify`: the ViT grid and its baselines."""

    spec: ClassVar[TaskSpec] = TASKS["classify"]
    name: str = "classify"

    def phases(self, s: Settings, images: ImageSet) -> list[Phase]:
        return phases(s, images)


def phases(s: Settings, images: ImageSet) -> list[Phase]:
    """One phase, "train": the whole training set, evaluated on the test set."""
    require_images(len(images.x_train), "train", "the data source")
    model = Classifier(s.model.build(), len(images.classes))
    return [
        Phase(
            name="train",
            model=model,
            train=Batches(images.x_train, images.y_train, s.batch_size, s.seed, "train",
                          augmentation(s, s.epochs, len(images.classes))),
            test=Batches(images.x_test, images.y_test, s.eval_batch_size),
            epochs=s.epochs,
            val=None if images.x_val is None else Batches(images.x_val, images.y_val,
                                                          s.eval_batch_size),
        )
    ]
