"""The benchmarks print our figures beside the references', from the same run."""

import json
import subprocess
import sys

from helpers.commands import ROOT, TINY
from sweeper import train
from sweeper.bench import main


def bench(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sweeper.bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_accuracy_prints_the_reports_figure_at_each_epoch(tmp_path):
    out = bench("accuracy", "--epochs", "2", "--out", str(tmp_path), *TINY, "epochs=25").stdout
    # The baseline shape (patch 4, 4 heads, no overlap, CLS first) is the report's experiment 1.
    assert "| train | 1 |" in out and "| 0.2855 |" in out
    assert "| train | 2 |" in out and "| 0.3945 |" in out
    assert "report's final (train, epoch 25): test acc 0.5788" in out
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["epochs_done"] == 2  # of 25, schedule kept


TINY_SPEED = ["--batch-size", "4", "--steps", "1", "--windows", "1", "--pipeline-steps", "2",
              "--workers", "0"]


def test_speed_prints_every_measurement_and_the_pipeline_ratio():
    # bf16 forced: its attention rows are measured on any CPU, emulated where it has no bf16 units.
    out = bench("speed", "--precision", "bf16", *TINY_SPEED).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "measurement" not in line]
    assert len(rows) == 16
    attention = [r for r in rows if r.startswith("| attention written out")]
    assert [r.split("|")[1].split(", ")[-2:] for r in attention] == [
        ["4 heads", "fp32 "], ["4 heads", "bf16 "], ["12 heads", "fp32 "], ["12 heads", "bf16 "],
        ["4 heads", "fp32 "], ["4 heads", "bf16 "]]
    assert "overlap half" in attention[-1]
    assert all(r.split("|")[4].strip().endswith("x") for r in attention)
    assert "the model takes SDPA here" in attention[0] and "takes written-out here" in attention[1]
    assert sum("overlap none: train step" in r for r in rows) == 3
    assert sum("ResNet-18" in r for r in rows) == 2
    pipeline = next(r for r in rows if r.startswith("| input pipeline"))
    assert pipeline.split("|")[4].strip().endswith("x")  # ours / reference, measured


def test_speed_measures_attention_in_fp32_only_where_bf16_would_be_emulated(monkeypatch, capsys):
    monkeypatch.setattr(train, "native_bf16", lambda device: False)
    assert main(["speed", "--device", "cpu", *TINY_SPEED]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split(" | ")[1] == "fp32"
    assert "attention paths in bf16: not measured: this cpu has no bf16 units" in out
    attention = [line.split("|")[1] for line in out.splitlines() if line.startswith("| attention")]
    assert [row.split(", ")[-1].strip() for row in attention] == ["fp32"] * 3
    assert "overlap half" in attention[-1]


def test_sweep_runs_the_same_runs_both_ways_and_prints_them_side_by_side(tmp_path):
    out = bench("sweep", "--runs", "2", "--jobs", "2", "--out", str(tmp_path), *TINY).stdout
    lines = out.splitlines()
    assert lines[0].startswith("2 runs: ")
    assert lines[1].startswith("  one at a time, all threads: ") and "images/s summed" in lines[1]
    assert lines[2].startswith("  2 joblib workers: ") and "images/s summed" in lines[2]
    assert lines[3].startswith("  joblib workers / one at a time: ") and lines[3].endswith("x by wall time")
    for mode in ("serial", "joblib"):  # the same two runs, complete, in each
        runs = sorted(p.name for p in (tmp_path / mode).iterdir() if p.is_dir())
        assert len(runs) == 2 and runs[0].endswith("seed-0") and runs[1].endswith("seed-1")
