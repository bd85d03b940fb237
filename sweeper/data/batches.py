"""Device-resident batches: the whole split is one uint8 tensor; a batch is an index slice.

Augmentation (random crop with 4 pixels of reflect padding, horizontal flip) and
normalisation run on the device, vectorised over the batch, so no worker processes are
needed and the host never touches an image during training.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F

# CIFAR-10's per-channel training-set statistics.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
PAD = 4


def normaliser(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x * scale - shift == (x / 255 - MEAN) / STD, made once per device."""
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    return 1 / (255 * std), mean / std


def normalise(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 with zero mean and unit variance per channel (two in-place ops)."""
    return x.float().mul_(scale).sub_(shift)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (reflect padding of PAD) and horizontal flip, one draw per image.

    Two `gather`s on uint8: rows, then columns read backwards for flipped images. 2.6x faster
    on a 2-core CPU than advanced indexing plus a separate flip (measured at batch 64).
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (PAD,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * PAD + 1, (2, n, 1, 1, 1), device=x.device, generator=generator)
    flip = torch.rand(n, 1, 1, 1, device=x.device, generator=generator) < 0.5
    rows = (dy + torch.arange(h, device=x.device).view(1, 1, h, 1)).expand(n, c, h, w + 2 * PAD)
    col = torch.arange(w, device=x.device).view(1, 1, 1, w)
    cols = (dx + torch.where(flip, w - 1 - col, col)).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


class Batches:
    """Shuffled (or ordered) mini-batches of an on-device image tensor.

    `labels` may be None: the rotation pretext is fed images only, so its labels never exist.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: Optional[torch.Tensor],
        batch_size: int,
        train: bool,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        if train and generator is None:
            raise ValueError("training batches need a generator for shuffling and augmentation")
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.generator = batch_size, train, generator
        self.scale, self.shift = normaliser(images.device)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        n, device = len(self.images), self.images.device
        order = (
            torch.randperm(n, device=device, generator=self.generator)
            if self.train
            else torch.arange(n, device=device)
        )
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx]
            if self.train:
                x = augment(x, self.generator)
            yield normalise(x, self.scale, self.shift), None if self.labels is None else self.labels[idx]
