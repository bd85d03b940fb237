"""What a trained model learned, written beside metrics.csv when a run completes.

Every run: `per_class.csv` (test accuracy per class) and `confusion.csv` (rows: true class,
columns: predicted), from the confusion the last evaluation already counted; rotation runs
also `rotation_confusion.csv` (4x4, on the rotated test set, at the end of the pretext).

ViT runs: `insight.json`, from one forward pass over fixed test images (the first test image
of each class, the same for every run of a data source):
- `cls_attention[block][head][image]`: the CLS token's attention to every patch (a patch-grid
  row-major list), for the blocks the CLS token is part of; null for blocks before it joins;
- `rollout[image]`: attention rollout (Abnar & Zuidema 2020) from the CLS token to the patches
  through the blocks after it joins: per block, heads averaged, plus the identity for the
  residual, rows renormalised, multiplied in order; null when the CLS token joins after the
  last block (it never attends to a patch);
- `attention_distance[block][head]`: mean distance in pixels between query and key patch
  centres, weighted by patch-to-patch attention (renormalised over patches), averaged over
  queries and images, as in the ViT paper's Figure 7 (right); overlapping patches use their
  real centres;
- `position_similarity`: cosine similarity of the learned position embeddings (Figure 7, centre);
- the images themselves (uint8 CHW lists) and the patch grid, so a report can draw them.
Extraction runs after training, on copies of nothing: the metrics are untouched.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from sweeper.atomic import atomic_write_text
from sweeper.data.batches import normalise, normaliser
from sweeper.data.sources import ImageSet
from sweeper.models.vit import ViT

INSIGHT_FILE = "insight.json"
PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion.csv"
ROTATION_CONFUSION_FILE = "rotation_confusion.csv"
ROTATIONS = ["0", "90", "180", "270"]


def fixed_images(labels: torch.Tensor, num_classes: int) -> list[int]:
    """The first test image of each class, in class order (classes absent are left out)."""
    first = []
    for c in range(num_classes):
        hits = (labels == c).nonzero()
        if len(hits):
            first.append(int(hits[0]))
    return first


def patch_centres(side: int, patch: int, stride: int) -> torch.Tensor:
    """(side*side, 2) pixel coordinates (row, column) of each patch's centre, row-major."""
    starts = torch.arange(side, dtype=torch.float32) * stride + (patch - 1) / 2
    rows, cols = torch.meshgrid(starts, starts, indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1)


def attention_distance(maps: list[torch.Tensor], centres: torch.Tensor, cls_block: int) -> list[list[float]]:
    """Per block and head: sum over keys of attention x distance, patch tokens only."""
    distances = torch.cdist(centres, centres)
    out = []
    for i, attn in enumerate(maps):
        patches = attn[:, :, 1:, 1:] if i >= cls_block else attn
        patches = patches / patches.sum(-1, keepdim=True)
        out.append((patches * distances).sum(-1).mean(dim=(0, 2)).tolist())
    return out


def rollout(maps: list[torch.Tensor], cls_block: int) -> Optional[torch.Tensor]:
    """(N, patches): the CLS token's rolled-out attention, or None if it never attends."""
    joined = maps[cls_block:]
    if not joined:
        return None
    tokens = joined[0].shape[-1]
    result = torch.eye(tokens).expand(len(joined[0]), -1, -1)
    for attn in joined:
        a = 0.5 * attn.mean(1) + 0.5 * torch.eye(tokens)
        result = (a / a.sum(-1, keepdim=True)) @ result
    return result[:, 0, 1:]


def position_similarity(position: torch.Tensor) -> torch.Tensor:
    """(patches, patches) cosine similarity of the position embeddings."""
    p = F.normalize(position[0].float(), dim=-1)
    return p @ p.T


def _rounded(t: torch.Tensor) -> Any:
    return [round(float(v), 5) for v in t] if t.dim() == 1 else [_rounded(r) for r in t]


@torch.no_grad()
def vit_insight(vit: ViT, images: ImageSet) -> dict[str, Any]:
    """insight.json's content for a trained ViT (in eval mode, full precision)."""
    vit = vit.eval()
    device = next(vit.parameters()).device
    index = fixed_images(images.y_test.cpu(), len(images.classes))
    raw = images.x_test[index]
    maps = [m.float().cpu() for m in vit.attention_maps(normalise(raw, *normaliser(device)))]
    embed = vit.embed
    side = int(embed.num_patches ** 0.5)
    cls_attention = [None if i < vit.cls_block else _rounded(m[:, :, 0, 1:].transpose(0, 1))
                     for i, m in enumerate(maps)]
    rolled = rollout(maps, vit.cls_block)
    return {
        "images": index,
        "labels": images.y_test[index].tolist(),
        "classes": images.classes,
        "pixels": raw.cpu().tolist(),
        "patch": embed.patch,
        "stride": embed.stride,
        "grid": side,
        "depth": len(vit.blocks),
        "heads": maps[0].shape[1],
        "cls_block": vit.cls_block,
        "note": (f"blocks 0..{vit.cls_block - 1} run before the CLS token joins: they have no CLS "
                 f"attention (null)") if vit.cls_block else "",
        "cls_attention": cls_attention,
        "rollout": None if rolled is None else _rounded(rolled),
        "attention_distance": [[round(v, 4) for v in block] for block in
                               attention_distance(maps, patch_centres(side, embed.patch, embed.stride),
                                                  vit.cls_block)],
        "position_similarity": _rounded(position_similarity(embed.position.cpu())),
    }


def _confusion_csv(confusion: torch.Tensor, names: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["true \\ predicted", *names])
    for name, row in zip(names, confusion.tolist()):
        writer.writerow([name, *row])
    return out.getvalue()


def _per_class_csv(confusion: torch.Tensor, names: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["class", "images", "correct", "accuracy"])
    for i, name in enumerate(names):
        n, hit = int(confusion[i].sum()), int(confusion[i, i])
        writer.writerow([name, n, hit, round(hit / n, 6) if n else ""])
    return out.getvalue()


def write(run_dir: Path, encoder: torch.nn.Module, images: ImageSet,
          confusions: dict[str, torch.Tensor]) -> None:
    """Write every insight file this run has: `confusions` maps a phase name to its last
    evaluation's confusion matrix."""
    result = confusions.get("finetune", confusions.get("train"))
    if result is not None:
        atomic_write_text(run_dir / CONFUSION_FILE, _confusion_csv(result, images.classes))
        atomic_write_text(run_dir / PER_CLASS_FILE, _per_class_csv(result, images.classes))
    if "pretrain" in confusions:
        atomic_write_text(run_dir / ROTATION_CONFUSION_FILE,
                          _confusion_csv(confusions["pretrain"], ROTATIONS))
    if isinstance(encoder, ViT):
        atomic_write_text(run_dir / INSIGHT_FILE, json.dumps(vit_insight(encoder, images)) + "\n")
