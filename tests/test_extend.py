"""A model, a dataset and a task from outside the package: a module on the Python path and a
YAML on Hydra's search path train, sweep, resume and reach the report, no package file changed."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers.commands import ROOT, metrics, ok, run_dirs, summary, sweeper
from helpers.in_process import one_line_error


MODULE = '''
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sweeper.data.sources import ImageSet
from sweeper.options import DataOption, ModelOption, TaskOption
from sweeper.records import TaskSpec
from sweeper.tasks import classify, rotation


class TinyCNN(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.feature_dim = width
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def features(self, x):
        return self.net(x)


@dataclass
class TinyCNNConfig(ModelOption):
    name: str = "tiny_cnn"
    width: int = 8

    def check(self) -> None:
        if self.width < 1:
            raise ValueError("unreachable: the test never sets it")

    def build(self) -> TinyCNN:
        return TinyCNN(self.width)


@dataclass
class StripesData(DataOption):
    """Three classes: a bright top, middle or bottom band."""
    name: str = "stripes"
    n: int = 300

    def load(self) -> ImageSet:
        g = torch.Generator().manual_seed(0)
        y = torch.arange(self.n + 60) % 3
        x = torch.randint(0, 80, (len(y), 3, 32, 32), generator=g, dtype=torch.uint8)
        for k in range(3):
            x[y == k, :, 10 * k:10 * k + 10] += 150
        return ImageSet(x[:self.n], y[:self.n], x[self.n:], y[self.n:], ["top", "middle", "bottom"])


@dataclass
class WarmOnB(TaskOption):
    """Train on split B first ("warm"), then the same encoder on the whole set ("train")."""
    spec: ClassVar[TaskSpec] = TaskSpec(("warm", "train"), "train", pretext=False, part_a=False)
    name: str = "warm_on_b"

    def phases(self, s, images):
        (warm,) = rotation.scratch_on_b(s, images)
        warm.name = "warm"
        (full,) = classify.phases(s, images)
        full.model.encoder = warm.model.encoder
        return [warm, full]
'''

YAMLS = {
    "model/tiny_cnn.yaml": "_target_: mine.TinyCNNConfig\nname: tiny_cnn\nwidth: 8\n",
    "data/stripes.yaml": "_target_: mine.StripesData\nname: stripes\nn: 300\n",
    "task/warm_on_b.yaml": "# @package _global_\ntask:\n  _target_: mine.WarmOnB\n  name: warm_on_b\n",
}


@pytest.fixture
def outside(tmp_path):
    """(extra command-line arguments, environment) that bring the outside options in."""
    code, conf = tmp_path / "code", tmp_path / "conf"
    code.mkdir()
    (code / "mine.py").write_text(textwrap.dedent(MODULE))
    for name, text in YAMLS.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    env = {"PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}
    return [f"hydra.searchpath=[file://{conf}]", "epochs=2", "batch_size=32"], env


def test_an_outside_model_and_dataset_sweep_and_reach_the_report(tmp_path, outside):
    args, env = outside
    sweep = tmp_path / "sweep"
    ok(sweeper("model=tiny_cnn", "data=stripes", "model.width=4,8", *args,
               f"hydra.sweep.dir={sweep}", "-m", env=env))
    dirs = run_dirs(sweep)
    assert len(dirs) == 2
    for d in dirs:
        assert summary(d)["status"] == "complete" and summary(d)["model"] == "tiny_cnn"
        assert [r["epoch"] for r in metrics(d)] == ["1", "2"]
    again = ok(sweeper("model=tiny_cnn", "data=stripes", "model.width=4,8", *args,
                       f"hydra.sweep.dir={sweep}", "-m", env=env))
    assert "Epoch:" not in again.stdout  # complete runs are found again, not retrained
    report = subprocess.run([sys.executable, "-m", "analysis.report", str(sweep)], cwd=ROOT,
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    runs = pd.read_csv(sweep / "report" / "runs.csv")
    assert sorted(runs["model.width"]) == [4, 8] and set(runs["data.name"]) == {"stripes"}
    assert runs["final_test_acc"].notna().all()
    assert "model.width=4" in (sweep / "report" / "report.md").read_text()


def test_an_outside_model_killed_mid_run_resumes(tmp_path, outside):
    args, env = outside
    run_dir = tmp_path / "run"
    cmd = ["model=tiny_cnn", "data=stripes", "data.n=3000", *args, "epochs=4",
           "checkpoint_every=0", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "sweeper", *cmd], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists():
        assert time.time() < deadline and proc.poll() is None, "no checkpoint written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(metrics(run_dir)) < 4
    again = ok(sweeper(*cmd, env=env))
    assert "Epoch: 1 |" not in again.stdout  # resumed, not restarted
    assert [r["epoch"] for r in metrics(run_dir)] == ["1", "2", "3", "4"]
    assert summary(run_dir)["status"] == "complete"


def test_an_outside_task_reuses_the_shipped_phases_and_names_its_result(tmp_path, outside):
    args, env = outside
    run_dir = tmp_path / "run"
    ok(sweeper("task=warm_on_b", "model=tiny_cnn", "data=stripes", *args,
               f"hydra.run.dir={run_dir}", env=env))
    assert [(r["phase"], r["epoch"]) for r in metrics(run_dir)] == [
        ("warm", "1"), ("warm", "2"), ("train", "1"), ("train", "2")]
    s = summary(run_dir)
    assert s["task"] == "warm_on_b" and s["result_phase"] == "train"
    assert s["final_test_acc"] == s["phases"]["train"]["final_test_acc"]


@pytest.mark.parametrize("yaml, line", [
    ("_target_: mine.Nope\nname: x\n", "model._target_='mine.Nope' cannot be loaded"),
    ("_target_: mine.StripesData\nname: x\n", "is not allowed: a dataclass deriving from sweeper.options.ModelOption"),
    ("name: x\n", "model=x has no _target_"),
    ("_target_: mine.TinyCNNConfig\nname: x\nwidht: 8\n", "model.widht is not valid for model=x"),
    ("_target_: mine.TinyCNNConfig\nname: x\nwidth: wide\n", "model.width is not valid for model=x"),
    ("name: x\n  width: [8\n", "model/broken.yaml is not valid YAML: mapping values are not allowed here (line 2"),
    ("- 8\n- 16\n", "model is [8, 16], not an option: an option's YAML is a mapping of its keys"),
])
def test_a_broken_outside_option_is_one_line_and_no_run(tmp_path, outside, yaml, line):
    args, env = outside
    conf = Path(args[0].split("file://")[1].rstrip("]"))
    (conf / "model" / "broken.yaml").write_text(yaml)
    proc = sweeper("model=broken", "data=stripes", *args, f"hydra.run.dir={tmp_path / 'run'}", env=env)
    one_line_error(proc, 2, line)
    assert not (tmp_path / "run").exists()


def test_help_lists_the_outside_options_with_their_keys(outside):
    args, env = outside
    out = ok(sweeper("--help", args[0], env=env)).stdout
    assert "model=tiny_cnn: width=8" in out and "data=stripes: n=300" in out
    assert "task=warm_on_b" in out


@pytest.mark.parametrize("args, params", [
    (("model=torchvision", "model.name=resnet18"), 11_173_962),  # stem=cifar: a 3x3 first conv
    (("model=torchvision", "model.name=mobilenet_v3_small", "model.stem=imagenet"), None),
    (("model=timm", "model.name=vit_tiny_patch16_224", "model.img_size=32", "+model.args.patch_size=8"), None),
])
def test_other_libraries_models_train_by_name(tmp_path, args, params):
    if args[0] == "model=timm":
        pytest.importorskip("timm")
    run_dir = tmp_path / "run"
    ok(sweeper(*args, "data=synthetic", "data.n_train=40", "data.n_test=10", "epochs=1",
               "batch_size=20", f"hydra.run.dir={run_dir}"))
    s = summary(run_dir)
    assert s["status"] == "complete" and s["model"] == args[1].split("=")[1]
    assert params is None or s["params"] == params


@pytest.mark.parametrize("args, line", [
    (("model=torchvision", "model.name=resnet1000"), "model.name='resnet1000' is not allowed: a torchvision classification model"),
    (("model=torchvision", "model.name=mobilenet_v3_small"), "model.stem='cifar' is not allowed: imagenet for mobilenet_v3_small"),
    (("model=timm", "model.name=no_such_net"), "model.name='no_such_net' is not allowed: a name of timm.list_models()"),
])
def test_a_model_name_no_library_has_is_one_line(tmp_path, args, line):
    proc = sweeper(*args, "data=synthetic", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {line}"), proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()
