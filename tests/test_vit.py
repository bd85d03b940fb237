"""The ViT follows the report's steps: patch vectors, one shared dense layer, CLS placement."""

import contextlib

import pytest
import torch

from sweeper.models import Classifier
from sweeper.models.vit import Attention, PatchEmbedding, ViTConfig


@pytest.mark.parametrize("patch,stride", [(4, 4), (8, 8), (16, 16), (4, 2), (8, 4), (16, 8)])
def test_patch_embedding_is_one_dense_layer_on_flattened_patches(patch, stride):
    torch.manual_seed(0)
    embed = PatchEmbedding(patch, stride, dim=12)
    x = torch.randn(2, 3, 32, 32)
    starts = range(0, 32 - patch + 1, stride)
    vectors = torch.stack(
        [x[:, :, i : i + patch, j : j + patch].reshape(2, -1) for i in starts for j in starts], dim=1
    )
    expected = vectors @ embed.dense.weight.T + embed.dense.bias + embed.position
    assert embed.num_patches == len(starts) ** 2
    torch.testing.assert_close(embed(x), expected)


@pytest.mark.parametrize("patch,overlap,tokens", [(4, "half", 225), (8, "half", 49), (16, "half", 9),
                                                  (4, "none", 64), (16, "none", 4)])
def test_token_count_follows_patch_and_overlap(patch, overlap, tokens):
    vit = ViTConfig(patch=patch, overlap=overlap, dim=24, depth=1).build()
    assert vit.embed.position.shape == (1, tokens, 24)
    assert vit.features(torch.randn(3, 3, 32, 32)).shape == (3, 24)


def _logits(cls_layer):
    torch.manual_seed(0)
    model = Classifier(ViTConfig(dim=24, depth=3, heads=4, cls_layer=cls_layer).build(), 10)
    return model(torch.randn(4, 3, 32, 32))


def test_cls_last_never_sees_the_image():
    logits = _logits("last")
    torch.testing.assert_close(logits, logits[:1].expand_as(logits))


@pytest.mark.parametrize("cls_layer", ["first", 1, 2])
def test_cls_joining_before_a_block_sees_the_image(cls_layer):
    logits = _logits(cls_layer)
    assert not torch.allclose(logits[0], logits[1])


def _both_paths(cfg: ViTConfig, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = Classifier(cfg.build(), 10)
    x = torch.randn(4, 3, 32, 32)
    out = {}
    for path in ("written", "sdpa"):
        for m in model.modules():
            if isinstance(m, Attention):
                m.path = path
        with autocast:
            out[path] = model(x).float()
    return out["written"], out["sdpa"]


SHAPES = [dict(patch=p, overlap=o, heads=h, cls_layer=c)
          for p, o in [(4, "none"), (8, "none"), (16, "none"), (4, "half"), (8, "half"), (16, "half")]
          for h, c in [(4, "first"), (12, "last"), (6, 2)]]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda d: "-".join(map(str, d.values())))
def test_the_two_attention_paths_give_the_same_logits(shape):
    cfg = ViTConfig(dim=48, depth=3, **shape)
    written, sdpa = _both_paths(cfg, contextlib.nullcontext())
    torch.testing.assert_close(written, sdpa, rtol=1e-5, atol=1e-5)  # fp32: float error only
    written, sdpa = _both_paths(cfg, torch.autocast("cpu", dtype=torch.bfloat16))
    torch.testing.assert_close(written, sdpa, rtol=0.05, atol=0.05)  # bf16: its 8-bit mantissa


def test_cpu_bf16_autocast_takes_the_written_out_path_and_fp32_takes_sdpa(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    model = Classifier(ViTConfig(dim=24, depth=2).build(), 10)
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert calls == []
    model(x)
    assert len(calls) == 2  # one per block
