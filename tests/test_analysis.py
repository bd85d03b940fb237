"""analysis.report on fake output trees, and once end to end on two tiny real runs."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, TINY, ok, sweeper
from analysis.collect import collect
from analysis.tables import build_tables

BASE = {"model": {"name": "vit", "dim": 240, "depth": 6}, "task": {"name": "classify"},
        "data": {"name": "cifar10", "root": "data"}, "patch": 4, "heads": 4, "overlap": "none",
        "cls_layer": "first", "epochs": 3, "seed": 0, "lr": 0.001}


def fake_run(root: Path, name: str, accs: list[float], status: str = "complete", **changes) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    config = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    rows = ["phase,epoch,train_loss,train_acc,test_loss,test_acc,lr,epoch_seconds,images_per_s"]
    phase = "finetune" if config["task"]["name"] != "classify" else "train"
    rows += [f"{phase},{i + 1},1.0,{a},{2 - a},{a},0.001,10,5000" for i, a in enumerate(accs)]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run / "summary.json").write_text(json.dumps(
        {"status": status, "task": config["task"]["name"], "wall_seconds": 10.0 * len(accs)}))
    return run


def report(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.report", str(root), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "outputs"
    for seed, accs in enumerate([[0.5, 0.6, 0.70], [0.5, 0.6, 0.72], [0.5, 0.6, 0.74]]):
        fake_run(root, f"multirun/patch-4+seed-{seed}", accs, seed=seed)
    fake_run(root, "multirun/patch-8", [0.4, 0.5, 0.55], patch=8)
    fake_run(root, "multirun/patch-8+overlap-half", [0.4, 0.5, 0.60], patch=8, overlap="half")
    fake_run(root, "multirun/heads-8", [0.5, 0.6, 0.71], heads=8)
    fake_run(root, "runs/partial", [0.3], status="running", patch=16)  # killed: no lock
    fake_run(root, "runs/scratch", [0.3, 0.5], task__name="scratch", model__name="resnet18")
    fake_run(root, "runs/rot", [0.5, 0.8], task__name="rotation_pretrain", model__name="resnet18")
    (root / "runs/corrupt/.hydra").mkdir(parents=True)
    (root / "runs/corrupt/metrics.csv").write_bytes(b"\x00\xff garbage,,\n\x01")
    (root / "runs/empty").mkdir()
    (root / "runs/empty/metrics.csv").write_text("")
    return root


def test_collect_statuses_settings_and_problems(tree):
    col = collect(tree)
    runs = col.runs.set_index("run")
    assert len(runs) == 9
    assert runs.loc["runs/partial", "status"] == "interrupted"
    assert runs.loc["runs/partial", "epochs_done"] == 1
    assert set(col.settings) >= {"patch", "overlap", "heads", "model.name"}
    assert "seed" not in col.settings and "model.patch" not in col.settings
    assert len(col.problems) == 2 and all("skipped" in p for p in col.problems)


def test_seeds_aggregate_and_families_do_not_mix_tasks(tree):
    tables = {t.title.split(" (")[0]: t for t in build_tables(collect(tree))}
    assert set(tables) == {"Patch size x overlap", "Attention heads",
                           "Part A: rotation pre-training vs baselines"}
    patch = tables["Patch size x overlap"].stats.set_index("label")
    row = patch.loc["patch=4, overlap=none"]
    assert row["final_test_acc_n"] == 3
    assert row["final_test_acc_mean"] == pytest.approx(0.72)
    assert row["final_test_acc_std"] == pytest.approx(0.02)
    assert "patch=16, overlap=none" in patch.index  # the killed run shows, with what it logged
    part_a = tables["Part A: rotation pre-training vs baselines"].stats
    assert set(part_a["label"]) == {"variant=rotation pre-training, fine-tuned",
                                    "variant=from scratch on B"}
    heads = tables["Attention heads"]
    assert "inside the seed-to-seed spread" in heads.verdict  # 0.72 ± 0.02 vs 0.71
    # the verdict says what its spread rests on: 3 seeds on one side, a single run on the other
    assert "(std up to 2.00 points, over 3 seeds; heads=8 has one seed)" in heads.verdict


def test_labels_show_pretext_epochs_only_where_a_pretext_ran(tmp_path):
    fake_run(tmp_path, "scratch", [0.3, 0.5], task__name="scratch", model__name="resnet18",
             pretrain_epochs=50)
    for epochs in (2, 5):
        fake_run(tmp_path, f"rot-{epochs}", [0.5, 0.6], task__name="rotation_pretrain",
                 model__name="resnet18", pretrain_epochs=epochs)
    for epochs in (1, 9):  # a ViT classifier never reads it: no family, no label
        fake_run(tmp_path, f"vit-{epochs}", [0.5, 0.6], pretrain_epochs=epochs)
    vit, part_a = build_tables(collect(tmp_path))
    assert vit.title == "ViT runs" and set(vit.stats["label"]) == {"all runs"}
    assert set(part_a.stats["label"]) == {
        "variant=rotation pre-training, fine-tuned, pretrain_epochs=2",
        "variant=rotation pre-training, fine-tuned, pretrain_epochs=5",
        "variant=from scratch on B"}


def test_report_writes_tables_plots_and_page(tree):
    proc = report(tree, "--reference", "seed")
    assert proc.returncode == 0, proc.stderr
    out = tree / "report"
    assert str(out) in proc.stdout
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 9 and {"run", "task", "status", "patch", "final_test_acc"} <= set(runs)
    epochs = pd.read_csv(out / "epochs.csv")
    assert len(epochs) == 3 * 6 + 1 + 2 + 2 and "patch" in epochs
    md = (out / "report.md").read_text()
    assert "## Patch size x overlap" in md and "**72.00 ± 2.00 % (n=3)**" in md
    assert "report final test acc" in md and "57.88 %" in md  # the report's patch-4 figure
    assert "runs/corrupt" in md and "interrupted" in md
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 7
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    page = (out / "index.html").read_text()
    assert all(p.name in page for p in pngs) and "<table>" in page
    assert report(tree).returncode == 0  # a second report replaces the first


def test_empty_or_missing_directory_is_one_line_and_exit_2(tmp_path):
    for root in (tmp_path / "missing", tmp_path):
        proc = report(root)
        assert proc.returncode == 2
        assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1


def test_end_to_end_on_two_real_runs(tmp_path):
    ok(sweeper(*TINY, "patch=8,16", f"hydra.sweep.dir={tmp_path / 'multirun'}", "-m"))
    proc = report(tmp_path, "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    runs = pd.read_csv(tmp_path / "rep" / "runs.csv")
    assert sorted(runs["patch"]) == [8, 16] and set(runs["status"]) == {"complete"}
    assert "## Patch size x overlap" in (tmp_path / "rep" / "report.md").read_text()


def test_a_tie_is_called_a_tie(tmp_path):
    fake_run(tmp_path, "a", [0.5, 0.7], patch=8)
    fake_run(tmp_path, "b", [0.6, 0.7], patch=16)
    (table,) = build_tables(collect(tmp_path))
    assert "tie on final test accuracy (70.00 %): no winner" in table.verdict


def test_a_run_that_fits_no_family_is_shown_not_dropped(tmp_path):
    fake_run(tmp_path, "first", [0.5, 0.6])
    fake_run(tmp_path, "first_s1", [0.5, 0.62], seed=1)
    fake_run(tmp_path, "cls5", [0.5, 0.61], cls_layer=5)
    fake_run(tmp_path, "last_short", [0.1], cls_layer="last", epochs=1)  # two keys differ
    fake_run(tmp_path, "p8_short", [0.4, 0.55], patch=8, epochs=2)  # two others differ
    tables = build_tables(collect(tmp_path))
    shown = [set(t.runs["run"]) for t in tables]
    assert set().union(*shown) == {"first", "first_s1", "cls5", "last_short", "p8_short"}
    outside = next(t for t in tables if t.title == "Runs outside the families above")
    assert list(outside.stats["label"]) == ["cls_layer=first, epochs=2, patch=8",
                                            "cls_layer=last, epochs=1, patch=4"]
    assert "no winner is named" in outside.verdict  # they differ in several settings at once
