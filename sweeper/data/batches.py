"""Device-resident batches: the whole split is one uint8 tensor; a batch is an index slice.

Augmentation (random crop with 4 pixels of reflect padding, horizontal flip, and what
`augment.py` adds for the strong recipe) and normalisation run on the device, vectorised over
the batch, so no worker processes are needed and the host never touches an image during
training.

Every random draw of an epoch (the order, each image's crop offsets and flip) is made at the
epoch's start, at once, by a CPU generator seeded from (seed, stream, epoch), then copied to
the device in one transfer. So an epoch is the same on every device, a resumed run can start
it at any step without replaying earlier batches, and no step waits on the host.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from sweeper.data.augment import Augmentation, draw, erase, mix, trivial_augment

# CIFAR-10's per-channel training-set statistics.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
PAD = 4

Batch = tuple[torch.Tensor, Optional[torch.Tensor]]


def normaliser(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x * scale - shift == (x / 255 - MEAN) / STD, made once per device."""
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    return 1 / (255 * std), mean / std


def normalise(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 with zero mean and unit variance per channel (two in-place ops)."""
    return x.float().mul_(scale).sub_(shift)


def augment(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop at offsets (dy, dx) of the image padded by PAD (reflect), flipped where `flip`.

    Two `gather`s on uint8: rows, then columns read backwards for flipped images. 2.6x faster
    on a 2-core CPU than advanced indexing plus a separate flip (measured at batch 64).
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (PAD,) * 4, mode="reflect")
    dy, dx, flip = dy.view(n, 1, 1, 1), dx.view(n, 1, 1, 1), flip.view(n, 1, 1, 1)
    rows = (dy + torch.arange(h, device=x.device).view(1, 1, h, 1)).expand(n, c, h, w + 2 * PAD)
    col = torch.arange(w, device=x.device).view(1, 1, 1, w)
    cols = (dx + torch.where(flip, w - 1 - col, col)).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def epoch_seed(seed: int, stream: str, epoch: int) -> int:
    """A 63-bit seed for one epoch of one stream of draws, the same on every machine."""
    digest = hashlib.sha256(f"{seed}:{stream}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of each training batch. A last batch of one image is folded into the one
    before: batch norm cannot train on a single image, and no image is dropped."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


class Batches:
    """Mini-batches of an on-device image tensor: shuffled and augmented per epoch
    (`epoch(e, start)`) for training, or in order (`iter`) for evaluation.

    `labels` may be None: the rotation pretext is fed images only, so its labels never exist.
    """

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor], batch_size: int,
                 seed: int = 0, stream: str = "eval", aug: Augmentation = Augmentation()) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.seed, self.stream, self.aug = batch_size, seed, stream, aug
        self.scale, self.shift = normaliser(images.device)
        self.bounds = batch_bounds(len(images), batch_size)

    def __len__(self) -> int:
        return len(self.bounds)

    @property
    def num_images(self) -> int:
        return len(self.images)

    def _batch(self, idx: torch.Tensor, x: torch.Tensor) -> Batch:
        return normalise(x, self.scale, self.shift), None if self.labels is None else self.labels[idx]

    def __iter__(self) -> Iterator[Batch]:
        """Every image once, in order, unaugmented (evaluation)."""
        n, device = len(self.images), self.images.device
        for start in range(0, n, self.batch_size):
            idx = torch.arange(start, min(start + self.batch_size, n), device=device)
            yield self._batch(idx, self.images[idx])

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Training batches of `epoch` (0-based) from batch `start` on."""
        n, device = len(self.images), self.images.device
        aug = self.aug
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.stream, epoch))
        order = torch.randperm(n, generator=g)
        offsets = torch.randint(0, 2 * PAD + 1, (2, n), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        if aug.augment in ("none", "flip"):  # drawn all the same: every stream stays as it was
            offsets.fill_(PAD)
        if aug.augment == "none":
            flips.fill_(False)
        order, offsets, flips = (t.to(device, non_blocking=True) for t in (order, offsets, flips))
        rng = np.random.default_rng(epoch_seed(self.seed, f"{self.stream}:augment", epoch))
        more = draw(aug, rng, n, len(self.bounds), epoch, device)
        for b, (lo, hi) in enumerate(self.bounds[start:], start=start):
            idx = order[lo:hi]
            x = augment(self.images[idx], offsets[0, lo:hi], offsets[1, lo:hi], flips[lo:hi])
            if more.op is not None:
                x = trivial_augment(x, more.op[lo:hi], more.magnitude[lo:hi], more.sign[lo:hi])
            x, y = self._batch(idx, x)
            if more.erase is not None:
                x = erase(x, more.erase[lo:hi])
            if more.lam is not None and y is not None:
                x, y = mix(x, y, aug.classes, float(more.lam[b]), bool(more.cutmix[b]), more.centre[b])
            yield x, y
