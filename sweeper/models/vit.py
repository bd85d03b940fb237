"""The Vision Transformer, step by step as the assignment lists it.

1-2. cut the image into patches (d1 x d2 x d3) and flatten each into a vector of d1*d2*d3;
3.   one dense layer with the same W and b for every patch -> Z_1..Z_n, plus a learned
     embedding of each position 1..n;
4.   a learned CLS vector Z_0 of the same width;
6-8. Z_0..Z_n through `depth` blocks of multi-head self-attention and a dense (MLP) layer;
9.   the output at Z_0 is the image's feature, fed to the classifier by the task.
`cls_layer` chooses the block before which Z_0 joins (0: the standard ViT; depth: after the
last block, where it never attends to a patch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sweeper.config import IMAGE_SIZE
from sweeper.errors import not_allowed
from sweeper.options import ModelOption
from sweeper.records import VIT_SHAPE


@dataclass
class ViTConfig(ModelOption):
    """`model=vit`. The shape keys (patch, overlap, heads, cls_layer) and drop_path come from
    the top level of the config, the only place a user sets them."""

    top_level: ClassVar[tuple[str, ...]] = (*VIT_SHAPE, "drop_path")
    name: str = "vit"
    patch: int = 4
    overlap: str = "none"  # none | half (stride = patch / 2)
    heads: int = 4
    cls_layer: Any = "first"  # first | last | block index 0..depth
    dim: int = 240  # divisible by 4, 6, 8, 10 and 12, so every heads option runs unchanged
    depth: int = 6
    mlp_ratio: float = 2.0
    drop_path: float = 0.0  # stochastic depth of the last block (the recipe's)

    @property
    def stride(self) -> int:
        return self.patch // 2 if self.overlap == "half" else self.patch

    @property
    def cls_block(self) -> int:
        """The block index the CLS token joins before (`depth` means after the last block)."""
        if self.cls_layer == "first":
            return 0
        if self.cls_layer == "last":
            return self.depth
        return int(self.cls_layer)

    def check(self) -> None:
        if self.overlap not in ("none", "half"):
            raise not_allowed("overlap", self.overlap, "none or half")
        if self.patch <= 0 or self.patch > IMAGE_SIZE:
            raise not_allowed("patch", self.patch, f"a patch side from 1 to {IMAGE_SIZE}")
        if self.overlap == "half" and self.patch % 2:
            raise not_allowed("patch", self.patch, "an even patch side with overlap=half")
        if (IMAGE_SIZE - self.patch) % self.stride:
            raise not_allowed("patch", self.patch,
                           f"patches of side {self.patch} with stride {self.stride} must tile the "
                           f"{IMAGE_SIZE}x{IMAGE_SIZE} image exactly (try 4, 8 or 16)")
        if self.depth <= 0:
            raise not_allowed("model.depth", self.depth, "a positive number of blocks")
        if self.heads <= 0:
            raise not_allowed("heads", self.heads, "a positive number of attention heads")
        if self.dim <= 0 or self.dim % self.heads:
            raise not_allowed("model.dim", self.dim, f"a positive width divisible by heads={self.heads}")
        if self.mlp_ratio <= 0:
            raise not_allowed("model.mlp_ratio", self.mlp_ratio, "a positive number")
        cls = self.cls_layer
        if not (cls in ("first", "last")
                or (isinstance(cls, int) and not isinstance(cls, bool) and 0 <= cls <= self.depth)):
            raise not_allowed("cls_layer", cls, f"first, last or a block index from 0 to {self.depth}")

    def build(self) -> "ViT":
        return ViT(self)


class PatchEmbedding(nn.Module):
    """Steps 1-3: patches -> vectors -> one shared dense layer, plus learned positions."""

    def __init__(self, patch: int, stride: int, dim: int, channels: int = 3) -> None:
        super().__init__()
        self.patch, self.stride = patch, stride
        side = (IMAGE_SIZE - patch) // stride + 1
        self.num_patches = side * side
        self.dense = nn.Linear(channels * patch * patch, dim)  # the same W, b for every patch
        self.position = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        nn.init.trunc_normal_(self.position, std=0.02)

    def vectors(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, n, C*p*p): each patch flattened channel-major, row-major order."""
        return F.unfold(x, self.patch, stride=self.stride).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.vectors(x)) + self.position


class Attention(nn.Module):
    path: Optional[str] = None  # None: `written_out_attention` decides; "sdpa" | "written": fixed

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, t, d = x.shape
        return self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self._qkv(x)
        written = written_out_attention(x) if self.path is None else self.path == "written"
        y = _softmax_attention(q, k) @ v if written else F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(n, t, d))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(N, heads, T, T): softmax(q k^T / sqrt(d_head)), what `forward` attends with."""
        q, k, _ = self._qkv(x)
        return _softmax_attention(q, k)


def _softmax_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)


def written_out_attention(x: torch.Tensor) -> bool:
    """The one rule for the attention path: on a CPU under bf16 autocast, softmax(q k^T / sqrt(d)) v
    written out, whose matmuls take oneDNN's AMX/AVX512-BF16 kernels; PyTorch's CPU flash kernel
    is slower in bf16 than in fp32 (1.8x slower than the written-out form with 4 heads, 3.0x with
    12, at patch 4 on a 2-core Xeon with AMX; 1.5x at patch 4 with half overlap, 226 tokens:
    `python -m sweeper.bench speed` measures both). Everywhere else, scaled_dot_product_attention:
    flash kernels on CUDA, at par or ahead in CPU fp32. `Attention.path` fixes one path instead,
    for that benchmark."""
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


class Block(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + mlp(norm(x)); in training, each branch is
    dropped for a whole image with probability `drop_path` (stochastic depth)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = drop_path

    def _drop(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0:
            return branch
        keep = torch.rand(len(branch), 1, 1, device=branch.device) >= self.drop_path
        return branch * keep / (1 - self.drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._drop(self.attn(self.norm1(x)))
        return x + self._drop(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.embed = PatchEmbedding(cfg.patch, cfg.stride, cfg.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))  # step 4: Z_0
        nn.init.trunc_normal_(self.cls, std=0.02)
        rates = [cfg.drop_path * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]  # 0 first
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.dim)
        self.cls_block = cfg.cls_block
        self.feature_dim = cfg.dim
        self.apply(_init)

    def _join_at(self, i: int, z: torch.Tensor) -> torch.Tensor:
        """Before block i (i = depth: after the last), the CLS token joins as token 0."""
        if i != self.cls_block:
            return z
        return torch.cat([self.cls.expand(len(z), -1, -1), z], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        for i, block in enumerate(self.blocks):
            z = block(self._join_at(i, z))
        return self.norm(self._join_at(len(self.blocks), z)[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's attention weights (N, heads, T, T) on the way through `features`; in
        blocks from `cls_block` on, token 0 is the CLS token."""
        maps = []
        z = self.embed(x)
        for i, block in enumerate(self.blocks):
            z = self._join_at(i, z)
            maps.append(block.attn.weights(block.norm1(z)))
            z = block(z)
        return maps


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
