"""Test-time augmentation: `tta=flip` adds test figures from each image's logits averaged with its
mirror image's, `tta=flip_translate` those and airbench's six views, beside the plain figures,
which stay exactly what they were."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from helpers.commands import TINY, metrics, ok, scores, summary, sweeper
from helpers.files import report
from helpers.in_process import settings
from sweeper.tasks.rotation import MIRRORED_ROTATION, rotate4
from sweeper.train import Trainer


def test_tta_adds_its_figures_and_changes_no_other(tmp_path):
    plain, tta, more = tmp_path / "plain", tmp_path / "runs" / "tta", tmp_path / "runs" / "more"
    ok(sweeper(*TINY, "epochs=2", f"hydra.run.dir={plain}"))
    proc = ok(sweeper(*TINY, "epochs=2", "tta=flip", f"hydra.run.dir={tta}"))
    assert scores(tta) == scores(plain)  # training and the plain test figures are untouched
    rows = metrics(tta)
    assert "tta_test_acc" not in metrics(plain)[0] and "tta_translate_test_acc" not in rows[0]
    assert all(0 <= float(r["tta_test_acc"]) <= 1 and float(r["tta_test_loss"]) > 0 for r in rows)
    assert summary(tta)["final_tta_test_acc"] == float(rows[-1]["tta_test_acc"])
    assert f"flip TTA test acc: {float(rows[-1]['tta_test_acc']):.4f}" in proc.stdout
    # flip_translate keeps the flip figures and adds its own.
    proc = ok(sweeper(*TINY, "epochs=2", "tta=flip_translate", f"hydra.run.dir={more}"))
    moved = metrics(more)
    assert scores(more) == scores(plain)
    assert [r["tta_test_acc"] for r in moved] == [r["tta_test_acc"] for r in rows]
    assert all(0 <= float(r["tta_translate_test_acc"]) <= 1 for r in moved)
    final = float(moved[-1]["tta_translate_test_acc"])
    assert summary(more)["final_tta_translate_test_acc"] == final
    assert f"flip + translate TTA test acc: {final:.4f}" in proc.stdout
    made = report(tmp_path / "runs", "--out", str(tmp_path / "reports" / "one"))
    assert made.returncode == 0, made.stderr
    # The column, in a report of the run and in one made from that report's records.
    merged = report(tmp_path / "reports", "--reports", "--out", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    figure = f"{100 * float(rows[-1]['tta_test_acc']):.2f} ± 0.00 % (n=2)"  # both runs
    for folder in ("reports/one", "merged"):
        text = (tmp_path / folder / "report.md").read_text()
        assert "| final test acc, flip TTA |" in text and figure in text
        assert "| final test acc, flip + translate TTA |" in text
        assert f"{100 * final:.2f} % (n=1)" in text


def test_a_rotation_run_gets_tta_figures_in_both_phases(tmp_path):
    run = tmp_path / "run"
    ok(sweeper("task=rotation_pretrain", "model=vit", *TINY, "pretrain_epochs=1", "tta=flip",
               f"hydra.run.dir={run}"))
    assert [(r["phase"], bool(r["tta_test_acc"])) for r in metrics(run)] == [
        ("pretrain", True), ("finetune", True)]


def test_a_mirrored_rotation_is_the_rotation_its_class_map_names():
    x = torch.rand(3, 3, 8, 8)
    rotated, labels = rotate4(x)
    of_mirrored, _ = rotate4(x.flip(-1))
    n = len(x)
    for k in range(4):
        assert torch.equal(rotated[labels == k].flip(-1),
                           of_mirrored[MIRRORED_ROTATION[k] * n:(MIRRORED_ROTATION[k] + 1) * n])


class LeftRight(nn.Module):
    """Two logits, the mean of the left and of the right half: mirroring swaps them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[..., :4].mean((1, 2, 3)), x[..., 4:].mean((1, 2, 3))], 1)


def test_tta_averages_each_image_with_its_mirror_under_the_class_map(tmp_path):
    trainer = Trainer(settings("precision=fp32"), torch.device("cpu"), tmp_path, log=print)
    x = torch.randint(0, 256, (60, 3, 8, 8)).float()  # whole numbers: sums exact in any order
    left, right = LeftRight()(x).unbind(1)
    x = x[left != right][:40]
    y = LeftRight()(x).argmax(1)
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    plain = trainer.evaluate(LeftRight(), batches)
    assert plain.acc == 1.0 and plain.tta_acc is None
    # Mirroring swaps the logits: averaged with the same classes, both are equal (class 0 wins).
    same = trainer.evaluate(LeftRight(), batches, tta="flip")
    assert (same.loss, same.acc) == (plain.loss, plain.acc)
    assert same.tta_acc == (y == 0).sum().item() / len(y)
    assert math.isclose(same.tta_loss, math.log(2), rel_tol=1e-6)
    # Where mirroring also swaps the classes, the average is the plain logits again.
    swapped = trainer.evaluate(LeftRight(), batches, tta="flip", mirror_classes=[1, 0])
    assert swapped.tta_acc == 1.0 and math.isclose(swapped.tta_loss, plain.loss, rel_tol=1e-6)


def test_an_unknown_tta_is_one_line(tmp_path):
    proc = sweeper(*TINY, "tta=five_crop", f"hydra.run.dir={tmp_path / 'run'}")
    assert (proc.returncode, proc.stderr.strip()) == (
        2, "error: tta='five_crop' is not allowed: none, flip, flip_translate")
    assert not (tmp_path / "run").exists()


def shifted(x: torch.Tensor, by: int) -> torch.Tensor:
    """x moved `by` pixels down and right, the edge it uncovers filled by reflection."""
    n = x.shape[-1]
    index = (torch.arange(n) - by).abs()
    index = torch.where(index > n - 1, 2 * (n - 1) - index, index)
    return x[..., index, :][..., index]


def test_flip_translate_averages_airbench_six_views_and_keeps_the_flip_figures(tmp_path):
    trainer = Trainer(settings("precision=fp32"), torch.device("cpu"), tmp_path, log=print)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x, y = torch.randn(40, 3, 8, 8), torch.randint(0, 5, (40,))
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    flip = trainer.evaluate(model, batches, tta="flip")
    both = trainer.evaluate(model, batches, tta="flip_translate")
    assert (both.loss, both.acc, both.tta_loss, both.tta_acc) == (
        flip.loss, flip.acc, flip.tta_loss, flip.tta_acc)
    with torch.no_grad():
        pair = [model(v) + model(v.flip(-1)) for v in (x, shifted(x, 1), shifted(x, -1))]
        views = pair[0] / 4 + (pair[1] + pair[2]) / 8
    assert math.isclose(both.translate_loss, F.cross_entropy(views, y).item(), rel_tol=1e-5)
    assert both.translate_acc == (views.argmax(1) == y).float().mean().item()
    assert both.translate_acc != flip.tta_acc or both.translate_loss != flip.tta_loss
