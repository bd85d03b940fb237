"""Hyper-parameter search (hparams_search=..., hydra/sweeper=optuna): a real Optuna study in
SQLite, trials launched as ordinary runs through Hydra's launchers, judged on validation."""

import csv
import json

import optuna
import pytest
import torch

from helpers.commands import ROOT, metrics, ok, run_dirs, summary, sweeper
from sweeper.data.sources import ImageSet
from sweeper.data.split import hold_out

# A small study: each trial is a 2-epoch ViT on 200 synthetic images, 50 held out.
DATA = ["data=synthetic", "data.n_train=250", "data.n_test=40", "data.val_size=50",
        "batch_size=50", "patch=8", "model.dim=24", "model.depth=1", "model.mlp_ratio=1"]


def search(tmp_path, *args, n_trials=3, name="s"):
    """A study without pruning unless `args` ask for it: only the pruner's test depends on it."""
    return sweeper("hparams_search=vit", *DATA, "epochs=2", f"hydra.sweep.dir={tmp_path / name}",
                   f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.pruner=none", *args, "-m")


def trials(folder):
    with open(folder / "study.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_preset_composes_a_search_judged_on_validation():
    hydra_cfg = ok(sweeper("hparams_search=vit", "--cfg", "hydra")).stdout
    assert "_target_: hydra_plugins.sweeper_search.OptunaSweeper" in hydra_cfg
    assert "lr: tag(log, interval(1e-4, 3e-3))" in hydra_cfg
    assert "dir: outputs/hparams_search/vit" in hydra_cfg
    assert "val_size: 5000" in ok(sweeper("hparams_search=vit", "--cfg", "job")).stdout


def test_validation_images_are_held_out_stratified_and_disjoint():
    y = torch.arange(10).repeat_interleave(30)  # 30 images per class
    x = torch.arange(300).view(300, 1, 1, 1)  # each image's pixel is its id
    images = ImageSet(x, y, x[:5], y[:5], [str(c) for c in range(10)])
    split = hold_out(images, 50, seed=0)

    def ids(t):
        return set(t.flatten().tolist())

    assert len(split.x_val) == 50 and len(split.x_train) == 250
    assert not ids(split.x_val) & ids(split.x_train)
    assert ids(split.x_val) | ids(split.x_train) == set(range(300))
    assert torch.bincount(split.y_val).tolist() == [5] * 10  # one sixth of every class
    assert hold_out(images, 0, seed=0) is images
    assert torch.equal(hold_out(images, 50, seed=0).y_val, split.y_val)  # deterministic


def test_a_search_without_validation_images_is_refused(tmp_path):
    proc = sweeper("hparams_search=vit", *DATA, "data.val_size=0", f"hydra.sweep.dir={tmp_path}", "-m")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "data.val_size=0" in err[0] and "validation" in err[0], proc.stderr
    assert not (tmp_path / "study.db").exists() and not run_dirs(tmp_path)


def test_a_study_completes_resumes_and_is_reported(tmp_path):
    folder = tmp_path / "s"
    ok(search(tmp_path))
    rows = trials(folder)
    assert [r["state"] for r in rows] == ["complete"] * 3
    for r in rows:  # the objective is validation; test is recorded beside it
        run = folder / r["run_dir"]
        assert float(r["val_acc"]) == summary(run)["final_val_acc"]
        assert float(r["test_acc"]) == summary(run)["final_test_acc"]
        assert {"val_loss", "val_acc"} <= set(metrics(run)[0])
    assert len({r["lr"] for r in rows}) == 3 and (folder / "study.db").is_file()

    # The same command again: the study is done, nothing is launched or repeated.
    again = ok(search(tmp_path))
    assert "Launching" not in again.stdout and len(trials(folder)) == 3

    # A search killed after asking for a trial: the rerun runs that trial, with its values.
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{folder / 'study.db'}")
    space = {k: optuna.distributions.json_to_distribution(v)
             for k, v in study.user_attrs["space"].items()}
    asked = study.ask(space)
    proc = ok(search(tmp_path, n_trials=4))
    assert "resuming 1 unfinished trial" in proc.stdout
    rows = trials(folder)
    assert [r["state"] for r in rows] == ["complete"] * 4 and len(run_dirs(folder)) == 4
    assert float(rows[3]["lr"]) == asked.params["lr"]

    # Another search space under the same study is refused, naming what changed.
    proc = search(tmp_path, "lr=tag(log, interval(1e-3, 1e-2))", n_trials=5)
    assert proc.returncode == 2 and "differs in lr" in proc.stderr, proc.stderr
    assert len(trials(folder)) == 4

    out = tmp_path / "report"
    ok_report = __import__("subprocess").run(
        [__import__("sys").executable, "-m", "analysis.report", str(folder), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True)
    assert ok_report.returncode == 0, ok_report.stderr
    md = (out / "report.md").read_text()
    assert "## Hyper-parameter study" in md and "never used to choose" in md
    best = json.loads((folder / "study.json").read_text())["best"]
    assert f"Best: trial {best['trial']}, validation {100 * best['val_acc']:.2f} %" in md
    assert md.count("| complete |") == 4 and (out / "study_s_history.png").is_file()
    assert "No runs outside the studies" in md  # trials are not reported twice


def test_trials_run_through_the_joblib_launcher(tmp_path):
    ok(search(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"))
    assert [r["state"] for r in trials(tmp_path / "s")] == ["complete"] * 3


def test_diverged_trials_fail_and_the_study_goes_on(tmp_path):
    proc = ok(search(tmp_path, "lr=choice(1e12)", n_trials=2))
    rows = trials(tmp_path / "s")
    assert [(r["state"], r["status"]) for r in rows] == [("fail", "diverged")] * 2, proc.stdout
    assert json.loads((tmp_path / "s" / "study.json").read_text())["best"] is None


def test_the_median_pruner_stops_a_hopeless_trial(tmp_path):
    proc = ok(search(tmp_path, "lr=choice(3e-3, 1e-9)",
                     "hydra.sweeper.pruner=median", "hydra/sweeper/sampler=random",
                     "hydra.sweeper.n_jobs=1",
                     "hydra.sweeper.pruner_startup_trials=1", "hydra.sweeper.pruner_warmup_epochs=0",
                     "epochs=3", n_trials=4))
    rows = trials(tmp_path / "s")
    first_good = next(i for i, r in enumerate(rows) if float(r["lr"]) == 3e-3)
    hopeless = [r for r in rows[first_good + 1:] if float(r["lr"]) == 1e-9]
    assert hopeless and all(r["state"] == "pruned" for r in hopeless), proc.stdout
    for r in hopeless:
        run = tmp_path / "s" / r["run_dir"]
        assert summary(run)["status"] == "pruned" and len(metrics(run)) < 3


def test_tensorboard_logs_the_same_rows_and_changes_nothing_else(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny = [*DATA, "epochs=2"]
    ok(sweeper(*tiny, f"hydra.sweep.dir={tmp_path / 'plain'}", "-m"))
    ok(sweeper(*tiny, "logger=tensorboard", f"hydra.sweep.dir={tmp_path / 'board'}", "-m"))
    plain, board = run_dirs(tmp_path / "plain")[0], run_dirs(tmp_path / "board")[0]
    assert plain.name == board.name  # where the rows also go is not part of a run's name
    rows = metrics(board)
    assert [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k} for r in rows] \
        == [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k}
            for r in metrics(plain)]
    events = EventAccumulator(str(board / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/val_acc")]
    assert logged == [(int(r["epoch"]), pytest.approx(float(r["val_acc"]))) for r in rows]
    # the HParams tab: the run's settings and its results
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    start = next(plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info
                 for c in content.values()
                 if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
    assert start.hparams["lr"].number_value == pytest.approx(5e-4)
    assert start.hparams["model.dim"].number_value == 24 and start.hparams["patch"].number_value == 8
    assert events.Scalars("hparam/final_test_acc")[0].value == pytest.approx(summary(board)["final_test_acc"])


def test_extending_a_study_asks_new_points_and_credits_no_trial_with_another_run(tmp_path):
    folder = tmp_path / "s"
    ok(search(tmp_path, n_trials=3))
    ok(search(tmp_path, n_trials=6))  # the sampler continues from the study, not from its seed
    rows = trials(folder)
    assert [r["state"] for r in rows] == ["complete"] * 6
    assert len({r["lr"] for r in rows}) == 6 and len({r["run_dir"] for r in rows}) == 6
    assert len(run_dirs(folder)) == 6


def test_a_point_asked_again_is_not_run_nor_counted_and_a_used_up_space_ends(tmp_path):
    fixed = ["weight_decay=0.05", "warmup_epochs=1", "label_smoothing=0.1"]
    proc = ok(search(tmp_path, "lr=choice(1e-3, 2e-3)", *fixed, "hydra/sweeper/sampler=random",
                     n_trials=4))
    rows = trials(tmp_path / "s")
    done = [r for r in rows if r["state"] == "complete"]
    assert sorted(float(r["lr"]) for r in done) == [1e-3, 2e-3], proc.stdout
    assert len(run_dirs(tmp_path / "s")) == 2
    assert "the space has no new point left" in proc.stdout
    repeats = [r for r in rows if r["state"] != "complete"]
    assert repeats and all(r["state"] == "fail" and not r["run_dir"] for r in repeats)


def test_every_epoch_of_the_result_phase_is_an_intermediate_value(tmp_path):
    ok(search(tmp_path, "hydra.sweeper.pruner=median", n_trials=1))
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    trial = study.trials[0]
    assert sorted(trial.intermediate_values) == [1, 2]
    assert trial.intermediate_values[2] == trial.value


def test_an_integer_key_gets_an_integer_distribution_from_an_interval(tmp_path):
    ok(search(tmp_path, "batch_size=interval(16, 64)", n_trials=2))
    sizes = [r["batch_size"] for r in trials(tmp_path / "s")]
    assert sizes[0] == "50" and all(s.isdigit() and 16 <= int(s) <= 64 for s in sizes), sizes


@pytest.mark.parametrize("override, values", [
    ("range(0,10,3)", [0, 3, 6, 9]), ("range(1,10,4)", [1, 5, 9]), ("range(5,1,-1)", [2, 3, 4, 5]),
    ("range(0,1,0.25)", [0.0, 0.25, 0.5, 0.75]),
])
def test_a_range_gives_the_values_hydras_range_gives(override, values):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from sweeper.search import distribution

    d = distribution(OverridesParser.create().parse_overrides([f"a={override}"])[0])
    got, v = [], d.low
    while v <= d.high + 1e-12:
        got.append(v)
        v += d.step
    assert got == pytest.approx(values)


@pytest.mark.parametrize("args, key", [
    (["hydra.sweeper.storage=notaurl://x"], "hydra.sweeper.storage"),
    (["lr=interval(5,1)"], "lr=interval(5,1)"),
    (["warmup_epochs=range(5,1)"], "warmup_epochs=range(5,1)"),
    (["lr=tag(log, interval(0, 1e-3))"], "lr=tag(log, interval(0, 1e-3))"),
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0"),
    (["hydra.sweeper.n_trials=-1"], "hydra.sweeper.n_trials=-1"),
    (["hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0"),
    (["batch_size=interval(16.5, 64)"], "batch_size takes integers"),
    (["+hydra.sweeper.search_space={}"], "hydra.sweeper.params"),
    (["+hydra.sweeper.colour=red"], "hydra.sweeper.colour"),
    (["hydra.sweeper.direction=sideways"], "hydra.sweeper.direction"),
    (["hydra.sweeper.direction=[maximize,minimize]"], "hydra.sweeper.objective"),
    (["hydra.sweeper.objective=test_acc"], "hydra.sweeper.objective"),
    (["hydra.sweeper.max_failure_rate=2"], "hydra.sweeper.max_failure_rate"),
    (["hydra.sweeper._target_=hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"],
     "hydra_plugins.sweeper_search.OptunaSweeper"),
    (["hydra/sweeper/sampler=grid"], "choice(...) or range(...)"),
])
def test_a_bad_search_setting_is_one_line_naming_it_and_creates_nothing(tmp_path, args, key):
    """Among them, keys of Hydra's own Optuna sweeper that cannot be honoured: the line names
    this project's equivalent."""
    proc = search(tmp_path, *args)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and key in err[0], proc.stderr
    assert not (tmp_path / "s").exists()


def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    proc = search(tmp_path, f"hydra.sweeper.storage=journal:{tmp_path / 'file' / 'journal.log'}")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "hydra.sweeper.storage=" in proc.stderr and not (tmp_path / "s").exists()

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.db").write_bytes(b"not a database" * 100)
    proc = search(tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["study.db"]  # kept, nothing added


# Hydra's own Optuna sweeper's example (its docs and plugin repository), with this project's
# keys in place of the example's x and y: it runs as written.
OFFICIAL_EXAMPLE = """# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: grid

hydra:
  sweeper:
    direction: minimize
    study_name: sphere
    storage: null
    n_trials: 20
    n_jobs: 1
    params:
      lr: range(0.001, 0.003, step=0.001)
      warmup_epochs: choice(0, 1, 2)
"""


def official(tmp_path, text, *args):
    (tmp_path / "conf" / "hparams_search").mkdir(parents=True, exist_ok=True)
    (tmp_path / "conf" / "hparams_search" / "official.yaml").write_text(text)
    return sweeper("--config-dir", str(tmp_path / "conf"), "hparams_search=official", *DATA,
                   "epochs=2", f"hydra.sweep.dir={tmp_path / 's'}", *args, "-m")


def test_the_official_plugins_example_config_runs_as_written(tmp_path):
    proc = ok(official(tmp_path, OFFICIAL_EXAMPLE))
    rows = trials(tmp_path / "s")
    points = {(float(r["lr"]), int(r["warmup_epochs"])) for r in rows}
    assert [r["state"] for r in rows] == ["complete"] * 6, proc.stdout  # the grid: 2 x 3 points
    assert points == {(lr, w) for lr in (0.001, 0.002) for w in (0, 1, 2)}
    about = json.loads((tmp_path / "s" / "study.json").read_text())
    assert (about["study"], about["direction"], about["metric"]) == ("sphere", "minimize", "val_loss")
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert about["best"]["trial"] == int(best["trial"])
    study = optuna.load_study(study_name="sphere", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    assert study.metric_names == ["val_loss"]  # optuna-dashboard names the objective
    assert all(not t.user_attrs["run_dir"].startswith("/") for t in study.trials)


def test_several_objectives_give_a_pareto_front(tmp_path):
    ok(search(tmp_path, "hydra/sweeper/sampler=nsgaii", "hydra.sweeper.direction=[maximize,minimize]",
              "hydra.sweeper.objective=[val_acc,seconds]", n_trials=3))
    about = json.loads((tmp_path / "s" / "study.json").read_text())
    assert about["direction"] == ["maximize", "minimize"] and about["metric"] == ["val_acc", "seconds"]
    assert about["pareto"] and about["best"]["trial"] == about["pareto"][0]
    assert [r["state"] for r in trials(tmp_path / "s")] == ["complete"] * 3


def test_a_custom_search_space_adds_values_from_code(tmp_path):
    (tmp_path / "space.py").write_text(
        "def configure(cfg, trial):\n"
        "    trial.suggest_float('label_smoothing', 0.0, 0.2)\n")
    proc = sweeper("hparams_search=vit", *DATA, "epochs=2", f"hydra.sweep.dir={tmp_path / 's'}",
                   "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner=none",
                   "hydra.sweeper.params={lr: 'interval(1e-4, 1e-2)'}",
                   "hydra.sweeper.custom_search_space=space.configure", "-m",
                   env={"PYTHONPATH": str(tmp_path)})
    ok(proc)
    rows = trials(tmp_path / "s")
    assert all(0.0 <= float(r["label_smoothing"]) <= 0.2 for r in rows)
    for r in rows:  # the suggested value is what the trial's run trained with
        config = (tmp_path / "s" / r["run_dir"] / ".hydra" / "config.yaml").read_text()
        assert f"label_smoothing: {float(r['label_smoothing'])}" in config


def test_max_failure_rate_stops_the_study_as_the_official_plugin_does(tmp_path):
    proc = search(tmp_path, "lr=choice(1e12)", "hydra.sweeper.max_failure_rate=0.0",
                  "hydra.sweeper.n_jobs=1", n_trials=3)
    assert proc.returncode == 2 and "max_failure_rate=0.0" in proc.stderr, proc.stderr
    assert len(trials(tmp_path / "s")) == 1


@pytest.mark.parametrize("override, expected", [  # the official plugin's parsing cases
    ("key=choice(1,2)", optuna.distributions.CategoricalDistribution([1, 2])),
    ("key=choice(true, false)", optuna.distributions.CategoricalDistribution([True, False])),
    ("key=choice('hello', 'world')", optuna.distributions.CategoricalDistribution(["hello", "world"])),
    ("key=range(1,3)", optuna.distributions.IntDistribution(1, 2)),
    ("key=interval(1, 5)", optuna.distributions.FloatDistribution(1, 5)),
    ("key=int(interval(1, 5))", optuna.distributions.IntDistribution(1, 5)),
    ("key=tag(log, interval(1, 5))", optuna.distributions.FloatDistribution(1, 5, log=True)),
    ("key=tag(log, int(interval(1, 5)))", optuna.distributions.IntDistribution(1, 5, log=True)),
    ("key=range(0.5, 5.5, step=1)", optuna.distributions.FloatDistribution(0.5, 4.5, step=1)),
])
def test_sweep_syntax_becomes_the_distribution_the_official_plugin_makes(override, expected):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from sweeper.search import distribution

    assert distribution(OverridesParser.create().parse_overrides([override])[0]) == expected


def test_a_search_killed_mid_study_and_rerun_repeats_no_point(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "s"
    args = ["hparams_search=vit", *DATA, "epochs=2", f"hydra.sweep.dir={folder}",
            "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=1", "hydra.sweeper.pruner=none", "-m"]
    proc = subprocess.Popen([sys.executable, "-m", "sweeper", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(list(folder.glob("*/metrics.csv"))) < 3:  # the third trial is training
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ok(sweeper(*args))
    rows = trials(folder)
    assert [r["state"] for r in rows] == ["complete"] * 5
    assert len({r["lr"] for r in rows}) == 5 and len({r["run_dir"] for r in rows}) == 5
