"""Part A: the stratified split, the label-free pretext feed, and what fine-tuning starts from."""

from pathlib import Path

import torch

from helpers.commands import TINY, metrics, ok, summary, sweeper
from sweeper.config import Settings
from sweeper.data import sources
from sweeper.data.sources import SyntheticData
from sweeper.models.vit import ViTConfig
from sweeper.data.split import stratified_split
from sweeper.tasks.rotation import (
    ENCODER_FILE, FinetuneTask, Rotated, RotationTask, ScratchTask, rotate4, save_encoder,
)


def settings(task, **data) -> Settings:
    return Settings(
        model=ViTConfig(dim=24, depth=1, heads=4, patch=8), task=task,
        data=SyntheticData(n_train=100, n_test=20, **data), epochs=1, pretrain_epochs=1, batch_size=16,
        eval_batch_size=50, tta="none", lr=1e-3, weight_decay=0.05, warmup_epochs=0, label_smoothing=0.0,
        schedule="cosine", grad_clip=0.0, augment="crop_flip", erasing=0.0, mixup_alpha=0.0,
        cutmix_alpha=0.0, mix_until=1.0, drop_path=0.0, seed=0, device="cpu", precision="fp32", compile=False, resume=True, checkpoint_every=0,
        logger="csv",
    )


def test_split_is_stratified_disjoint_and_deterministic():
    labels = torch.arange(10).repeat_interleave(5000)  # CIFAR-10's training labels
    a, b = stratified_split(labels, 0.2, seed=0)
    assert len(a) == 40_000 and len(b) == 10_000
    assert labels[a].bincount().tolist() == [4000] * 10
    assert labels[b].bincount().tolist() == [1000] * 10
    assert len(set(a.tolist()) | set(b.tolist())) == 50_000
    a2, b2 = stratified_split(labels, 0.2, seed=0)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert not torch.equal(b, stratified_split(labels, 0.2, seed=1)[1])


def test_pretraining_is_fed_no_labels():
    s = settings(RotationTask())
    images = sources.synthetic(100, 20)
    pretrain, finetune = s.task.phases(s, images)
    assert isinstance(pretrain.train, Rotated)
    assert pretrain.train.batches.labels is None  # the feed holds images only
    assert len(pretrain.train.batches.images) == 80  # split A
    assert len(finetune.train.images) == 20 and finetune.train.labels is not None  # split B


def test_rotation_labels_agree_with_rot90():
    x = torch.randn(3, 3, 32, 32)
    rotated, labels = rotate4(x)
    assert rotated.shape == (12, 3, 32, 32)
    for i in range(12):
        k, j = int(labels[i]), i % 3
        assert torch.equal(rotated[i], torch.rot90(x[j], k, dims=(1, 2)))
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_finetuning_starts_from_the_pretrained_encoder(tmp_path):
    s = settings(RotationTask())
    images = sources.synthetic(100, 20)
    pretrain, finetune = s.task.phases(s, images)
    assert finetune.model.encoder is pretrain.model.encoder
    save_encoder(pretrain.model.encoder, s, tmp_path / ENCODER_FILE)

    s_ft = settings(FinetuneTask(encoder=str(tmp_path / ENCODER_FILE)))
    (loaded,) = s_ft.task.phases(s_ft, images)
    s_scratch = settings(ScratchTask())
    (fresh,) = s_scratch.task.phases(s_scratch, images)
    saved = torch.load(tmp_path / ENCODER_FILE, weights_only=True)["state"]
    for name, tensor in loaded.model.encoder.state_dict().items():
        assert torch.equal(tensor, saved[name])
    fresh_state = fresh.model.encoder.state_dict()
    assert any(not torch.equal(fresh_state[n], saved[n]) for n in saved)


def run_pipeline(tmp_path: Path, *extra: str) -> Path:
    run_dir = tmp_path / "run"
    tiny = [a for a in TINY if not a.startswith("epochs")]
    ok(sweeper("task=rotation_pretrain", "model=vit", *tiny, "pretrain_epochs=2",
               "epochs=2", *extra, f"hydra.run.dir={run_dir}"))
    return run_dir


def test_end_to_end_writes_both_phases_and_a_summary(tmp_path):
    run_dir = run_pipeline(tmp_path)
    rows = metrics(run_dir)
    assert [(r["phase"], r["epoch"]) for r in rows] == [
        ("pretrain", "1"), ("pretrain", "2"), ("finetune", "1"), ("finetune", "2")]
    s = summary(run_dir)
    assert s["status"] == "complete" and s["task"] == "rotation_pretrain"
    assert s["rotation_test_acc"] == float(rows[1]["test_acc"])
    assert s["final_test_acc"] == float(rows[3]["test_acc"])
    assert s["best_test_acc"] == max(float(r["test_acc"]) for r in rows[2:])
    pretrained = torch.load(run_dir / ENCODER_FILE, weights_only=True)["state"]
    final = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert any(not torch.equal(final[f"encoder.{n}"], t) for n, t in pretrained.items())


def test_linear_probe_leaves_the_encoder_unchanged(tmp_path):
    run_dir = run_pipeline(tmp_path / "probe", "task.freeze_encoder=true")
    full = run_pipeline(tmp_path / "full")
    scores = ["train_loss", "train_acc", "test_loss", "test_acc"]
    pre = [[r[k] for k in scores] for r in metrics(run_dir)[:2]]
    assert pre == [[r[k] for k in scores] for r in metrics(full)[:2]]  # pre-training is not frozen
    pretrained = torch.load(run_dir / ENCODER_FILE, weights_only=True)["state"]
    final = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    for name, tensor in pretrained.items():
        assert torch.equal(final[f"encoder.{name}"], tensor), name
    assert summary(run_dir)["phases"]["finetune"]["epochs_done"] == 2
