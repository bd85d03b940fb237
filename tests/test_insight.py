"""What each model learned: attention, rollout, distance, position similarity, per-class
accuracy and confusion, in every run and in the report, at no cost to the training numbers."""

import json

import pandas as pd
import pytest
import torch

from helpers.commands import TINY, metrics, ok, sweeper
from helpers.files import fake_run, report
from helpers.in_process import execute_in_process
from sweeper import insight
from sweeper.data import sources
from sweeper.models.vit import ViTConfig


@pytest.mark.parametrize("patch,overlap", [(4, "none"), (8, "none"), (16, "none"),
                                           (4, "half"), (8, "half"), (16, "half")])
def test_attention_rows_sum_to_one_and_rollout_covers_the_patch_grid(patch, overlap):
    torch.manual_seed(0)
    vit = ViTConfig(patch=patch, overlap=overlap, dim=24, depth=2, heads=4).build().eval()
    maps = vit.attention_maps(torch.randn(3, 3, 32, 32))
    for attn in maps:
        torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))
    rolled = insight.rollout(maps, vit.cls_block)
    side = (32 - patch) // (patch // 2 if overlap == "half" else patch) + 1
    assert rolled.shape == (3, side * side)


def test_attention_distance_of_hand_made_attention():
    centres = insight.patch_centres(2, patch=4, stride=4)  # a 2x2 grid, centres 4 px apart
    assert centres.tolist() == [[1.5, 1.5], [1.5, 5.5], [5.5, 1.5], [5.5, 5.5]]
    itself = torch.eye(4).expand(1, 1, 4, 4)
    assert insight.attention_distance([itself], centres, cls_block=1) == [[0.0]]
    uniform = torch.full((1, 1, 4, 4), 0.25)  # each patch: 0, 4, 4 and 4*sqrt(2) away
    (value,), = insight.attention_distance([uniform], centres, cls_block=1)
    assert value == pytest.approx((0 + 4 + 4 + 4 * 2 ** 0.5) / 4)


def test_a_run_writes_per_class_confusion_and_vit_insight(tmp_path):
    ok(sweeper(*TINY, "cls_layer=1", "patch=8", "overlap=half", f"hydra.run.dir={tmp_path}"))
    images = sources.synthetic(60, 20)
    per_class = pd.read_csv(tmp_path / "per_class.csv")
    assert per_class["images"].tolist() == images.y_test.bincount(minlength=10).tolist()
    confusion = pd.read_csv(tmp_path / "confusion.csv", index_col=0)
    assert confusion.sum(axis=1).tolist() == per_class["images"].tolist()
    final_acc = float(metrics(tmp_path)[-1]["test_acc"])
    assert per_class["correct"].sum() / len(images.y_test) == pytest.approx(final_acc)
    data = json.loads((tmp_path / "insight.json").read_text())
    assert data["grid"] == 7 and data["cls_block"] == 1 and "no CLS attention" in data["note"]
    assert data["cls_attention"][0] is None and len(data["cls_attention"][1]) == 4  # heads
    assert len(data["images"]) == len(images.y_test.unique()) and len(data["rollout"][0]) == 49
    assert len(data["position_similarity"]) == 49
    assert data["labels"] == sorted(images.y_test.unique().tolist())  # first image of each class
    assert all(images.y_test[i] == c and (images.y_test[:i] != c).all()
               for i, c in zip(data["images"], data["labels"]))


def test_extras_do_not_change_the_training_numbers(tmp_path, monkeypatch):
    with_extras = execute_in_process(tmp_path / "a", [*TINY, "epochs=2"])
    monkeypatch.setattr(insight, "write", lambda *a, **k: None)
    without = execute_in_process(tmp_path / "b", [*TINY, "epochs=2"])
    assert (tmp_path / "a" / "run" / "insight.json").exists()
    assert not (tmp_path / "b" / "run" / "insight.json").exists()
    keep = ["phase", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]
    assert [[r[k] for k in keep] for r in metrics(tmp_path / "a" / "run")] == \
           [[r[k] for k in keep] for r in metrics(tmp_path / "b" / "run")]
    assert with_extras["final_test_acc"] == without["final_test_acc"]


def test_rotation_runs_write_the_rotation_confusion(tmp_path):
    tiny = [a for a in TINY if not a.startswith("epochs")]
    ok(sweeper(*tiny, "model=vit", "task=rotation_pretrain", "epochs=1", "pretrain_epochs=1",
               f"hydra.run.dir={tmp_path}"))
    rotation = pd.read_csv(tmp_path / "rotation_confusion.csv", index_col=0)
    assert list(rotation.columns) == ["0", "90", "180", "270"]
    assert rotation.to_numpy().sum() == 4 * 20  # every test image in four rotations


def test_the_report_shows_insight_and_omits_it_for_older_runs(tmp_path):
    ok(sweeper(*TINY, "patch=8,16", f"hydra.sweep.dir={tmp_path / 'new'}", "-m"))
    proc = report(tmp_path / "new")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "new" / "report"
    for kind in ("attention", "distance", "position", "confusion"):
        (png,) = out.glob(f"*_{kind}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.name in (out / "index.html").read_text()
    md = (out / "report.md").read_text()
    assert "Test accuracy per class" in md and "Where the CLS token looks" in md

    fake_run(tmp_path / "old", "patch-8", [0.4, 0.5], patch=8)
    fake_run(tmp_path / "old", "patch-16", [0.4, 0.6], patch=16)
    assert report(tmp_path / "old").returncode == 0
    assert not list((tmp_path / "old" / "report").glob("*_attention.png"))
    assert "Test accuracy per class" not in (tmp_path / "old" / "report" / "report.md").read_text()
