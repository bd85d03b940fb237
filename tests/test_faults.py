"""Scale-out and fault tolerance: resume after kill -9 and SIGTERM, divergence, corrupt
checkpoints, two writers, parallel launchers, full disks, and the presets."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir

from helpers.commands import (
    ROOT, SLOW, TINY, metrics, ok, run_dirs, scores, start_and_signal, summary, sweeper,
)
from sweeper.config import register_configs, validate
from sweeper.errors import StorageError
from sweeper.lock import run_lock
from sweeper.train import Preemption

def test_kill_9_then_rerun_resumes_without_repeated_rows(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    start_and_signal(run_dir, signal.SIGKILL).wait()
    assert len(metrics(run_dir)) < 3 and summary(run_dir)["status"] == "running"
    again = ok(sweeper(*SLOW, f"hydra.run.dir={run_dir}"))
    assert "Epoch: 1 |" not in again.stdout  # resumed, not restarted
    assert scores(run_dir) == uninterrupted
    assert summary(run_dir)["status"] == "complete"
    assert not (run_dir / ".lock").exists()


def test_a_line_torn_by_the_kill_does_not_stop_the_resume(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    start_and_signal(run_dir, signal.SIGKILL).wait()
    with open(run_dir / "metrics.csv", "a") as f:
        f.write("train,2,0.93")  # the kill came in the middle of writing a row
    ok(sweeper(*SLOW, f"hydra.run.dir={run_dir}"))
    assert scores(run_dir) == uninterrupted


def test_sigterm_mid_epoch_checkpoints_exits_cleanly_and_resumes(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = start_and_signal(run_dir, signal.SIGTERM)  # in epoch 2: stops after the current step
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "pre-empted: rerun the same command to resume" in out
    assert summary(run_dir)["status"] == "preempted"
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["position"]["epoch"] == 1 and state["position"]["step"] >= 0
    ok(sweeper(*SLOW, f"hydra.run.dir={run_dir}"))
    assert scores(run_dir) == uninterrupted


def test_ctrl_c_is_a_stop_that_checkpoints_and_resumes(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = start_and_signal(run_dir, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "pre-empted: rerun the same command to resume" in out
    assert summary(run_dir)["status"] == "preempted"
    ok(sweeper(*SLOW, f"hydra.run.dir={run_dir}"))
    assert scores(run_dir) == uninterrupted


def test_a_second_stop_signal_during_the_hand_off_is_ignored():
    """The run caught one signal and saved itself; the earlier handler (submitit's, which dumps
    the job and requeues it) runs once even if another signal lands while it works."""
    calls = []

    def earlier(signum, frame):
        calls.append(signum)
        os.kill(os.getpid(), signal.SIGUSR2)  # e.g. SLURM's own warning, mid-dump

    old = signal.signal(signal.SIGUSR2, earlier)
    try:
        preemption = Preemption()
        with preemption.watch():
            os.kill(os.getpid(), signal.SIGUSR2)
        preemption.hand_off()
        assert signal.getsignal(signal.SIGUSR2) is earlier  # handed back afterwards
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert calls == [signal.SIGUSR2]


def test_truncated_checkpoint_is_moved_aside_and_the_run_completes(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    start_and_signal(run_dir, signal.SIGKILL).wait()
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    again = ok(sweeper(*SLOW, f"hydra.run.dir={run_dir}"))
    assert "checkpoint" in again.stdout and "unreadable" in again.stdout
    assert list(run_dir.glob("checkpoint.pt.corrupt-*"))
    assert scores(run_dir) == uninterrupted  # restarted from scratch, rows not repeated


def test_divergence_stops_that_run_and_the_sweep_goes_on(tmp_path):
    proc = ok(sweeper(*TINY, "epochs=2", "lr=1e-3,1e9", f"hydra.sweep.dir={tmp_path}", "-m"))
    by_lr = {summary(d)["status"]: d for d in run_dirs(tmp_path)}
    assert set(by_lr) == {"complete", "diverged"}
    diverged = summary(by_lr["diverged"])
    assert diverged["detail"]["epoch"] == 1 and diverged["detail"]["step"] >= 0
    assert "run diverged" in proc.stdout
    rerun = ok(sweeper(*TINY, "epochs=2", "lr=1e-3,1e9", f"hydra.sweep.dir={tmp_path}", "-m"))
    assert rerun.stdout.count("skipped") == 2


@pytest.mark.parametrize("launcher", [
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    ["hydra/launcher=submitit_local"],  # one local process per run, all at once
])
def test_parallel_launchers_produce_complete_runs(tmp_path, launcher):
    ok(sweeper(*TINY, "patch=4,8", *launcher, f"hydra.sweep.dir={tmp_path}", "-m"))
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 2
    assert all(summary(d)["status"] == "complete" and len(metrics(d)) == 1 for d in dirs)


def test_the_same_sweep_started_twice_writes_each_run_once(tmp_path):
    args = [sys.executable, "-m", "sweeper", *TINY, "epochs=2", "patch=4,8,16",
            f"hydra.sweep.dir={tmp_path}", "-m"]
    procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 3
    for d in dirs:
        assert [r["epoch"] for r in metrics(d)] == ["1", "2"]
        assert summary(d)["status"] == "complete"
    trained = sum(o.count("Epoch: 1 |") for o in outs)
    assert trained == 3  # each run trained by exactly one of the two


def test_live_lock_skips_and_stale_lock_is_taken_over(tmp_path):
    import socket

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text(f"{socket.gethostname()} {os.getppid()}\n")  # alive
    with run_lock(run_dir) as held_by:
        assert held_by and str(os.getppid()) in held_by
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / ".lock").write_text(f"{socket.gethostname()} {dead.pid}\n")
    with run_lock(run_dir) as held_by:
        assert held_by is None
        assert (run_dir / ".lock").read_text().split()[1] == str(os.getpid())
    assert not (run_dir / ".lock").exists()


def test_full_disk_is_a_clear_message_and_written_files_stay_valid(tmp_path, monkeypatch):
    from sweeper import records
    from sweeper.run import execute

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "epochs=3", "checkpoint_every=0"])
    real = records.append_row

    def append_then_fail(run_dir, row):
        if row["epoch"] == 2:
            raise OSError(28, "No space left on device")
        real(run_dir, row)

    monkeypatch.setattr(records, "append_row", append_then_fail)
    with pytest.raises(StorageError) as error:
        execute(validate(cfg), tmp_path / "run")
    assert error.value.code == 1
    assert error.value.line == f"error: cannot write {tmp_path / 'run'}: No space left on device"
    assert len(metrics(tmp_path / "run")) == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs_done"] == 1
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["position"]["epoch"] == 1


@pytest.mark.parametrize("group,cell", [(group, p.stem) for group in ("cell", "cpu_reference")
                                        for p in sorted((ROOT / "conf" / group).glob("*.yaml"))])
def test_every_preset_cell_composes_and_validates(group, cell):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"+{group}={cell}"])
    s = validate(cfg)
    resnet = cell in ("rotation_finetune", "rotation_probe", "scratch") or cell.startswith("partA_")
    assert (s.model.name == "resnet18") == resnet


@pytest.mark.parametrize("preset,sweeps", [
    ("patch", {"patch": "4,8,16", "overlap": "none,half"}),
    ("heads", {"heads": "4,6,8,10,12"}),
    ("cls_layer", {"cls_layer": "first,last"}),
    ("rotation", {"task": "rotation_pretrain,rotation_probe,scratch"}),
    ("assignment", {"+cell": "glob(*)"}),
    ("cpu_reference", {"+cpu_reference": "glob(*)"}),
])
def test_presets_define_the_reports_sweeps(preset, sweeps):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={preset}"], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == sweeps


def test_rotation_preset_with_seeds_runs_every_arm(tmp_path):
    ok(sweeper("+experiment=rotation", "model=vit", *TINY, "pretrain_epochs=1", "seed=0,1",
               f"hydra.sweep.dir={tmp_path}", "-m"))
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 6
    kinds = sorted(summary(d)["task"] for d in dirs)
    assert kinds == ["rotation_pretrain"] * 2 + ["rotation_probe"] * 2 + ["scratch"] * 2


def test_submitits_handler_runs_only_after_the_run_says_preempted(tmp_path, monkeypatch):
    # submitit's interrupt sends TERM, then USR2 a moment later: the second may land after the
    # training loop stopped but before the run's files are written. Its handler (requeue, exit)
    # must still run only once the summary says "preempted".
    from sweeper import run as run_module
    from sweeper import train

    seen = []

    def submitit_usr2(signum, frame):  # stands in for submitit's checkpoint-and-requeue
        seen.append(json.loads((tmp_path / "run" / "summary.json").read_text())["status"])
        raise SystemExit(-1)

    real_step, real_fit = train.train_step, train.Trainer.fit
    steps = []

    def step_then_term(*args, **kwargs):
        steps.append(1)
        if len(steps) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*args, **kwargs)

    def fit_then_usr2(self, phases):
        outcome = real_fit(self, phases)
        os.kill(os.getpid(), signal.SIGUSR2)  # after the loop, before the summary is written
        return outcome

    monkeypatch.setattr(train, "train_step", step_then_term)
    monkeypatch.setattr(train.Trainer, "fit", fit_then_usr2)
    previous = signal.signal(signal.SIGUSR2, submitit_usr2)
    try:
        register_configs()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[*TINY, "epochs=2"])
        with pytest.raises(SystemExit):
            run_module.run(validate(cfg), tmp_path / "run", cfg, [*TINY, "epochs=2"])
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == ["preempted"]


@pytest.mark.parametrize("donor,reason", [
    (["patch=16"], "holds another model's weights"),
    (["epochs=4"], "stands at epoch 4 of phase 0, past what this run plans (train: 2 epochs)"),
])
def test_a_checkpoint_that_is_not_this_runs_is_moved_aside_not_resumed(tmp_path, donor, reason):
    other, run_dir = tmp_path / "other", tmp_path / "run"
    ok(sweeper(*TINY, "patch=8", "epochs=2", *donor, f"hydra.run.dir={other}"))
    ok(sweeper(*TINY, "patch=8", "epochs=2", f"hydra.run.dir={run_dir}"))
    expected = scores(run_dir)
    for name in ("checkpoint.pt", "summary.json"):
        (run_dir / name).write_bytes((other / name).read_bytes())
    (run_dir / "summary.json").write_text(json.dumps({"status": "running"}))
    again = ok(sweeper(*TINY, "patch=8", "epochs=2", f"hydra.run.dir={run_dir}"))
    (line,) = [x for x in again.stdout.splitlines() if x.startswith("warning: checkpoint")]
    assert reason in line and "moved to checkpoint.pt.corrupt-" in line
    assert scores(run_dir) == expected and summary(run_dir)["epochs_done"] == 2


def test_a_disk_that_fills_during_a_checkpoint_write_is_one_line(tmp_path, monkeypatch):
    from sweeper import atomic
    from sweeper.run import execute

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "epochs=3", "checkpoint_every=0"])

    class FillsUp:
        """A file on a disk with 1,000 bytes left."""

        def __init__(self, f):
            self.f, self.left = f, 1000

        def write(self, data):
            if len(data) > self.left:
                raise OSError(28, "No space left on device")
            self.left -= len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = open

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FillsUp(f) if ".checkpoint.pt." in str(path) else f

    monkeypatch.setattr(atomic, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(StorageError) as error:
        execute(validate(cfg), tmp_path / "run")
    assert error.value.code == 1
    line = error.value.line
    assert "\n" not in line and "No space left on device" in line and "unexpected pos" not in line
    assert not list((tmp_path / "run").glob(".checkpoint.pt.*"))  # no half-written file left
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_a_signal_to_a_joblib_sweep_preempts_its_workers_runs_and_leaves_no_worker(tmp_path):
    """`timeout`, `kill` and schedulers signal only the sweep's main process: its workers'
    runs must still checkpoint, record `preempted` and start no further run."""
    sweep = tmp_path / "sweep"
    slow = [a.replace("epochs=3", "epochs=12") for a in SLOW]
    command = [*slow, "seed=0,1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
               f"hydra.sweep.dir={sweep}", "-m"]
    proc = subprocess.Popen([sys.executable, "-m", "sweeper", *command], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while len(list(sweep.glob("*/checkpoint.pt"))) < 2:  # both workers are training
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    workers = [int((d / ".lock").read_text().split()[1]) for d in sweep.glob("*/") if (d / ".lock").exists()]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "error: the sweep was stopped by SIGTERM: 2 running run(s) checkpointed" in out
    assert "Traceback" not in out
    runs = run_dirs(sweep)
    assert [summary(r)["status"] for r in runs] == ["preempted", "preempted"]  # seed 2 not begun
    assert all(summary(r)["epochs_done"] < 12 for r in runs)
    time.sleep(1)
    for pid in workers:  # no worker outlives the sweep
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    ok(sweeper(*command, timeout=600))  # the same command resumes the sweep
    assert [(summary(r)["status"], len(metrics(r))) for r in run_dirs(sweep)] == [("complete", 12)] * 3


def test_tensorboard_after_kill_9_and_resume_holds_each_step_once(tmp_path, uninterrupted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    start_and_signal(run_dir, signal.SIGKILL, ("logger=tensorboard",)).wait()
    ok(sweeper(*SLOW, "logger=tensorboard", f"hydra.run.dir={run_dir}"))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/test_acc")]
    assert logged == [(int(r[1]), pytest.approx(float(r[5]))) for r in uninterrupted]
