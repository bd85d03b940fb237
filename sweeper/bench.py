"""Benchmarks that print the reference's figure beside ours, from the same run.

    python -m sweeper.bench accuracy [--epochs K] [OVERRIDES...]
        runs the experiment the overrides select for K epochs of its normal schedule and prints
        test accuracy per epoch next to the assignment report's figure at the same epoch.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from sweeper.config import ClassifyTask, RotationTask, Settings, register_configs, validate
from sweeper.reference import seed_results_path
from sweeper.run import execute

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def reference_rows(s: Settings) -> dict[tuple[str, int], dict[str, str]]:
    """The report's rows for the same experiment, keyed by (our phase name, epoch)."""
    with open(seed_results_path(), newline="") as f:
        rows = list(csv.DictReader(f))
    found: dict[tuple[str, int], dict[str, str]] = {}
    if isinstance(s.task, ClassifyTask) and s.model.name == "vit":
        m = s.model
        for r in rows:
            same = (r["task"], r["patch"], r["heads"], r["overlap"], r["cls_layer"]) == (
                "vit", str(m.patch), str(m.heads), m.overlap, str(m.cls_layer))
            found.setdefault(("train", int(r["epoch"])), r) if same else None
    elif isinstance(s.task, RotationTask):
        for r in rows:
            if r["task"] in ("rotation_pretrain", "finetune"):
                phase = "pretrain" if r["task"] == "rotation_pretrain" else "finetune"
                found[(phase, int(r["epoch"]))] = r
    return found


def _fmt(value: str | float | None) -> str:
    return "—" if value in (None, "") else f"{float(value):.4f}"


def accuracy(args: argparse.Namespace) -> int:
    cfg = compose_config(args.overrides)
    s = validate(cfg)
    name = "+".join(args.overrides).replace("/", "_") or "default"
    run_dir = Path(args.out) / f"accuracy-{name}-k{args.epochs}"
    if run_dir.exists():  # a benchmark starts fresh; the old run is kept beside it
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
    summary = execute(cfg, run_dir, max_epochs=args.epochs)
    ref = reference_rows(s)
    with open(run_dir / "metrics.csv", newline="") as f:
        ours = list(csv.DictReader(f))
    print(f"\naccuracy after {args.epochs} epoch(s) of the normal schedule | "
          f"device: {summary['device']} | data: {s.data.name} | run dir: {run_dir}")
    print("| phase | epoch | our test acc | report test acc | our train acc | report train acc | our s/epoch |")
    print("|---|---|---|---|---|---|---|")
    for row in ours:
        r = ref.get((row["phase"], int(row["epoch"])), {})
        print(f"| {row['phase']} | {row['epoch']} | {_fmt(row['test_acc'])} | {_fmt(r.get('test_acc'))} "
              f"| {_fmt(row['train_acc'])} | {_fmt(r.get('train_acc'))} | {float(row['epoch_seconds']):.1f} |")
    final = {k[0]: v for k, v in sorted(ref.items(), key=lambda kv: kv[0][1])}
    for phase, r in final.items():
        print(f"report's final ({phase}, epoch {r['epoch']}): test acc {_fmt(r.get('test_acc'))}, "
              f"train acc {_fmt(r.get('train_acc'))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeper.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy", help="test accuracy per epoch beside the report's")
    acc.add_argument("--epochs", type=int, default=2, help="epochs to run (schedule unchanged)")
    acc.add_argument("--out", default="outputs/bench", help="where the run directory goes")
    acc.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m sweeper")
    args = parser.parse_args(argv)
    return accuracy(args)


if __name__ == "__main__":
    sys.exit(main())
