"""Files a test makes: image folders, fake run directories; and the report run on them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from PIL import Image

from helpers.commands import ROOT

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


def write_png(img: torch.Tensor, path: Path) -> None:
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)


def make_tree(root: Path, per_class: int = 3) -> Path:
    """train/<class>/*.png and test/<class>/*.png with the class in the red channel."""
    for split in ("train", "test"):
        for c, name in enumerate(["cat", "ant", "bee"]):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                img = torch.full((3, 32, 32), 10 * i, dtype=torch.uint8)
                img[0] = 50 * c
                write_png(img, root / split / name / f"{i}.png")
    return root
