"""metrics.csv is read one way by resume and by the report: per phase, epochs 1..n in order,
every field a number (a diverged run's nan included); anything else is damage named by line."""

import math
from pathlib import Path
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.commands import SLOW, metrics, scores, start_and_signal, summary, sweeper
from helpers.files import fake_run
from analysis.collect import collect
from sweeper.records import COLUMNS, RunFileError, read_metrics, read_rows, write_rows

VALID = ("phase,epoch,train_loss,train_acc,test_loss,test_acc,lr,epoch_seconds,images_per_s\n"
         "pretrain,1,1.5,0.4,1.4,0.45,0.001,10.5,5000.0\n"
         "pretrain,2,1.2,0.5,1.1,0.55,0.0005,10.1,5100.0\n"
         "finetune,1,2.0,0.3,1.9,0.35,0.001,3.0,4000.0\n"
         "finetune,2,nan,0.1,inf,0.1,0.0,3.1,3900.0\n")


def test_a_diverged_run_is_tabled_with_its_nan_not_hidden_as_damage(tmp_path):
    run = fake_run(tmp_path, "diverged", [0.5, 0.6], status="diverged")
    with open(run / "metrics.csv", "a") as f:
        f.write("train,3,nan,0.1,nan,0.1,0.001,10,5000\n")
    col = collect(tmp_path)
    (row,) = col.runs.to_dict("records")
    assert row["status"] == "diverged" and row["epochs_done"] == 3
    assert row["final_test_acc"] == 0.1 and row["best_test_acc"] == 0.6
    assert math.isnan(col.epochs["test_loss"].iloc[-1]) and col.problems == []


def test_a_copied_row_appended_to_a_complete_run_is_damage_not_its_final_accuracy(tmp_path):
    fake_run(tmp_path, "good", [0.5, 0.6], heads=4)
    copied = fake_run(tmp_path, "copied", [0.5, 0.97], heads=6)
    first = (copied / "metrics.csv").read_text().splitlines()[1]
    with open(copied / "metrics.csv", "a") as f:
        f.write(first + "\n")
    col = collect(tmp_path)
    assert list(col.runs["run"]) == ["good"]
    assert col.problems == ["copied: metrics.csv line 4: epoch 1 of phase 'train' where epoch 3 "
                            "comes next; skipped"]


