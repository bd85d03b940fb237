"""What a training feed does to its images beyond crop and flip, vectorised over the batch.

- `trivial_augment`: one op per image, drawn uniformly with a uniform magnitude, as
  TrivialAugment does (Müller & Hutter, 2021): identity, brightness, colour, contrast,
  sharpness, posterize, solarize, autocontrast, rotate, shear and translate (equalize, whose
  per-image histogram does not vectorise, is left out). Colour ops are computed for the whole
  batch and selected per image; the geometric ones are one `grid_sample` with a matrix per image.
- `erase`: random erasing (Zhong et al., 2017) of one box per chosen image, filled with the
  mean colour (zero after normalisation).
- `mix`: Mixup or CutMix of a batch with itself reversed, the labels mixed in the same ratio.

Every draw is made by the feed at the epoch's start from the epoch's own seed (`Draws`), so a
resumed run sees the same images and nothing here waits on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

OPS = ("identity", "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
       "autocontrast", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")
GEOMETRIC = OPS.index("rotate")  # ops from here on move pixels
MAX_FACTOR = 0.9  # colour ops: factor 1 ± 0.9 m (TrivialAugment's 0.1..1.9)
MAX_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_SHIFT = 10 / 32  # of the image side, as 10 of 32 pixels
FILL = 128.0  # what geometric ops bring in at the borders (grey), as torchvision's default
ERASE_AREA = (0.02, 1 / 3)
ERASE_RATIO = (0.3, 3.3)


@dataclass(frozen=True)
class Augmentation:
    """A training feed's augmentation: `augment` (none | flip | crop_flip | strong), the
    probability of random erasing, and Mixup/CutMix (Beta alphas; 0 is off) in epochs before
    `mix_epochs`, for feeds with labels of `classes` classes."""

    augment: str = "crop_flip"
    erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_epochs: int = 0
    classes: int = 0

    def mixes(self, epoch: int) -> bool:
        return epoch < self.mix_epochs and self.classes > 0 and (self.mixup_alpha > 0
                                                                 or self.cutmix_alpha > 0)


@dataclass
class Draws:
    """One epoch's draws beyond order, crop and flip: per image (op, magnitude, sign, erasing
    box) on the device, per batch (mixing ratio, CutMix or Mixup, box centre) on the host."""

    op: Optional[torch.Tensor] = None
    magnitude: Optional[torch.Tensor] = None
    sign: Optional[torch.Tensor] = None
    erase: Optional[torch.Tensor] = None  # (n, 5): on, top, left, height, width as fractions
    lam: Optional[np.ndarray] = None
    cutmix: Optional[np.ndarray] = None
    centre: Optional[np.ndarray] = None


def draw(aug: Augmentation, rng: np.random.Generator, n: int, batches: int, epoch: int,
         device: torch.device) -> Draws:
    d = Draws()
    if aug.augment == "strong":
        d.op = torch.from_numpy(rng.integers(0, len(OPS), n)).to(device)
        d.magnitude = torch.from_numpy(rng.random(n, dtype=np.float32)).to(device)
        d.sign = torch.from_numpy(rng.choice(np.array([-1.0, 1.0], np.float32), n)).to(device)
    if aug.erasing > 0:
        area = rng.uniform(*ERASE_AREA, n)
        ratio = np.exp(rng.uniform(*np.log(ERASE_RATIO), n))
        h, w = np.minimum(1, np.sqrt(area * ratio)), np.minimum(1, np.sqrt(area / ratio))
        top, left = rng.random(n) * (1 - h), rng.random(n) * (1 - w)
        on = rng.random(n) < aug.erasing
        d.erase = torch.from_numpy(np.stack([on, top, left, h, w], 1).astype(np.float32)).to(device)
    if aug.mixes(epoch):
        both = aug.mixup_alpha > 0 and aug.cutmix_alpha > 0
        d.cutmix = rng.random(batches) < 0.5 if both else np.full(batches, aug.cutmix_alpha > 0)
        alpha = np.where(d.cutmix, aug.cutmix_alpha, aug.mixup_alpha)
        d.lam = rng.beta(np.maximum(alpha, 1e-6), np.maximum(alpha, 1e-6))
        d.centre = rng.random((batches, 2))
    return d


def trivial_augment(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor,
                    sign: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [0, 255]: image i through op[i] at magnitude[i] in [0, 1]."""
    n = len(x)
    x = x.float()
    m, s = magnitude.view(n, 1, 1, 1), sign.view(n, 1, 1, 1)
    factor = 1 + s * MAX_FACTOR * m
    gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    # PIL's smoothing kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13: the 3x3 box sum plus 4x the
    # centre, made on the device (no kernel copied to it each batch)
    blurred = (9 * F.avg_pool2d(x, 3, stride=1, padding=1) + 4 * x) / 13
    blurred[:, :, [0, -1]], blurred[:, :, :, [0, -1]] = x[:, :, [0, -1]], x[:, :, :, [0, -1]]
    step = torch.exp2(torch.round(m * 4))  # posterize: keep 8 - round(4 m) bits
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    colour = [
        x,
        x * factor,
        gray + factor * (x - gray),
        gray.mean(dim=(1, 2, 3), keepdim=True) + factor * (x - gray.mean(dim=(1, 2, 3), keepdim=True)),
        blurred + factor * (x - blurred),
        torch.floor(x / step) * step,
        torch.where(x >= 255 * (1 - m), 255 - x, x),
        torch.where(hi > lo, (x - lo) * 255 / (hi - lo).clamp(min=1), x),
    ]
    out = colour[0]
    for k, result in enumerate(colour[1:], start=1):
        out = torch.where((op == k).view(n, 1, 1, 1), result, out)
    moved = _geometric(x, op, magnitude * sign)
    out = torch.where((op >= GEOMETRIC).view(n, 1, 1, 1), moved, out)
    return out.clamp_(0, 255)


