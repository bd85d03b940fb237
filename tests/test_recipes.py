"""Recipes (`recipe=default|short|strong`): each composes, validates and trains; the on-device
augmentation draws the same images after a resume and never touches the test set."""

import signal

import pytest
import torch

from helpers.commands import (
    ROOT, SLOW, TINY, metrics, ok, run_dirs, scores, start_and_signal, summary, sweeper,
)
from helpers.in_process import settings
from sweeper.data.augment import OPS, Augmentation, trivial_augment
from sweeper.data.batches import Batches, normaliser, normalise
from sweeper.train import lr_at, train_step

RECIPE_KEYS = ("batch_size", "lr", "weight_decay", "warmup_epochs", "schedule", "grad_clip",
               "label_smoothing", "augment", "erasing", "mixup_alpha", "cutmix_alpha",
               "mix_until", "drop_path")


@pytest.mark.parametrize("recipe", ["default", "short", "strong"])
def test_every_recipe_sets_every_recipe_key_itself(recipe):
    text = (ROOT / "conf" / "recipe" / f"{recipe}.yaml").read_text()
    assert all(f"\n{key}:" in text for key in RECIPE_KEYS)


def test_the_default_recipe_is_the_published_one():
    s = settings()
    assert (s.batch_size, s.lr, s.weight_decay, s.warmup_epochs, s.schedule, s.grad_clip,
            s.label_smoothing, s.augment, s.erasing, s.mixup_alpha, s.cutmix_alpha,
            s.drop_path) == (256, 5e-4, 0.05, 1.0, "cosine", 0.0, 0.1, "crop_flip", 0.0, 0.0,
                             0.0, 0.0)
    short = settings("recipe=short", "lr=3e-3")  # a key on the command line beats the recipe
    assert (short.schedule, short.augment, short.grad_clip, short.lr) == ("linear", "flip", 1.0, 3e-3)


def test_every_recipe_trains_a_tiny_model(tmp_path):
    ok(sweeper(*TINY, "epochs=2", "recipe=default,short,strong", f"hydra.sweep.dir={tmp_path}", "-m"))
    runs = run_dirs(tmp_path)
    assert [r.name.rsplit("+", 1)[1] for r in runs] == [f"recipe-{n}" for n in ("default", "short", "strong")]
    for run in runs:
        assert summary(run)["status"] == "complete" and len(metrics(run)) == 2
    linear = [float(r["lr"]) for r in metrics(runs[1])]
    # short: 4 steps, no warm-up step (0.25 of 2 rounds to 0), the last at 1e-3 * (1 - 3/4)
    assert linear[-1] == pytest.approx(2.5e-4)


@pytest.mark.parametrize("override,message", [
    ("schedule=step", "schedule='step' is not allowed: cosine or linear"),
    ("augment=autoaugment", "augment='autoaugment' is not allowed: none, flip, crop_flip, strong"),
    ("erasing=1.5", "erasing=1.5 is not allowed: a number in [0, 1]"),
    ("drop_path=1", "drop_path=1.0 is not allowed: a number in [0, 1)"),
    ("grad_clip=-1", "grad_clip=-1.0 is not allowed: zero (off) or a positive number"),
    ("mixup_alpha=nan", "mixup_alpha=nan is not allowed: a finite number"),
])
def test_a_bad_recipe_value_is_one_line(tmp_path, override, message):
    proc = sweeper(*TINY, override, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "run").exists()


def test_the_strong_recipe_resumes_exactly_after_sigterm(tmp_path):
    strong = ("recipe=strong", "batch_size=32")
    reference = tmp_path / "reference"
    ok(sweeper(*SLOW, *strong, f"hydra.run.dir={reference}"))
    run_dir = tmp_path / "run"
    proc = start_and_signal(run_dir, signal.SIGTERM, strong)
    proc.communicate(timeout=120)
    assert summary(run_dir)["status"] == "preempted"
    ok(sweeper(*SLOW, *strong, f"hydra.run.dir={run_dir}"))
    assert scores(run_dir) == scores(reference)  # augmentation, mixing and stochastic depth


