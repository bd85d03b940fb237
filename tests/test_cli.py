"""The command line as users type it: composition, sweeps, every option, bad input."""

import pytest
import torch

from helpers.commands import ROOT, metrics, ok, run_dirs, summary, sweeper
from sweeper.train import autocast_for, native_bf16, resolve_precision

COLUMNS = ["phase", "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
           "lr", "epoch_seconds", "images_per_s"]


def test_default_is_the_reports_baseline_vit():
    out = ok(sweeper("--cfg", "job")).stdout
    for line in ["name: vit", "patch: 4", "heads: 4", "overlap: none", "cls_layer: first",
                 "name: classify", "name: cifar10", "epochs: 25"]:
        assert line in out


def test_help_lists_groups_and_options():
    out = ok(sweeper("--help")).stdout
    for line in ["patch: 4, 8, 16", "heads: 4, 6, 8, 10, 12", "overlap: none, half",
                 "cls_layer: first, last, or a block index", "model: resnet18, timm, torchvision, vit", "data: cifar10, cifar100, folder, synthetic",
                 "model=vit: dim=240 depth=6 mlp_ratio=2.0", "data=cifar100: root=data labels=fine",
                 "recipe=short: batch_size=128 lr=1e-3",
                 "task: classify, finetune, rotation_pretrain, rotation_probe, scratch"]:
        assert line in out


def test_patch_multirun_makes_three_complete_runs(tmp_path, tiny):
    proc = ok(sweeper("model=vit", "patch=4,8,16", *tiny, f"hydra.sweep.dir={tmp_path}", "-m"))
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 3
    assert "Epoch: 1 | train loss:" in proc.stdout
    for d in dirs:
        rows = metrics(d)
        assert list(rows[0]) == COLUMNS and len(rows) == 1
        assert 0 <= float(rows[0]["test_acc"]) <= 1 and float(rows[0]["train_loss"]) > 0
        s = summary(d)
        assert s["status"] == "complete" and s["epochs_done"] == 1
        assert (d / "checkpoint.pt").is_file() and (d / ".hydra" / "config.yaml").is_file()
    assert sorted(summary(d)["model"] for d in dirs) == ["vit"] * 3
    patches = sorted(int(d.name.split("patch-")[1].split("+")[0]) for d in dirs)
    assert patches == [4, 8, 16]


@pytest.mark.parametrize("sweep", [
    ["patch=4,8,16", "overlap=none,half"],
    ["heads=4,6,8,10,12"],
    ["cls_layer=0,1,2,3,4,5,6,first,last", "model.depth=6"],
])
def test_every_vit_option_trains_one_tiny_epoch(tmp_path, tiny, sweep):
    ok(sweeper(*tiny, *sweep, f"hydra.sweep.dir={tmp_path}", "-m"))
    dirs = run_dirs(tmp_path)
    expected = 1
    for group in sweep:
        if not group.startswith("model."):
            expected *= len(group.split("=")[1].split(","))
    assert len(dirs) == expected
    assert all(summary(d)["status"] == "complete" for d in dirs)


def test_resnet18_both_stems_and_every_task(tmp_path, tiny):
    small = [a for a in tiny if not a.startswith(("model.", "data.n_"))] + [
        "data.n_train=30", "data.n_test=10"]  # ResNet-18 is slow on a CPU: fewer images
    ok(sweeper("model=resnet18", "model.stem=cifar,imagenet", *small,
               f"hydra.sweep.dir={tmp_path / 'classify'}", "-m"))
    # pretrain_epochs is used by one task of this sweep, so the sweep may set it
    ok(sweeper("task=rotation_pretrain,scratch", "model=resnet18", "pretrain_epochs=1", *small,
               f"hydra.sweep.dir={tmp_path / 'parts'}", "-m"))
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 4
    assert all(summary(d)["status"] == "complete" and summary(d)["model"] == "resnet18" for d in dirs)
    assert sorted(summary(d)["task"] for d in dirs) == [
        "classify", "classify", "rotation_pretrain", "scratch"]
    encoder = next(d for d in dirs if summary(d)["task"] == "rotation_pretrain") / "encoder.pt"
    ft = tmp_path / "finetune"
    ok(sweeper("task=finetune", f"task.encoder={encoder}", *small,
               f"hydra.run.dir={ft}"))
    assert summary(ft)["phases"]["finetune"]["epochs_done"] == 1
    assert summary(ft)["encoder"] == str(encoder.resolve())


@pytest.mark.parametrize("override,message", [
    (["patch=5"], "patch=5 is not allowed"),
    (["patch=6", "overlap=half"], "patch=6 is not allowed"),
    (["heads=0"], "heads=0 is not allowed"),
    (["model.dim=50", "heads=12"], "model.dim=50 is not allowed: a positive width divisible by heads=12"),
    (["cls_layer=9"], "cls_layer=9 is not allowed: first, last or a block index from 0 to 2"),
    (["epochs=0"], "epochs=0 is not allowed: a positive integer"),
    (["batch_size=-4"], "batch_size=-4 is not allowed: a positive integer"),
    (["precision=fp16"], "precision='fp16' is not allowed: auto, bf16 or fp32"),
    (["data=folder", "data.root=/nonexistent/cifar"], "data.root='/nonexistent/cifar' is not allowed"),
    (["data=folder", "data.root=."], "train/ or test/ is missing"),
    (["model.dim=abc"], "model.dim is not valid for model=vit"),
    (["task=finetune", "model=vit"], "task.encoder=None is not allowed"),
    (["task=finetune", "model=vit", "task.encoder=/no/encoder.pt"], "an existing encoder.pt file"),
])
def test_bad_input_is_one_clear_line_and_no_output(tmp_path, tiny, override, message):
    run_dir = tmp_path / "run"
    if any(o.startswith("data=") for o in override):  # another source: drop synthetic's keys
        tiny = [a for a in tiny if not a.startswith("data")]
    proc = sweeper(*tiny, *override, f"hydra.run.dir={run_dir}")
    assert proc.returncode != 0
    assert message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_precision_selects_the_autocast_dtype(precision, dtype):
    layer = torch.nn.Linear(4, 4)
    with autocast_for(torch.device("cpu"), precision):
        assert layer(torch.randn(2, 4)).dtype == dtype
    auto = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    assert resolve_precision(torch.device("cpu"), "auto") == auto


def test_the_run_records_the_precision_it_trained_at(tmp_path, tiny):
    ok(sweeper(*tiny, "precision=fp32", f"hydra.run.dir={tmp_path}"))
    assert summary(tmp_path)["precision"] == "fp32"


def test_library_code_raises_and_only_entry_points_exit():
    """The error boundary: no module below an entry point raises SystemExit or calls exit."""
    entry_points = {"sweeper/__main__.py", "sweeper/preflight.py", "sweeper/bench.py",
                    "sweeper/hydra_plugins/sweeper_search/__init__.py", "analysis/report.py"}
    for path in sorted([*ROOT.glob("sweeper/**/*.py"), *ROOT.glob("analysis/**/*.py")]):
        name = str(path.relative_to(ROOT))
        if name in entry_points:
            continue
        text = path.read_text()
        assert "SystemExit" not in text and "sys.exit" not in text, name
