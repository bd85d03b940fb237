"""Hostile inputs and damaged files: nothing of the user's is deleted, no code runs from data,
no wrong number is tabled, one bad job does not stop a sweep, and every error is one line."""

import json
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
import tarfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.commands import ROOT, TINY, ok, run_dirs, summary, sweeper
from helpers.files import fake_run, make_tree, report, write_png
from helpers.in_process import execute_in_process, one_line_error
from analysis.collect import collect
from analysis.tables import build_tables
from sweeper.data import sources
from sweeper.data.batches import batch_bounds
from sweeper.data.sources import DataError
from sweeper.lock import EXPIRY_SECONDS, LOCK_FILE, run_lock
from sweeper.rundir import MAX_NAME_BYTES, run_name


# ---- data loss -----------------------------------------------------------------------------

def test_report_never_deletes_what_it_did_not_write(tmp_path):
    runs = tmp_path / "outputs"
    fake_run(runs, "multirun/patch-8", [0.4, 0.5], patch=8)
    fake_run(runs, "multirun/patch-16", [0.4, 0.6], patch=16)
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("my thesis")
    assert report(runs, "--out", str(thesis)).returncode == 0
    assert (thesis / "chapter1.tex").read_text() == "my thesis"
    assert (thesis / "report.md").exists() and (thesis / "runs.csv").exists()
    again = report(runs, "--out", str(thesis))  # a second report replaces its own files
    assert again.returncode == 0 and (thesis / "chapter1.tex").read_text() == "my thesis"

    (thesis / "report.md").unlink()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "report.md").write_text("my own report")
    one_line_error(report(runs, "--out", str(other)), 2, "not written by a report")
    assert (other / "report.md").read_text() == "my own report"
    assert sorted(p.name for p in other.iterdir()) == ["report.md"]

    one_line_error(report(runs, "--out", str(runs / "multirun/patch-8")), 2, "is a run directory")
    assert len(collect(runs).runs) == 2  # no run was touched


@pytest.mark.parametrize("resume", ["true", "false"])
def test_a_run_never_writes_into_or_moves_a_folder_of_the_users(tmp_path, resume):
    mine = tmp_path / "thesis"
    (mine / ".git").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "metrics.csv").write_text("my,own\n1,2\n")
    def contents():
        return sorted((p.relative_to(mine), p.read_bytes() if p.is_file() else b"")
                      for p in mine.rglob("*"))

    before = contents()
    one_line_error(sweeper(*TINY, f"hydra.run.dir={mine}", f"resume={resume}"), 2,
                   f"{mine} holds files no run wrote (.git, notes.txt): a run starts only in a new or empty")
    assert contents() == before


def test_a_run_starts_in_an_empty_folder_and_keeps_a_note_added_to_its_own(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ok(sweeper(*TINY, f"hydra.run.dir={run_dir}"))
    (run_dir / "note.txt").write_text("lr looked high")
    again = ok(sweeper(*TINY, f"hydra.run.dir={run_dir}", "resume=false"))
    assert "Epoch: 1" in again.stdout and summary(run_dir)["status"] == "complete"
    (kept,) = (run_dir / ".previous").iterdir()
    assert (kept / "note.txt").read_text() == "lr looked high"


# ---- code execution from data --------------------------------------------------------------

class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def test_cifar10_pickles_cannot_run_code(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(pickle.dumps(batch))
    _Exploit.marker = tmp_path / "pwned"
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [_Exploit()]}))
    with pytest.raises(DataError, match=r"batches.meta is not a CIFAR-10 python batch .*refused"):
        sources.cifar(tmp_path, sources.CIFAR10)
    assert not _Exploit.marker.exists()

    (base / "batches.meta").write_bytes(b"\x80\x04 garbage that is no pickle")
    with pytest.raises(DataError, match="batches.meta is not a CIFAR-10 python batch"):
        sources.cifar(tmp_path, sources.CIFAR10)
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"] * 10}))
    (base / "data_batch_3").write_bytes(pickle.dumps({b"data": "not pixels", b"labels": [0]}))
    with pytest.raises(DataError, match="data_batch_3 is not a CIFAR-10 python batch"):
        sources.cifar(tmp_path, sources.CIFAR10)