def _feed(aug: Augmentation) -> Batches:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (70, 3, 32, 32), generator=g, dtype=torch.uint8)
    return Batches(images, torch.arange(70) % 10, 16, seed=3, stream="train", aug=aug)


STRONG = Augmentation("strong", erasing=0.5, mixup_alpha=0.8, cutmix_alpha=1.0, mix_epochs=2,
                      classes=10)


def test_augmentation_draws_are_the_same_when_an_epoch_starts_mid_way():
    feed = _feed(STRONG)
    whole = list(feed.epoch(1))
    for (x, y), (x2, y2) in zip(whole[2:], feed.epoch(1, start=2)):
        torch.testing.assert_close(x, x2, rtol=0, atol=0)
        torch.testing.assert_close(y, y2, rtol=0, atol=0)
    assert not torch.equal(whole[0][0], next(iter(feed.epoch(2)))[0])  # a new epoch, new draws


def test_mixup_and_cutmix_stop_after_their_epochs_and_labels_stay_distributions():
    feed = _feed(STRONG)
    (_, mixed), *_ = feed.epoch(1)
    assert mixed.shape == (16, 10)
    torch.testing.assert_close(mixed.sum(1), torch.ones(16))
    (_, plain), *_ = feed.epoch(2)  # mix_epochs=2: the last epochs see whole images
    assert plain.dtype == torch.int64 and plain.shape == (16,)


def test_strong_changes_training_images_and_never_the_test_set():
    strong, plain = _feed(STRONG), _feed(Augmentation("none"))
    test_batches = [x for x, _ in strong]
    assert all(torch.equal(a, b) for a, b in zip(test_batches, (x for x, _ in plain)))
    scale, shift = normaliser(torch.device("cpu"))
    torch.testing.assert_close(test_batches[0], normalise(strong.images[:16], scale, shift))
    train_strong = torch.cat([x for x, _ in strong.epoch(0)])
    train_plain = torch.cat([x for x, _ in plain.epoch(0)])
    assert not torch.allclose(train_strong, train_plain)


def test_flip_only_mirrors_and_none_leaves_the_images_alone():
    none, flip = _feed(Augmentation("none")), _feed(Augmentation("flip"))
    scale, shift = normaliser(torch.device("cpu"))
    originals = torch.cat([x for x, _ in none.epoch(0)])  # the epoch's order, pixels untouched
    sums = lambda x: torch.sort(x.flatten(1).sum(1)).values  # noqa: E731
    torch.testing.assert_close(sums(originals), sums(normalise(none.images, scale, shift)))
    seen = torch.cat([x for x, _ in flip.epoch(0)])  # the same order: the draws are shared
    as_is = (seen == originals).flatten(1).all(1)
    assert (as_is | (seen == originals.flip(3)).flatten(1).all(1)).all() and not as_is.all()


@pytest.mark.parametrize("op", OPS)
def test_each_strong_op_keeps_pixels_in_range_and_identity_is_exact(op):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(40, 200, (6, 3, 32, 32), generator=g, dtype=torch.uint8)  # autocontrast acts
    k = torch.full((6,), OPS.index(op))
    out = trivial_augment(x, k, torch.linspace(0, 1, 6), torch.tensor([1.0, -1, 1, -1, 1, -1]))
    assert out.min() >= 0 and out.max() <= 255
    if op == "identity":
        assert torch.equal(out, x.float())
    else:
        assert not torch.equal(out[-1], x[-1].float())  # at full magnitude every op acts


def test_linear_schedule_warms_up_then_falls_to_zero():
    lrs = [lr_at(step, 100, 10, 1.0, "linear") for step in range(100)]
    assert lrs[9] == 1.0 and lrs[10] == 1.0 and lrs[55] == pytest.approx(0.5)
    assert lrs[-1] == pytest.approx(1 / 90)


def test_grad_clip_bounds_the_gradient_norm():
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(8, 10) * 100, torch.randint(0, 3, (8,))
    train_step(model, optimizer, x, y, torch.autocast("cpu", enabled=False), 0.0, grad_clip=0.5)
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert norm <= 0.5 + 1e-5
