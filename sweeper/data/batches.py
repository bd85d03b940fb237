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


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32, zero mean and unit variance per channel."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (reflect padding of PAD) and horizontal flip, one draw per image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (PAD,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * PAD + 1, (2, n, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


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
            yield normalise(x), None if self.labels is None else self.labels[idx]