def test_bad_cifar10_root_is_one_line_from_the_cli(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (base / name).write_bytes(b"garbage")
    tiny = [a for a in TINY if not a.startswith("data")]
    proc = sweeper(*tiny, "data=cifar10", f"data.root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(proc, 2, "is not a CIFAR-10 python batch")
    assert not (tmp_path / "run").exists()


# ---- locks that never let go ---------------------------------------------------------------

def _write_lock(run_dir: Path, text: str, age: float = 0.0) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    path.write_text(text)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def test_a_lock_of_another_host_is_honoured_while_fresh_and_taken_over_once_stale(tmp_path, capsys):
    run_dir = tmp_path / "run"
    _write_lock(run_dir, "node-17 4242 -\n")
    with run_lock(run_dir) as held_by:
        assert held_by == "locked by pid 4242 on node-17"
    _write_lock(run_dir, "node-17 4242 -\n", age=EXPIRY_SECONDS + 5)
    with run_lock(run_dir) as held_by:
        assert held_by is None
        assert (run_dir / LOCK_FILE).read_text().split()[:2] == [socket.gethostname(), str(os.getpid())]
    assert "taking over the lock" in capsys.readouterr().out and not (run_dir / LOCK_FILE).exists()


def test_a_reused_live_pid_does_not_hold_a_lock_forever(tmp_path):
    run_dir = tmp_path / "run"  # our parent is alive, but nothing has refreshed this lock
    _write_lock(run_dir, f"{socket.gethostname()} {os.getppid()} -\n", age=EXPIRY_SECONDS + 1)
    with run_lock(run_dir) as held_by:
        assert held_by is None


def test_an_earlier_attempt_of_the_same_slurm_job_gives_way(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _write_lock(run_dir, "node-3 999 5150_2\n")  # fresh, another host: a node lost mid-job
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "5150")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    with run_lock(run_dir) as held_by:
        assert held_by is None
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")  # another task of the array: not the same job
    _write_lock(run_dir, "node-3 999 5150_2\n")
    with run_lock(run_dir) as held_by:
        assert held_by and "5150_2" in held_by


def test_the_holder_keeps_its_lock_fresh(tmp_path, monkeypatch):
    from sweeper import lock

    monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 0.05)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with run_lock(run_dir) as held_by:
        assert held_by is None
        old = time.time() - 100
        os.utime(run_dir / LOCK_FILE, (old, old))
        time.sleep(0.3)
        assert time.time() - (run_dir / LOCK_FILE).stat().st_mtime < 5


# ---- a sweep is not stopped by one bad job -------------------------------------------------

def test_invalid_jobs_are_all_named_before_any_job_starts(tmp_path):
    proc = sweeper(*TINY, "patch=8", "heads=4,7,6,9", f"hydra.sweep.dir={tmp_path / 'sweep'}", "-m")
    one_line_error(proc, 2, "2 of 4 runs of this sweep are invalid, so none was started: "
                   "[heads=7]: model.dim=120 is not allowed: a positive width divisible by heads=7; "
                   "[heads=9]: model.dim=120")
    assert run_dirs(tmp_path) == [] and "Epoch" not in proc.stdout


def test_a_launcher_told_to_run_no_jobs_at_once_is_one_line(tmp_path):
    proc = sweeper(*TINY, "patch=8,16", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", "-m")
    one_line_error(proc, 2, "hydra.launcher.n_jobs=0 is not allowed: 1 or more runs at once")
    assert not (tmp_path / "sweep").exists()


def test_a_job_failing_at_run_time_does_not_stop_the_sweep(tmp_path):
    tiny = [a for a in TINY if not a.startswith("data.n_train")]
    proc = sweeper(*tiny, "data.n_train=60", "task=scratch", "model=vit", "data.b_fraction=0.01,0.5",
                   f"hydra.sweep.dir={tmp_path}", "-m")
    assert proc.returncode == 1, proc.stderr
    assert "split B has 0 training image(s)" in proc.stderr
    assert "failed (its error is above); the other runs of the sweep went on" in proc.stderr
    (done,) = run_dirs(tmp_path)
    assert "b_fraction-0.5" in done.name and summary(done)["status"] == "complete"


# ---- wrong numbers in the report -----------------------------------------------------------

def test_runs_without_config_or_with_damaged_rows_are_skipped_and_a_torn_last_line_is_dropped(tmp_path):
    fake_run(tmp_path, "heads-4", [0.5, 0.6], heads=4)
    fake_run(tmp_path, "heads-6", [0.5, 0.62], heads=6)
    orphan = fake_run(tmp_path, "orphan", [0.9, 0.99], heads=8)
    (orphan / ".hydra" / "config.yaml").unlink()
    (orphan / ".hydra").rmdir()
    torn = fake_run(tmp_path, "torn", [0.5, 0.95], heads=10)
    with open(torn / "metrics.csv", "a") as f:
        f.write("train,3,1.0,0.4")  # killed mid-write
    garbage = fake_run(tmp_path, "garbage", [0.5, 0.97], heads=12)
    text = (garbage / "metrics.csv").read_text().replace(",0.97,", ",oops,")
    (garbage / "metrics.csv").write_text(text)
    col = collect(tmp_path)
    assert sorted(col.runs["run"]) == ["heads-4", "heads-6", "torn"]
    assert col.settings == ["heads"]  # the orphan does not make every key look varying
    assert sorted(col.runs["heads"].tolist()) == [4, 6, 10]
    torn_row = col.runs.set_index("run").loc["torn"]
    assert torn_row["epochs_done"] == 2 and torn_row["final_test_acc"] == 0.95  # as resume reads it
    (table,) = build_tables(col)
    assert list(table.stats["label"]) == ["heads=10", "heads=6", "heads=4"]  # ints, not 6.0
    problems = " ".join(col.problems)
    assert "orphan: no .hydra/config.yaml" in problems
    assert "garbage: metrics.csv line 3: a field that is not a number; skipped" in problems


def test_unfinished_runs_show_progress_and_never_win(tmp_path):
    fake_run(tmp_path, "patch-8", [0.4, 0.5, 0.5068], patch=8)
    fake_run(tmp_path, "patch-16", [0.5, 0.6, 0.6354], status="running", patch=16)  # killed at 3/25
    (summary_path := tmp_path / "patch-16" / "summary.json").write_text(
        json.dumps({"status": "running", "task": "classify", "epochs_planned": 25}))
    (table,) = build_tables(collect(tmp_path))
    assert table.verdict == "One setting only: nothing to compare."
    stats = table.stats.set_index("label")
    assert pd.isna(stats.loc["patch=16", "final_test_acc_mean"])
    assert stats.loc["patch=16", "statuses"] == "interrupted 3/25 epochs"
    assert summary_path.exists()
    lone = tmp_path / "lone"  # no complete run at all
    fake_run(lone, "patch-16", [0.4], status="running", patch=16)
    from analysis.tables import markdown

    (table,) = build_tables(collect(lone), reference=True)
    head, _, *rows = markdown(table).splitlines()
    assert head.split("|")[1:3] == [" setting ", " report final test acc "]
    assert all(len(r.split("|")) == len(head.split("|")) for r in rows)


def test_a_damaged_summary_is_listed(tmp_path):
    run = fake_run(tmp_path, "a", [0.5, 0.6])
    (run / "summary.json").write_text("{not json")
    col = collect(tmp_path)
    assert col.runs.loc[0, "status"] == "damaged"
    assert any("a: summary.json is damaged" in p for p in col.problems)


def test_non_finite_evaluation_is_divergence_and_json_stays_valid(tmp_path, monkeypatch):
    from sweeper.train import Evaluation, Trainer

    monkeypatch.setattr(Trainer, "evaluate", lambda self, *a, **k: Evaluation(
        float("nan"), 0.1, torch.zeros(10, 10, dtype=torch.long)))
    result = execute_in_process(tmp_path, [*TINY, "epochs=2"])
    assert result["status"] == "diverged" and result["detail"]["epoch"] == 1
    stored = json.loads((tmp_path / "run" / "summary.json").read_text())  # strict JSON
    assert stored["final_test_loss"] is None and stored["status"] == "diverged"
    assert "NaN" not in (tmp_path / "run" / "summary.json").read_text()


# ---- tracebacks that became one line -------------------------------------------------------

def test_an_empty_split_is_one_line_and_leaves_nothing(tmp_path):
    tiny = [a for a in TINY if not a.startswith("data.n_train")]
    proc = sweeper(*tiny, "data.n_train=60", "task=scratch", "model=vit", "data.b_fraction=0.01",
                   f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(proc, 2, "split B has 0 training image(s), too few to train on")
    assert not (tmp_path / "run").exists()


def test_a_last_batch_of_one_image_is_folded_into_the_one_before(tmp_path):
    assert batch_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert batch_bounds(9, 3) == [(0, 3), (3, 6), (6, 9)]
    assert batch_bounds(1, 3) == [(0, 1)]
    tiny = [a for a in TINY if not a.startswith(("data.n_", "model.", "batch_size"))]
    ok(sweeper(*tiny, "task=scratch", "model=resnet18", "model.stem=imagenet", "data.n_train=50",
               "data.n_test=10", "batch_size=3", f"hydra.run.dir={tmp_path / 'run'}"))
    assert summary(tmp_path / "run")["status"] == "complete"  # B has 10 images: 3 + 3 + 4


def test_an_unwritable_cache_is_a_warning_and_the_run_goes_on(tmp_path):
    tree = make_tree(tmp_path / "tree")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    tiny = [a for a in TINY if not a.startswith("data")]
    proc = ok(sweeper(*tiny, "data=folder", f"data.root={tree}", f"data.cache_dir={blocker}/cache",
                      f"hydra.run.dir={tmp_path / 'run'}"))
    assert "warning: cannot write the image cache" in proc.stderr
    assert summary(tmp_path / "run")["status"] == "complete"


def test_an_unwritable_run_directory_is_one_line(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    one_line_error(sweeper(*TINY, f"hydra.run.dir={blocker}/run"), 1, "cannot write the output folder")
    one_line_error(sweeper(*TINY, "patch=8,16", f"hydra.sweep.dir={blocker}/sweep", "-m"), 1,
                   "cannot write the output folder")


@pytest.mark.parametrize("override,message", [
    (["+foo=1"], "foo is not a key of this config"),
    (["seed=123456789012345678901234567890"], "seed=123456789012345678901234567890 is not allowed"),
    (["seed=-1"], "seed=-1 is not allowed: an integer from 0 to 4294967295"),
    (["seed=4294967297"], "seed=4294967297 is not allowed: an integer from 0 to 4294967295"),
    (["data.split_seed=4294967296"], "data.split_seed=4294967296 is not allowed: an integer from 0"),
    (["cls_layer=true"], "cls_layer=True is not allowed: first, last or a block index from 0 to 2"),
    (["cls_layer=false"], "cls_layer=False is not allowed: first, last or a block index"),
    (["cls_layer=1.0"], "cls_layer=1.0 is not allowed: first, last or a block index"),
    (["lr=nan"], "lr=nan is not allowed: a finite number"),
    (["lr=inf"], "lr=inf is not allowed: a finite number"),
    (["warmup_epochs=nan"], "warmup_epochs=nan is not allowed: a finite number"),
    (["warmup_epochs=inf"], "warmup_epochs=inf is not allowed: a finite number"),
    (["weight_decay=nan"], "weight_decay=nan is not allowed: a finite number"),
    (["model.mlp_ratio=nan"], "model.mlp_ratio=nan is not allowed: a finite number"),
    (["checkpoint_every=nan"], "checkpoint_every=nan is not allowed: a finite number"),
    (["+model.patch=8"], "model.patch is not a key of model=vit: it is set at the top level, e.g. patch=8"),
    (["task=scratch", "model=vit", "+task.freeze_encoder=true"], "task.freeze_encoder is not valid for task=scratch"),
    (["task=scratch", "model=vit", "pretrain_epochs=3"], "pretrain_epochs is not used by model=vit task=scratch"),
    (["model=resnet18", "patch=8"], "patch is not used by model=resnet18 task=classify"),
])
def test_unknown_keys_and_out_of_range_integers_are_one_line(tmp_path, override, message):
    tiny = [a for a in TINY if not a.startswith("model.")] if "model=resnet18" in override else TINY
    one_line_error(sweeper(*tiny, *override, f"hydra.run.dir={tmp_path / 'run'}"), 2, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,message", [
    (["epoch=3"], "epoch is not a key of this config (did you mean epochs?)"),
    (["model.dimm=3"], "model.dimm is not a key of model=vit (did you mean dim?): its keys are dim, depth"),
    (["model=resnet18", "model.dim=120"], "model.dim is not a key of model=resnet18: its keys are stem"),
    (["patch=abc"], "patch='abc' is not allowed: an integer"),
    (["lr=fast"], "lr='fast' is not allowed: a number"),
    (["compile=maybe"], "compile='maybe' is not allowed: true or false"),
    (["model=vitt"], "model='vitt' is not allowed: one of resnet18, timm, torchvision, vit"),
    (["hydra/launcher=nope"], "hydra/launcher='nope' is not allowed: one of basic, joblib"),
    (["model.dim=[1,2"], "cannot read the override 'model.dim=[1,2'"),
    (["lr=${nope}"], "cannot resolve the config: Interpolation key 'nope' not found"),
    (["hydra/launcher=joblib", "hydra.launcher.n_jobz=2"],
     "hydra.launcher.n_jobz is not a key of hydra.launcher (did you mean n_jobs?)"),
    (["hydra/sweeper=optuna", "hydra.sweeper.params.lr=abc"],
     "hydra.sweeper.params.lr is not a key of hydra.sweeper.params: it is empty; add the key with "
     "+hydra.sweeper.params.lr="),
    (["experiment=patch"], "experiment has no default to override: choose one with +experiment=NAME"),
])
@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_overrides_hydra_refuses_are_one_line_not_its_advice(tmp_path, override, message, mode):
    """Hydra's own errors (several lines, "To append to your config use +...") become one line
    naming the value and what is allowed; a sweep with one launches and writes nothing."""
    tiny = [a for a in TINY if not a.startswith("model.")] if "model=resnet18" in override else TINY
    where = [f"hydra.run.dir={tmp_path / 'out'}"] if mode == "run" else [
        "seed=0,1", f"hydra.sweep.dir={tmp_path / 'out'}", "-m"]
    proc = sweeper(*tiny, *override, *where, cwd=tmp_path)
    one_line_error(proc, 2, message)
    if "+" not in message:  # no advice to add a misspelt key
        assert "+" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_typed_without_m_says_to_add_it(tmp_path):
    proc = sweeper(*TINY, "patch=8,16", cwd=tmp_path)
    one_line_error(proc, 2, "patch=8,16 is a sweep: add -m to run one job per value")
    assert list(tmp_path.iterdir()) == []


def test_hydra_full_error_still_shows_hydras_trace(tmp_path):
    proc = sweeper(*TINY, "epoch=3", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigCompositionException" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_run_names_are_capped_readable_and_distinct():
    long = [f"+cell{i}={'x' * 40}" for i in range(10)]
    name = run_name(long)
    assert len(name.encode()) <= MAX_NAME_BYTES and name.startswith("cell0-xxxx") and "~" in name
    assert run_name(long[:-1] + ["+cell9=y"]) != name
    assert run_name(["patch=8", "patch=16"]) == "patch-16" != run_name(["patch=16", "patch=8"])
    assert run_name(["resume=false", "data.cache_dir=/tmp/c", "checkpoint_every=5"]) == "default"


def test_bench_accuracy_bad_input_is_one_line(tmp_path):
    def bench(*args):
        return subprocess.run([sys.executable, "-m", "sweeper.bench", "accuracy", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    one_line_error(bench("--epochs", "0"), 2, "'0' is not allowed: a positive integer")
    one_line_error(bench("--out", str(tmp_path), "patch=5", *TINY), 2, "patch=5 is not allowed")
    one_line_error(bench("--out", str(tmp_path), "model=vitt"), 2, "model='vitt' is not allowed: one of")


@pytest.mark.parametrize("args, message", [
    (["--reference", "nope"], "argument --reference: invalid choice: 'nope' (choose from 'seed')"),
    (["--bogus"], "unrecognized arguments: --bogus (see python -m analysis.report --help)"),
    (["--out"], "argument --out: expected one argument"),
])
def test_report_bad_arguments_are_one_line(tmp_path, args, message):
    fake_run(tmp_path, "run", [0.4, 0.5])
    one_line_error(report(tmp_path, *args), 2, message)
    assert not (tmp_path / "report").exists()


def test_a_run_directory_given_as_the_reports_folder_is_named_as_such(tmp_path):
    run = fake_run(tmp_path, "run", [0.4, 0.5])
    one_line_error(report(run, "--out", str(run)), 2, f"--out {run} is a run directory")


# ---- misleading ----------------------------------------------------------------------------

def test_decode_errors_name_the_file_and_the_member(tmp_path):
    tree = make_tree(tmp_path / "tree")
    (tree / "train" / "ant" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"train/ant/bad.png cannot be decoded: not an image"):
        sources.folder(tree, tmp_path / "cache")
    with tarfile.open(tmp_path / "t.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname="cifar")
    with pytest.raises(DataError, match=r"t.tar.gz:cifar/train/ant/bad.png cannot be decoded"):
        sources.folder(tmp_path / "t.tar.gz", tmp_path / "cache")


def _png_header(side: int) -> bytes:
    """A 60-byte PNG that claims side x side pixels: what a decompression bomb looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side, message", [
    (12000, "huge.png: images must be 32x32, found 12000x12000"),  # 432 MB if it were decoded
    (100000, "huge.png cannot be decoded: Image size (10000000000 pixels) exceeds limit"),
])
def test_an_image_claiming_a_huge_size_is_refused_from_its_header(tmp_path, side, message):
    tree = make_tree(tmp_path / "tree")
    (tree / "train" / "ant" / "huge.png").write_bytes(_png_header(side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning: nothing is decoded
        with pytest.raises(DataError, match=re.escape(message)):
            sources.folder(tree, tmp_path / "cache")


def test_a_folder_and_its_tarball_give_the_same_order_whatever_the_member_order(tmp_path):
    tree = make_tree(tmp_path / "tree", per_class=4)
    write_png(torch.full((3, 32, 32), 7, dtype=torch.uint8), tree / "train" / "ant" / "10.png")
    with tarfile.open(tmp_path / "t.tar.gz", "w:gz") as tar:  # members in reverse order
        for path in sorted(tree.rglob("*.png"), reverse=True):
            tar.add(path, arcname=f"cifar/{path.relative_to(tree)}")
    a = sources.folder(tree, tmp_path / "cache")
    b = sources.folder(tmp_path / "t.tar.gz", tmp_path / "cache")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.x_test, b.x_test)


def test_a_tampered_report_list_removes_nothing_outside_the_reports_own_files(tmp_path):
    runs = tmp_path / "outputs"
    fake_run(runs, "multirun/patch-8", [0.4, 0.5], patch=8)
    out = tmp_path / "site" / "report"
    assert report(runs, "--out", str(out)).returncode == 0
    keep = tmp_path / "site" / "keep"
    keep.mkdir()
    (keep / "victim.txt").write_text("mine")
    (out / "notes").mkdir()
    (out / "notes" / "a.png").write_text("mine")
    absolute = tmp_path / "absolute.png"
    absolute.write_text("mine")
    (out / "link.png").symlink_to(absolute)
    with open(out / ".report-files", "a") as f:
        f.write(f"../keep/victim.txt\n{absolute}\nnotes\nlink.png\n..\n.report-files\n")
    assert report(runs, "--out", str(out)).returncode == 0
    assert (keep / "victim.txt").read_text() == "mine" and absolute.read_text() == "mine"
    assert (out / "notes" / "a.png").exists() and (out / "link.png").is_symlink()


def test_a_report_that_cannot_be_written_is_one_line_and_leaves_the_old_one(tmp_path, monkeypatch, capsys):
    from analysis import plots
    from analysis.report import main

    runs = tmp_path / "outputs"
    fake_run(runs, "multirun/patch-8", [0.4, 0.5], patch=8)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    one_line_error(report(runs, "--out", str(blocker / "report")), 1, "cannot write the report to")
    out = tmp_path / "report"
    assert report(runs, "--out", str(out)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "run_times", full_disk)
    assert main([str(runs), "--out", str(out)]) == 1  # a storage error, as the run's own
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the report to") and "No space left" in err
    assert err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".report-*"))  # no staging folder left behind


def _odd_lock(run_dir: Path, kind: str) -> None:
    path = run_dir / LOCK_FILE
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling symlink":
        path.symlink_to(run_dir / "nowhere")
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage\x80")
    else:  # an absurd pid
        path.write_text(f"{socket.gethostname()} {kind} -\n")


ODD_LOCKS = ["directory", "fifo", "dangling symlink", "binary", "-5", "0", str(10**20)]


@pytest.mark.parametrize("kind", ODD_LOCKS)
def test_an_odd_lock_is_one_line_never_a_hang_and_stale_after_the_expiry(tmp_path, kind, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _odd_lock(run_dir, kind)
    start = time.time()
    with run_lock(run_dir) as held_by:  # fresh: someone may be writing it; the run is skipped
        assert held_by and "contended" not in held_by
    assert time.time() - start < 5
    old = time.time() - EXPIRY_SECONDS - 5
    os.utime(run_dir / LOCK_FILE, (old, old), follow_symlinks=False)
    with run_lock(run_dir) as held_by:  # expired: taken over, whatever it was
        assert held_by is None
        assert (run_dir / LOCK_FILE).read_text().split()[1] == str(os.getpid())
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "taking over" in x]
    assert "not refreshed for" in line
    assert not (run_dir / LOCK_FILE).exists()


def test_a_fifo_lock_neither_blocks_the_run_nor_the_report(tmp_path):
    run_dir = tmp_path / "outputs" / "run"
    ok(sweeper(*TINY, "epochs=2", f"hydra.run.dir={run_dir}"))
    (run_dir / "summary.json").write_text(json.dumps({"status": "running"}))  # as if killed
    os.mkfifo(run_dir / LOCK_FILE)
    assert report(tmp_path / "outputs", "--out", str(tmp_path / "report")).returncode == 0
    again = sweeper(*TINY, "epochs=2", f"hydra.run.dir={run_dir}", timeout=120)
    assert again.returncode == 0
    assert ".lock is a FIFO, not a lock file: it is taken over once 60 s old: skipped" in again.stdout


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


def test_a_billion_laughs_config_is_refused_at_once_by_the_report_and_the_run(tmp_path):
    fake_run(tmp_path / "outputs", "good", [0.5, 0.6], heads=4)
    bomb = fake_run(tmp_path / "outputs", "bomb", [0.5, 0.9], heads=6)
    (bomb / ".hydra" / "config.yaml").write_text(LAUGHS)
    start = time.time()
    col = collect(tmp_path / "outputs")
    assert list(col.runs["run"]) == ["good"] and time.time() - start < 10
    assert "bomb: .hydra/config.yaml has YAML aliases, which no run writes; skipped" in col.problems
    run_dir = tmp_path / "run"
    ok(sweeper(*TINY, f"hydra.run.dir={run_dir}", "resume=true"))
    (run_dir / ".hydra" / "config.yaml").write_text(LAUGHS)
    (run_dir / "summary.json").write_text(json.dumps({"status": "running"}))
    one_line_error(sweeper(*TINY, f"hydra.run.dir={run_dir}", timeout=60), 2,
                   "config.yaml has YAML aliases, which no run writes: rerun with resume=false")


def test_an_invalid_rerun_beside_a_running_one_leaves_its_folder_config_and_lock(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("lr: 0.0005\n")  # the first run, loading data
    (run_dir / LOCK_FILE).write_text(f"{socket.gethostname()} {os.getppid()} -\n")
    one_line_error(sweeper(*TINY, "lr=-1", f"hydra.run.dir={run_dir}"), 2, "lr=-1.0 is not allowed")
    assert (run_dir / LOCK_FILE).exists() and (run_dir / ".hydra" / "config.yaml").exists()
    one_line_error(sweeper(*TINY, "lr=-1", f"hydra.run.dir={tmp_path / 'fresh'}"), 2, "lr=-1.0")
    assert not (tmp_path / "fresh").exists()  # what this process made alone is removed


def test_a_failed_first_run_leaves_no_empty_outputs_folder_where_it_was_started(tmp_path):
    one_line_error(sweeper(*TINY, "lr=-1", cwd=tmp_path), 2, "lr=-1.0 is not allowed")
    assert list(tmp_path.iterdir()) == []  # Hydra's outputs/runs/NAME/ went, and its parents
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "notes.txt").write_text("mine")
    one_line_error(sweeper(*TINY, "lr=-1", cwd=tmp_path), 2, "lr=-1.0 is not allowed")
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["notes.txt"]


GOOD_STUDY = {"study": "s", "space": {"lr": "log-uniform"}, "trials": {"complete": 1},
              "best": {"trial": 0, "val_acc": 0.5, "test_acc": 0.5, "params": {"lr": 0.001}},
              "importances": {"lr": 1.0}}
GOOD_TRIALS = "trial,state,run_dir,val_acc,test_acc,lr,seconds\n0,complete,t0,0.5,0.5,0.001,60\n"


@pytest.mark.parametrize("about,trials,problem", [
    ([1, 2], GOOD_TRIALS, "study.json is not an object"),
    ({**GOOD_STUDY, "best": {"trial": 0}}, GOOD_TRIALS, "study.json's best lacks"),
    ({**GOOD_STUDY, "space": "lr"}, GOOD_TRIALS, "study.json's space is not a dict"),
    ({**GOOD_STUDY, "importances": {"lr": "high"}}, GOOD_TRIALS, "study.json's importances are not numbers"),
    (GOOD_STUDY, "trial,state\n0,complete\n", "study.csv lacks columns run_dir, val_acc, test_acc"),
    (GOOD_STUDY, GOOD_TRIALS.replace("0.5,0.5", "oops,0.5"), "study.csv's val_acc column is not numeric"),
    (GOOD_STUDY, GOOD_TRIALS, None),
])
def test_a_study_of_a_foreign_shape_is_skipped_and_the_rest_reported(tmp_path, about, trials, problem):
    runs = tmp_path / "outputs"
    fake_run(runs, "multirun/patch-8", [0.4, 0.5], patch=8)
    (runs / "study").mkdir()
    (runs / "study" / "study.json").write_text(json.dumps(about))
    (runs / "study" / "study.csv").write_text(trials)
    proc = report(runs, "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    if problem is None:  # the shape the search writes
        assert "skipped" not in proc.stdout, proc.stdout
    else:
        assert f"skipped: study: study {problem}" in proc.stdout
    assert "study" in (tmp_path / "report" / "report.md").read_text()


def test_the_same_run_reached_twice_counts_once_in_a_mean(tmp_path):
    for seed, accs in enumerate([[0.5, 0.60], [0.5, 0.62]]):
        fake_run(tmp_path, f"multirun/patch-16+seed-{seed}", accs, patch=16, seed=seed)
    fake_run(tmp_path, "runs/patch-16", [0.5, 0.60], patch=16, seed=0)  # seed 0 again
    fake_run(tmp_path, "multirun/patch-8", [0.5, 0.70], patch=8)
    col = collect(tmp_path)
    assert sorted(col.runs["run"]) == ["multirun/patch-16+seed-0", "multirun/patch-16+seed-1",
                                       "multirun/patch-8"]
    assert col.problems == ["runs/patch-16: the same config and seed as multirun/patch-16+seed-0: "
                            "counted once, as multirun/patch-16+seed-0"]
    (table,) = build_tables(col)
    assert table.stats.set_index("label").loc["patch=16", "final_test_acc_n"] == 2
