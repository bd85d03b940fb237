"""What changes on a GPU, exercised on the CPU: resume across devices, precision choice,
compile, out-of-memory, checkpoint cadence, and one meaning per config key."""

import json
import signal

import pytest
import torch
import yaml

from helpers.commands import SLOW, TINY, metrics, ok, scores, start_and_signal, summary, sweeper
from helpers.in_process import execute_in_process, one_line_error, run_in_process
from sweeper import checkpoint
from sweeper.data.batches import Batches
from sweeper.train import precision_warning, resolve_precision


def test_a_checkpoint_written_on_another_device_resumes_to_the_same_numbers(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    start_and_signal(run_dir, signal.SIGKILL).wait()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    state["device"] = "cuda"  # as if the first attempt ran on a GPU node
    torch.save(state, run_dir / "checkpoint.pt")
    again = ok(sweeper(*SLOW, f"hydra.run.dir={run_dir}"))
    assert "resuming on cpu a checkpoint written on cuda" in again.stdout
    assert scores(run_dir) == uninterrupted  # the batch order does not depend on the device
    history = summary(run_dir)["history"]
    assert [h["device"] for h in history] == ["cpu", "cpu"] and history[1]["epoch"] >= 2


def test_an_epoch_draws_the_same_batches_from_any_start():
    x = torch.randint(0, 255, (50, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(50)
    feed = Batches(x, y, 8, seed=3, stream="train")
    full = list(feed.epoch(2))
    tail = list(feed.epoch(2, start=4))
    assert len(tail) == len(full) - 4
    for (xa, ya), (xb, yb) in zip(full[4:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(full[0][1], next(feed.epoch(3))[1])  # another epoch, another order


def test_checkpoints_follow_checkpoint_every_and_always_close_a_phase(tmp_path, monkeypatch):
    saves = []
    real = checkpoint.atomic_save
    monkeypatch.setattr(checkpoint, "atomic_save", lambda obj, path: saves.append(
        obj["position"]["epoch"]) or real(obj, path))
    execute_in_process(tmp_path / "a", [*TINY, "epochs=3", "checkpoint_every=3600"])
    assert saves == [3]
    saves.clear()
    execute_in_process(tmp_path / "b", [*TINY, "epochs=3", "checkpoint_every=0"])
    assert saves == [1, 2, 3]


def test_out_of_memory_is_a_status_a_line_and_a_retry(tmp_path, monkeypatch):
    from sweeper import train
    from sweeper.errors import RunFailed

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "train_step", oom)
    with pytest.raises(RunFailed) as failed:
        run_in_process(tmp_path, [*TINY, "batch_size=32"])
    result = summary(tmp_path / "run")
    assert result["status"] == "oom" and result["detail"]["batch_size"] == 32
    line = failed.value.line
    assert line.startswith("error: out of memory") and "batch_size=32" in line
    assert "hydra.launcher.n_jobs=1" in line and failed.value.code == 1
    monkeypatch.undo()
    assert execute_in_process(tmp_path, [*TINY, "batch_size=32"])["status"] == "complete"


def test_precision_auto_is_native_only_and_a_forced_bf16_says_what_runs():
    cpu = torch.device("cpu")
    from sweeper.train import native_bf16

    if native_bf16(cpu):
        assert resolve_precision(cpu, "auto") == "bf16" and precision_warning(cpu, "bf16") is None
    else:
        assert resolve_precision(cpu, "auto") == "fp32"
        assert "emulated" in precision_warning(cpu, "bf16")
    assert precision_warning(cpu, "fp32") is None


def test_compile_runs_on_the_cpu_and_the_summary_says_it_compiled(tmp_path):
    # 64 images in batches of 32: one training shape and one evaluation shape, so two graphs
    # to compile (compiling is most of this test's time)
    small = [a for a in TINY if not a.startswith(("model.dim", "model.depth", "epochs", "data.n_train"))]
    ok(sweeper(*small, "data.n_train=64", "model.dim=24", "model.depth=1", "epochs=1", "compile=true",
               f"hydra.run.dir={tmp_path}"))
    s = summary(tmp_path)
    assert s["status"] == "complete" and s["compiled_graphs"] > 0
    assert s["history"][0]["compile"] is True


def test_a_rerun_with_another_config_is_refused_and_the_stored_config_kept(tmp_path):
    ok(sweeper(*TINY, "epochs=2", f"hydra.run.dir={tmp_path}"))
    stored = (tmp_path / ".hydra" / "config.yaml").read_text()
    before = metrics(tmp_path)
    proc = sweeper(*TINY, "epochs=3", "lr=0.002", f"hydra.run.dir={tmp_path}")
    one_line_error(proc, 2, "was trained with another config: epochs (2 -> 3); lr (0.0005 -> 0.002)")
    assert "resume=false" in proc.stderr
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == stored and metrics(tmp_path) == before
    ok(sweeper(*TINY, "epochs=2", "checkpoint_every=5", f"hydra.run.dir={tmp_path}"))  # no result key
    config = (tmp_path / ".hydra" / "config.yaml").read_text()
    (tmp_path / ".hydra" / "config.yaml").write_text(config.replace("pretrain_epochs: 50\n", ""))
    ok(sweeper(*TINY, "epochs=2", f"hydra.run.dir={tmp_path}"))  # a key this ViT does not use
    ok(sweeper(*TINY, "epochs=3", "resume=false", f"hydra.run.dir={tmp_path}"))
    assert len(metrics(tmp_path)) == 3 and list((tmp_path / ".previous").iterdir())


def test_the_stored_config_is_what_trained(tmp_path):
    ok(sweeper(*TINY, "patch=8", "heads=6", f"hydra.run.dir={tmp_path}"))
    config = yaml.safe_load((tmp_path / ".hydra" / "config.yaml").read_text())
    assert config["patch"] == 8 and config["heads"] == 6 and "patch" not in config["model"]
    assert yaml.safe_load((tmp_path / ".hydra" / "overrides.yaml").read_text())[-2:] == ["patch=8", "heads=6"]


def test_epochs_means_the_reported_phase_for_every_task(tmp_path):
    tiny = [a for a in TINY if not a.startswith("epochs")]
    ok(sweeper(*tiny, "model=vit", "task=scratch", "epochs=2", f"hydra.run.dir={tmp_path / 's'}"))
    assert summary(tmp_path / "s")["phases"]["train"]["epochs_done"] == 2
    ok(sweeper(*tiny, "model=vit", "task=rotation_probe", "epochs=2", "pretrain_epochs=1",
               f"hydra.run.dir={tmp_path / 'p'}"))
    s = summary(tmp_path / "p")
    assert s["task"] == "rotation_probe" and s["epochs_planned"] == 3
    assert {k: v["epochs_done"] for k, v in s["phases"].items()} == {"pretrain": 1, "finetune": 2}


def test_run_dir_names_leave_out_what_cannot_change_results(tmp_path):
    from helpers.files import make_tree

    tree = make_tree(tmp_path / "my data")
    tiny = [a for a in TINY if not a.startswith("data")]
    ok(sweeper(*tiny, "data=folder", f"data.root={tree}", f"data.cache_dir={tmp_path / 'c'}",
               "resume=true", "checkpoint_every=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", "-m"))
    (run,) = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]
    assert "data.root-my data-" in run.name and str(tmp_path).replace("/", "_") not in run.name
    assert "cache_dir" not in run.name and "resume" not in run.name and "checkpoint" not in run.name
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