def _geometric(x: torch.Tensor, op: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Rotate, shear or translate each image by its signed amount (identity for other ops)."""
    n = len(x)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    angle = amount * math.radians(MAX_DEGREES)
    rotate = op == OPS.index("rotate")
    theta[:, 0, 0] = torch.where(rotate, torch.cos(angle), theta[:, 0, 0])
    theta[:, 1, 1] = torch.where(rotate, torch.cos(angle), theta[:, 1, 1])
    theta[:, 0, 1] = torch.where(rotate, -torch.sin(angle), 0.0)
    theta[:, 1, 0] = torch.where(rotate, torch.sin(angle), 0.0)
    theta[:, 0, 1] += torch.where(op == OPS.index("shear_x"), amount * MAX_SHEAR, 0.0)
    theta[:, 1, 0] += torch.where(op == OPS.index("shear_y"), amount * MAX_SHEAR, 0.0)
    theta[:, 0, 2] = torch.where(op == OPS.index("translate_x"), amount * 2 * MAX_SHIFT, 0.0)
    theta[:, 1, 2] = torch.where(op == OPS.index("translate_y"), amount * 2 * MAX_SHIFT, 0.0)
    grid = F.affine_grid(theta, [n, 4, *x.shape[2:]], align_corners=False)
    sampled = F.grid_sample(torch.cat([x, torch.ones_like(x[:, :1])], 1), grid,
                            align_corners=False)
    return sampled[:, :3] + (1 - sampled[:, 3:]) * FILL


def erase(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Zero (the mean colour, after normalisation) one box per image where box[:, 0] is set."""
    n, _, h, w = x.shape
    on, top, left, bh, bw = (box[:, i].view(n, 1, 1) for i in range(5))
    rows = torch.arange(h, device=x.device).view(1, h, 1) / h
    cols = torch.arange(w, device=x.device).view(1, 1, w) / w
    inside = (on > 0) & (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def mix(x: torch.Tensor, y: torch.Tensor, classes: int, lam: float, cutmix: bool,
        centre: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch mixed with itself reversed: Mixup (weights lam, 1 - lam) or CutMix (a box of
    area 1 - lam pasted in, lam corrected to the box that fits); labels as class probabilities."""
    target = F.one_hot(y, classes).float()
    partner = x.flip(0)
    if cutmix:
        h, w = x.shape[2:]
        side = math.sqrt(1 - lam)
        cy, cx = int(centre[0] * h), int(centre[1] * w)
        y0, y1 = max(0, cy - int(h * side) // 2), min(h, cy + int(h * side) // 2)
        x0, x1 = max(0, cx - int(w * side) // 2), min(w, cx + int(w * side) // 2)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * partner
    return x, lam * target + (1 - lam) * target.flip(0)