def test_a_duplicate_row_past_the_checkpoint_is_dropped_on_resume(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    start_and_signal(run_dir, signal.SIGKILL).wait()
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    with open(run_dir / "metrics.csv", "a") as f:
        f.write(rows[-1] + "\n")  # the last logged epoch, twice
    assert sweeper(*SLOW, f"hydra.run.dir={run_dir}").returncode == 0
    assert scores(run_dir) == uninterrupted and len(metrics(run_dir)) == 3


def test_a_damaged_row_the_checkpoint_needs_stops_the_resume_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_and_signal(run_dir, signal.SIGTERM)
    proc.communicate(timeout=60)
    text = (run_dir / "metrics.csv").read_text()
    lines = text.splitlines(keepends=True)
    lines[1] = lines[1].replace("train,1,", "train,1,garbage", 1)
    (run_dir / "metrics.csv").write_text("".join(lines))
    before = sorted(p.name for p in run_dir.iterdir())
    again = sweeper(*SLOW, f"hydra.run.dir={run_dir}")
    assert again.returncode == 2, again.stdout + again.stderr
    (line,) = again.stderr.strip().splitlines()
    assert line.startswith("error: ") and "metrics.csv line 2: " in line and "resume=false" in line
    assert (run_dir / "metrics.csv").read_text() == "".join(lines)  # nothing rewritten
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert summary(run_dir)["status"] == "damaged"


def test_the_reader_reads_what_the_writer_writes(tmp_path):
    (tmp_path / "metrics.csv").write_text(VALID)
    rows = read_rows(tmp_path)
    assert [(r["phase"], r["epoch"]) for r in rows] == [("pretrain", 1), ("pretrain", 2),
                                                        ("finetune", 1), ("finetune", 2)]
    assert math.isnan(rows[-1]["train_loss"]) and rows[-1]["test_loss"] == math.inf
    write_rows(tmp_path, rows)
    assert (tmp_path / "metrics.csv").read_text() == VALID


@pytest.mark.parametrize("edit,line", [
    (lambda t: t.replace("pretrain,2,", "pretrain,3,"), 3),  # a gap
    (lambda t: t.replace("finetune,1,", "pretrain,3,"), 5),  # then finetune starts at 2
    (lambda t: t + "pretrain,3,1,1,1,1,1,1,1\n", 6),  # a phase that had ended
    (lambda t: t.replace("0.45", "0.45x"), 2),
    (lambda t: t.replace("0.45", "1_000"), 2),
    (lambda t: t.replace(",10.5,", ",,"), 2),
    (lambda t: t.replace("pretrain,1,1.5,", "pretrain,1,"), 2),
])
def test_each_kind_of_damage_is_named_by_its_line(tmp_path, edit, line):
    (tmp_path / "metrics.csv").write_text(edit(VALID))
    with pytest.raises(RunFileError, match=f"^metrics.csv line {line}: "):
        read_rows(tmp_path)


def _could_have_been_written(rows: list[dict]) -> bool:
    """Per phase one block, epochs 1..n, known columns, every value a float."""
    phases = [r["phase"] for r in rows]
    blocks = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    if len(blocks) != len(set(blocks)):
        return False
    for i, row in enumerate(rows):
        first = i == 0 or rows[i - 1]["phase"] != row["phase"]
        if row["epoch"] != (1 if first else rows[i - 1]["epoch"] + 1):
            return False
        if not set(row) <= set(COLUMNS + ["val_loss", "val_acc"]):
            return False
        if not all(isinstance(v, float) for k, v in row.items() if k not in ("phase", "epoch")):
            return False
    return True


FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_give_rows_or_the_contracts_error_only(tmp_path, data):
    (tmp_path / "metrics.csv").write_bytes(data)
    rows, error = read_metrics(tmp_path)
    assert error is None or isinstance(error, RunFileError)
    assert _could_have_been_written(rows)


@FUZZ
@given(st.integers(0, len(VALID) - 1), st.integers(0, 8), st.text(max_size=12))
def test_random_edits_of_a_valid_file_give_rows_or_the_contracts_error_only(tmp_path, at, cut, text):
    (tmp_path / "metrics.csv").write_text(VALID[:at] + text + VALID[at + cut:])
    rows, error = read_metrics(tmp_path)
    assert error is None or isinstance(error, RunFileError)
    assert _could_have_been_written(rows)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_in_a_lock_are_judged_never_raised(tmp_path, data):
    from sweeper.lock import LOCK_FILE, Seen, _look, stale_reason

    (tmp_path / LOCK_FILE).write_bytes(data)
    seen = _look(tmp_path / LOCK_FILE)
    assert isinstance(seen, Seen) and seen.kind == "file"
    assert stale_reason(seen) in (None, "its process is gone")  # fresh: at most a dead holder


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_in_a_summary_are_damage_never_raised(tmp_path, data):
    from analysis.collect import _summary

    (tmp_path / "summary.json").write_bytes(data)
    summary, problem = _summary(tmp_path)
    assert isinstance(summary, dict) and (problem is None or "damaged" in problem)


@FUZZ
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_random_study_files_are_skipped_never_raised(tmp_path, about, trials):
    from analysis.study import find

    folder = tmp_path / "study"
    folder.mkdir(exist_ok=True)
    (folder / "study.json").write_bytes(about)
    (folder / "study.csv").write_bytes(trials)
    studies, problems = find(tmp_path)
    assert len(studies) + len(problems) == 1


@pytest.mark.parametrize("task", ["classify", "rotation_pretrain", "rotation_probe", "scratch"])
def test_each_task_trains_the_phases_the_catalogue_names_and_reports_its_result_phase(task):
    from sweeper.data.sources import synthetic
    from sweeper.records import TASKS
    from helpers.in_process import settings

    shipped = {p.stem for p in (Path(__file__).parents[1] / "conf" / "task").glob("*.yaml")}
    assert shipped - {"finetune"} == set(TASKS) - {"finetune"}  # finetune needs a saved encoder
    s = settings(f"task={task}", "model=resnet18", "data=synthetic", "model.stem=cifar")
    phases = s.task.phases(s, synthetic(200, 40))
    assert type(s.task).spec == TASKS[task]
    assert tuple(p.name for p in phases) == TASKS[task].phases
    assert TASKS[task].result == phases[-1].name


def test_a_status_is_written_and_read_as_its_plain_value(tmp_path):
    from sweeper.records import FINISHED, Status, write_summary

    write_summary(tmp_path, {"status": Status.PREEMPTED})
    assert summary(tmp_path)["status"] == "preempted"
    assert f"{Status.COMPLETE}" == "complete" and "pruned" in FINISHED


def test_a_run_with_validation_killed_before_its_first_checkpoint_resumes_readable(tmp_path):
    from sweeper.records import append_row

    row = {"phase": "train", "epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0,
           "test_acc": 0.5, "lr": 0.001, "epoch_seconds": 1.0, "images_per_s": 10.0,
           "val_loss": 1.1, "val_acc": 0.4}
    write_rows(tmp_path, [])  # resume from no checkpoint: every row is dropped
    append_row(tmp_path, row)
    assert read_rows(tmp_path) == [row]  # the header has the validation columns
