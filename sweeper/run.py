"""One run, top to bottom: validate -> data on the device -> task phases -> train -> records."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from sweeper import insight, records
from sweeper.config import VIT_SHAPE, Settings, unused_keys
from sweeper.data import split
from sweeper.errors import (
    ConfigError, Preempted, RunFailed, RunFileError, StorageError, SweeperError,
)
from sweeper.lock import LOCK_FILE, run_lock
from sweeper.records import CONFIG_DIR, FINISHED, Status, discard
from sweeper.rundir import ConfigFileError, config_changes, store_config, stored_config
from sweeper.tasks import Phase
from sweeper.tasks.rotation import ENCODER_FILE
from sweeper.train import (
    Judge, Outcome, Preemption, Trainer, compiled_graphs, configure_backends, precision_warning,
    resolve_precision,
)

IGNORABLE = (*VIT_SHAPE, "pretrain_epochs")  # keys some runs do not use
PREVIOUS_DIR = ".previous"  # resume=false keeps a run's earlier files here
# Every name a run writes in its directory, and the stems of the files it sets aside.
RUN_FILES = {CONFIG_DIR, LOCK_FILE, PREVIOUS_DIR, records.METRICS_FILE, records.SUMMARY_FILE,
             records.CHECKPOINT_FILE, records.TENSORBOARD_DIR, insight.INSIGHT_FILE,
             insight.PER_CLASS_FILE, insight.CONFUSION_FILE, insight.ROTATION_CONFUSION_FILE,
             ENCODER_FILE}


def run(s: Settings, run_dir: Path, cfg: Optional[DictConfig] = None,
        overrides: Optional[list[str]] = None, n_jobs: Optional[int] = None,
        judge: Optional[Judge] = None) -> float:
    """Train one validated configuration in Hydra's output dir; returns the final test accuracy.
    `cfg` and `overrides` are stored with the run; `n_jobs` (the launcher's) is named when
    the device runs out of memory; `judge` may stop it after an epoch (a search's pruner)."""
    preemption = Preemption()
    with preemption.watch():  # from before training until the hand-off: no signal slips between
        summary = execute(s, run_dir, cfg, overrides, n_jobs=n_jobs, judge=judge,
                          preemption=preemption)
        if summary.get("status") == Status.PREEMPTED:
            try:
                preemption.hand_off()  # under submitit: its handler requeues the job and exits
            except Exception as err:  # it would not requeue (submitit: timed out too many times)
                summary.update(status=Status.TIMEOUT, detail={**summary.get("detail", {}), "reason": str(err)})
                records.write_summary(run_dir, summary)
                raise RunFailed(f"{run_dir} stopped at its time limit and was not requeued "
                                f"({err}); rerun the same command to resume it") from None
            # stop the whole sweep here: the signal was meant for this process
            raise Preempted("pre-empted: rerun the same command to resume")
    if summary.get("status") == Status.OOM:
        d = summary["detail"]
        raise RunFailed(f"out of memory on {summary['device']} training {s.model.name} at "
                        f"batch_size={d['batch_size']} with hydra.launcher.n_jobs={d['n_jobs']} "
                        f"run(s) per device: rerun with a smaller batch_size (or fewer n_jobs); "
                        f"this run is recorded as oom and the rest of the sweep goes on")
    return summary.get("final_test_acc") or 0.0


def execute(s: Settings, run_dir: Path, cfg: Optional[DictConfig] = None,
            overrides: Optional[list[str]] = None, max_epochs: int | None = None,
            n_jobs: Optional[int] = None, judge: Optional[Judge] = None,
            preemption: Optional[Preemption] = None) -> dict[str, Any]:
    """Holding the run dir's lock: check the stored config, then load, train and record."""
    device = pick_device(s.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir) as held_by:
        if held_by:
            print(f"run dir: {run_dir} | {held_by}: skipped", flush=True)
            return read_summary(run_dir)
        foreign = foreign_files(run_dir)
        if foreign:
            raise ConfigError(f"{run_dir} holds files no run wrote ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}): a run starts only in a new "
                              f"or empty directory, or its own; name another one")
        if not s.resume:
            move_aside(run_dir)
        if cfg is not None:
            try:
                changes = config_changes(run_dir, cfg, unused_keys(s, IGNORABLE))
            except ConfigFileError as err:
                raise ConfigFileError(f"{run_dir}: {err}: rerun with resume=false to start it "
                                      f"afresh (its files are kept aside), or name another run "
                                      f"directory") from None
            if changes:
                raise ConfigError(f"{run_dir} was trained with another config: "
                                  f"{'; '.join(changes)}. Rerun with resume=false to start it "
                                  f"afresh (its files are kept aside), or name another run "
                                  f"directory")
        previous = read_summary(run_dir)
        if previous.get("status") in FINISHED:
            print(f"run dir: {run_dir} | already {previous['status']}: skipped", flush=True)
            return previous
        try:
            if cfg is not None and not (run_dir / CONFIG_DIR / records.CONFIG_FILE).exists():
                store_config(run_dir, cfg, overrides or [])
            return _train(s, device, run_dir, previous, max_epochs, n_jobs, judge, preemption)
        except OSError as err:  # disk full, unwritable dir: what was written stays valid
            try:  # a short file may still fit: the run is then not left `running`
                records.write_summary(run_dir, {**read_summary(run_dir), "status": Status.FAILED,
                                                "detail": {"reason": err.strerror or str(err)}})
            except OSError:
                pass
            raise StorageError(f"cannot write {err.filename or run_dir}: "
                               f"{err.strerror or err}") from err


def _train(s: Settings, device: torch.device, run_dir: Path, previous: dict[str, Any],
           max_epochs: int | None, n_jobs: Optional[int],
           judge: Optional[Judge],
           preemption: Optional[Preemption] = None) -> dict[str, Any]:
    started = time.time()
    try:
        images = split.hold_out(s.data.load(), s.data.val_size, s.data.split_seed)
        torch.manual_seed(s.seed)  # model initialisation; batches draw from their own seeds
        on_device = images.to(device)
        phases = s.task.phases(s, on_device)
    except SweeperError:
        discard(run_dir, holding_lock=True)
        raise
    warning = precision_warning(device, s.precision)
    if warning:
        print(warning, flush=True)
    base = {
        "task": s.task.name,
        "model": s.model.name,
        "data": s.data.name,
        "seed": s.seed,
        "params": count_params(phases),
        "device": describe(device),
        "precision": resolve_precision(device, s.precision),
        **configure_backends(device),
        "torch": torch.__version__,
        "epochs_planned": sum(p.epochs for p in phases),
        "result_phase": type(s.task).spec.result,
        **{k: v for p in phases for k, v in p.meta.items()},
    }
    prior_seconds = float(previous.get("wall_seconds") or 0.0)
    print(f"run dir: {run_dir} | device: {base['device']} | {base['precision']} | "
          f"parameters: {base['params']:,}",
          flush=True)

    board = records.Board(run_dir) if s.logger == "tensorboard" else None

    def log(row: dict[str, Any]) -> None:
        print(records.console_line(row), flush=True)
        if board is not None:
            board.write(row)
        summarise(run_dir, base, Status.RUNNING, prior_seconds + time.time() - started)

    summarise(run_dir, base, Status.RUNNING, prior_seconds)
    trainer = Trainer(s, device, run_dir, log, max_epochs, judge, preemption)
    try:
        outcome: Outcome = trainer.fit(phases)
    except RunFileError as err:  # its rows up to the checkpoint cannot be read
        summarise(run_dir, base, Status.DAMAGED, prior_seconds, {"reason": str(err)})
        raise RunFileError(f"{run_dir / str(err)}: repair that line, or rerun with resume=false "
                           f"to start afresh (the run's files are kept aside)") from None
    except torch.OutOfMemoryError:
        outcome = Outcome(Status.OOM, {"batch_size": s.batch_size, "n_jobs": n_jobs or 1})
    except BaseException:
        if board is not None:
            board.close()
        raise
    if outcome.status == Status.COMPLETE:
        insight.write(run_dir, phases[-1].model.encoder, on_device, trainer.confusions)
    if s.compile:
        base["compiled_graphs"] = compiled_graphs()  # 0: it ran eager after all
    base["history"] = trainer.history
    summary = summarise(run_dir, base, outcome.status, prior_seconds + time.time() - started,
                        outcome.detail)
    if board is not None:
        complete = outcome.status == Status.COMPLETE
        board.close(stored_config(run_dir) if complete else None, summary if complete else None)
    if outcome.status not in (Status.COMPLETE, Status.OOM):
        print(f"run {outcome.status}: {outcome.detail}", flush=True)
    return summary


def foreign_files(run_dir: Path) -> list[str]:
    """What a directory that is not yet a run's (no stored config) holds beyond a run's own
    files: a run pointed at a folder of the user's (`hydra.run.dir=.`) must not write, append
    to a metrics.csv of theirs, or move their files aside with resume=false."""
    if (run_dir / CONFIG_DIR / records.CONFIG_FILE).exists():
        return []
    return sorted(p.name for p in run_dir.iterdir() if not _runs_own(p.name))


def _runs_own(name: str) -> bool:
    """NAME, NAME.corrupt-<time>, .lock.stale-<pid>, .NAME.<pid>.tmp: a run's file or one it set aside."""
    return any(name == f or name.startswith(f"{f}.") for f in RUN_FILES) or (
        name.startswith(".") and name.endswith(".tmp"))


def move_aside(run_dir: Path) -> None:
    """`resume=false`: the run's earlier files (its config too) go to .previous/<time>/."""
    keep = {LOCK_FILE, PREVIOUS_DIR}
    old = [p for p in run_dir.iterdir() if p.name not in keep]
    if old:
        aside = run_dir / PREVIOUS_DIR / time.strftime("%Y%m%d-%H%M%S")
        aside.mkdir(parents=True, exist_ok=True)
        for path in old:
            os.replace(path, aside / path.name)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not allowed: no CUDA device is visible (use auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads > 1 else ''})"


def count_params(phases: list[Phase]) -> int:
    """Parameters of the final model (the encoder plus the head that is evaluated)."""
    return sum(p.numel() for p in phases[-1].model.parameters())


def read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / records.SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def summarise(run_dir: Path, base: dict[str, Any], status: str, seconds: float,
              detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """summary.json from metrics.csv: per phase, and the result phase's figures on top. A
    metrics.csv the reader refuses makes the run `damaged`, whatever training said."""
    rows, error = records.read_metrics(run_dir)
    phases = records.phase_results(rows)
    if error is not None:
        status, detail = Status.DAMAGED, {**(detail or {}), "reason": str(error)}
    summary = {"status": status, **base, "wall_seconds": round(seconds, 2),
               **records.run_results(phases, base.get("result_phase")), "phases": phases}
    if detail:
        summary["detail"] = detail
    records.write_summary(run_dir, summary)
    return summary
