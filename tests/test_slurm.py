"""The cluster path on a real SLURM: a throw-away one-node cluster (tests/slurm/cluster.sh) runs
sweeps through hydra/launcher=slurm_cpu; time limits and pre-emption are sent the way submitit
sends them, and every assertion is on the run directories. Skipped without SLURM's daemons."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.commands import ROOT, SLOW, TINY, ok, run_dirs, scores, summary, sweeper
from helpers.files import report


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not (shutil.which("slurmctld") and shutil.which("munged")
                            and hasattr(os, "geteuid") and os.geteuid() == 0),
                       reason="needs SLURM (slurmctld, slurmd, munge, slurm-client) and root"),
]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
# Long enough (a few seconds an epoch) for a signal to land mid-run on the cluster.
LONG = [a for a in SLOW if not a.startswith(("data.n_train", "epochs"))] + ["data.n_train=2000", "epochs=6"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[list[str]]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    ok(sweeper(*LONG, f"hydra.run.dir={run_dir}"))
    return scores(run_dir)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a cluster started for this module, stopped after it."""
    folder = tmp_path_factory.mktemp("slurm")
    out = subprocess.run([str(CLUSTER), "start", str(folder)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    conf = out.stdout.strip().split("=", 1)[1]
    yield {**os.environ, "SLURM_CONF": conf, "PYTHONUNBUFFERED": "1"}
    subprocess.run([str(CLUSTER), "stop", str(folder)], timeout=60)


def launch(env: dict, sweep_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweeper", *args, "hydra/launcher=slurm_cpu",
                             f"hydra.sweep.dir={sweep_dir}", "-m"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def job_id(sweep_dir: Path) -> str:
    """The SLURM id (array job_task) of the sweep's one job, from submitit's log names."""
    logs = list((sweep_dir / ".submitit").glob("*/*_log.out"))
    wait_for(lambda: logs or logs.extend((sweep_dir / ".submitit").glob("*/*_log.out")), "job log")
    return logs[0].name.removesuffix("_log.out").rsplit("_", 1)[0]  # <job>_<task rank>_log.out


def command(env: dict, *cmd: str) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr}"
    return done.stdout


def state(env: dict, job: str) -> str:
    return command(env, "squeue", "-h", "-j", job, "-o", "%T")


def requeued_now(env: dict, job: str) -> None:
    """Wait for the requeued job to pend, then let it start now: SLURM holds a requeued job
    for about two minutes, which is the scheduler's, not the run's, time. Not before the next
    second: slurmd refuses a launch whose credential is not newer, to the second, than the kill
    of the last attempt ("Job already killed"), and submitit, without accounting, then waits
    for ever. The release is repeated every 2 s until the job leaves PENDING."""
    wait_for(lambda: "PENDING" in state(env, job), "requeue")
    time.sleep(1.05 - time.time() % 1)

    def released() -> bool:
        if "PENDING" not in state(env, job):
            return True
        command(env, "scontrol", "update", f"JobId={job}", "StartTime=now")
        time.sleep(2)
        return False

    wait_for(released, "the requeued job to start")


def ended(env: dict, proc: subprocess.Popen, job: str) -> str:
    """The sweep's output once its process ends; if it does not within 300 s, the failure
    says where the job stands and what slurmd logged."""
    try:
        return proc.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        show = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True,
                              text=True, timeout=60).stdout
        slurmd = (Path(env["SLURM_CONF"]).parent / "slurmd.log").read_text().splitlines()[-20:]
        pytest.fail(f"the sweep did not end in 300 s\n{show}\nslurmd:\n" + "\n".join(slurmd)
                    + f"\nsweep:\n{out[-3000:]}")


def interrupted_mid_run(env, tmp_path, *extra: str) -> tuple[subprocess.Popen, Path, str]:
    """A slow run on the cluster, with its first checkpoint on disk."""
    proc = launch(env, tmp_path, *LONG, *extra)
    wait_for(lambda: any(tmp_path.glob("*/checkpoint.pt")), "the first checkpoint")
    (run_dir,) = [p.parent for p in tmp_path.glob("*/checkpoint.pt")]
    return proc, run_dir, job_id(tmp_path)


def test_a_sweep_runs_to_completion_as_an_array_and_reports(slurm, tmp_path):
    proc = launch(slurm, tmp_path / "sweep", *TINY, "patch=4,8,16")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    dirs = run_dirs(tmp_path / "sweep")
    assert len(dirs) == 3 and all(summary(d)["status"] == "complete" for d in dirs)
    assert report(tmp_path / "sweep").returncode == 0


def test_a_time_limit_checkpoints_at_the_step_and_the_requeued_job_resumes(slurm, tmp_path, uninterrupted):
    proc, run_dir, job = interrupted_mid_run(slurm, tmp_path)
    command(slurm, "scancel", "--signal=USR2", job)  # what submitit's _interrupt(timeout=True) sends
    wait_for(lambda: summary(run_dir)["status"] == "preempted", "the checkpoint at the step")
    stopped = summary(run_dir)["detail"]
    assert stopped["signal"] == signal.SIGUSR2 and stopped["step"] >= 0
    requeued_now(slurm, job)
    out = ended(slurm, proc, job)
    assert proc.returncode == 0, out
    assert summary(run_dir)["status"] == "complete"
    assert scores(run_dir) == uninterrupted  # no epoch twice, no row lost, the same numbers
    assert len(summary(run_dir)["history"]) == 2  # two attempts of the same SLURM job


def test_preemption_and_a_lock_left_on_another_node_by_the_same_job(slurm, tmp_path, uninterrupted):
    proc, run_dir, job = interrupted_mid_run(slurm, tmp_path)
    command(slurm, "scancel", "--signal=TERM", job)  # submitit's _interrupt(): TERM, then USR2
    command(slurm, "scancel", "--signal=USR2", job)
    wait_for(lambda: summary(run_dir)["status"] == "preempted", "the checkpoint at the step")
    wait_for(lambda: "PENDING" in state(slurm, job), "requeue")
    # As if the first attempt had died on node-9 without releasing its lock: a fresh lock of
    # another host, which only the same SLURM job may take over.
    (run_dir / ".lock").write_text(f"node-9 4242 {job}\n")
    requeued_now(slurm, job)
    out = ended(slurm, proc, job)
    assert proc.returncode == 0, out
    assert summary(run_dir)["status"] == "complete" and scores(run_dir) == uninterrupted


def test_max_num_timeout_ends_the_run_with_a_clear_status(slurm, tmp_path):
    # timeout_min=10: submitit counts any USR2 as a time-out (its "guaranteed" walltime is
    # min(0.8 * limit, limit - 10 min) = 0), and SLURM's own warning, which may come a minute
    # early, stays minutes away; one requeue is allowed.
    proc, run_dir, job = interrupted_mid_run(
        slurm, tmp_path, "epochs=40", "hydra.launcher.timeout_min=10",
        "hydra.launcher.max_num_timeout=1", "hydra.launcher.signal_delay_s=10")
    command(slurm, "scancel", "--signal=USR2", job)
    wait_for(lambda: summary(run_dir)["status"] == "preempted", "the first time-out")
    done = summary(run_dir)["epochs_done"]
    requeued_now(slurm, job)
    wait_for(lambda: summary(run_dir)["status"] == "running" and summary(run_dir)["epochs_done"] > done,
             "an epoch of the second attempt",
             timeout=300)  # the requeued job waits for the scheduler, slowly on a busy machine
    command(slurm, "scancel", "--signal=USR2", job)
    out = ended(slurm, proc, job)
    s = summary(run_dir)
    assert s["status"] == "timeout" and "timed-out too many times" in s["detail"]["reason"], out
    assert proc.returncode != 0
    assert 0 < s["epochs_done"] < 40
