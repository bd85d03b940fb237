"""Hyper-parameter search on Optuna's ask/tell API: the study (storage, search space, sampler,
pruner), each trial's outcome read from its run directory, the pruner's judge inside a trial's
process, and the study's tables for the report (study.csv, study.json in the sweep folder).

Hydra's side (ask a batch, launch it through any launcher, tell the outcomes) is the sweeper
plugin in `sweeper/hydra_plugins/sweeper_search`. The objective is a validation accuracy,
never a test one: a trial's test accuracy is only recorded beside it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import optuna
from hydra.core.override_parser.types import (
    ChoiceSweep, IntervalSweep, Override, RangeSweep,
)
from optuna.distributions import (
    BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution,
)
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeper.atomic import atomic_write_text
from sweeper.errors import SearchError
from sweeper.records import FINISHED, RESULT_PHASES, STUDY_CSV, STUDY_JSON, SUMMARY_FILE, Status

TRIAL_ENV = "SWEEPER_TRIAL"  # in a trial's job: the Optuna trial id its epochs report to
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def distribution(override: Override, integer: bool = False) -> BaseDistribution:
    """Hydra's sweep syntax as an Optuna distribution: `interval(a, b)` (`tag(log, interval(a,
    b))` samples on a log scale), `choice(...)`, `range(start, stop, step)` (the values Hydra's
    range gives: stop excluded). `integer`: the key's type is int, so an interval samples
    integers (Hydra parses an interval's ends as floats)."""
    key, value = override.get_key_element(), override.value()
    text = override.input_line or key
    if isinstance(value, IntervalSweep):
        low, high, log = value.start, value.end, "log" in value.tags
        if not low < high:
            raise SearchError(f"{text}: interval(a, b) needs a < b")
        if log and low <= 0:
            raise SearchError(f"{text}: a log scale needs both ends above 0")
        if integer or (isinstance(low, int) and isinstance(high, int)):
            if not (float(low).is_integer() and float(high).is_integer()):
                raise SearchError(f"{text}: {key} takes integers, so the interval's ends must be "
                                  f"integers, e.g. interval({math.ceil(low)}, {math.floor(high)})")
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(float(low), float(high), log=log)
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        count = math.floor((stop - start) / step - 1e-9) + 1 if step else 0
        if count <= 0:
            raise SearchError(f"{text} holds no value: range(start, stop, step) gives start, "
                              f"start + step, ... up to stop, excluded")
        last = start + step * (count - 1)
        low, high = min(start, last), max(start, last)
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(low, high, step=abs(step))
        return FloatDistribution(float(low), float(high), step=abs(float(step)))
    raise SearchError(f"{text} is not a search range: use interval(a, b), "
                      f"tag(log, interval(a, b)), choice(...) or range(...)")


def storage_url(storage: Optional[str], sweep_dir: Path) -> str:
    """The study's storage: by default an SQLite file in the sweep folder (no server);
    any SQLAlchemy URL; or `journal:<file>` for Optuna's journal on a shared file system."""
    if storage:
        return storage
    return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def _storage(url: str) -> Any:
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(Path(url[len("journal:"):]).expanduser())))
    return url


def make_pruner(name: str, startup_trials: int, warmup_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                           n_warmup_steps=warmup_epochs)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SearchError(f"hydra.sweeper.pruner={name!r} is not allowed: median or none")


def make_sampler(config: Any, seed: Optional[int],
                 space: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
    """The sampler a `hydra/sweeper/sampler` option describes (`_target_` and its arguments, as
    Hydra's own Optuna sweeper takes them), with `seed`; GridSampler gets the space's grid."""
    from hydra.utils import instantiate

    target = str(config.get("_target_", ""))
    extra: dict[str, Any] = {"seed": seed}
    if target.endswith("GridSampler"):
        extra["search_space"] = grid(space)
    try:
        sampler = instantiate(config, **extra, _partial_=False)
    except Exception as err:  # Hydra wraps the sampler's own TypeError or ImportError
        cause = err.__cause__ or err
        raise SearchError(f"hydra.sweeper.sampler ({target or 'no _target_'}) cannot be made: "
                          f"{str(cause).strip().splitlines()[0][:200]}") from None
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise SearchError(f"hydra.sweeper.sampler._target_={target} is not an Optuna sampler: "
                          f"choose hydra/sweeper/sampler=tpe|random|cmaes|nsgaii|grid|qmc|gp")
    return sampler


def grid(space: dict[str, BaseDistribution]) -> dict[str, list[Any]]:
    """Every value of each key, for GridSampler: choice() and range() only."""
    out = {}
    for key, d in space.items():
        if isinstance(d, CategoricalDistribution):
            out[key] = list(d.choices)
        elif getattr(d, "step", None) is not None:
            count = int(round((d.high - d.low) / d.step)) + 1
            out[key] = [type(d.low)(d.low + i * d.step) for i in range(count)]
        else:
            raise SearchError(f"hydra/sweeper/sampler=grid needs a finite set of values, and "
                              f"{key} is an interval: give it as choice(...) or range(...)")
    return out


def grid_size(space: dict[str, BaseDistribution]) -> int:
    return math.prod(len(v) for v in grid(space).values())


# What a trial can be judged on: its run's summary.json field and the metrics.csv column that
# holds it per epoch (None: not known before the end, so no pruning on it).
OBJECTIVES = {"val_acc": ("final_val_acc", "val_acc"), "val_loss": ("final_val_loss", "val_loss"),
              "seconds": ("wall_seconds", None)}
DIRECTIONS = ("maximize", "minimize")


def objectives(direction: Any, objective: Any) -> tuple[list[str], list[str]]:
    """(objective names, directions), one per objective. With no objective named, one direction
    judges the validation accuracy (maximize) or the validation loss (minimize)."""
    directions = [direction] if isinstance(direction, str) else list(direction or [])
    bad = [d for d in directions if d not in DIRECTIONS]
    if not directions or bad:
        raise SearchError(f"hydra.sweeper.direction={direction!r} is not allowed: maximize or "
                          f"minimize, or a list of them, one per objective")
    if objective is None:
        if len(directions) > 1:
            raise SearchError(f"hydra.sweeper.direction has {len(directions)} directions: name "
                              f"as many objectives, e.g. hydra.sweeper.objective=[val_acc,seconds]")
        return (["val_acc"] if directions[0] == "maximize" else ["val_loss"]), directions
    names = [objective] if isinstance(objective, str) else list(objective)
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or len(names) != len(directions):
        raise SearchError(f"hydra.sweeper.objective={objective!r} is not allowed: one of "
                          f"{', '.join(OBJECTIVES)} per direction ({len(directions)})")
    return names, directions


def open_study(name: str, url: str, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner, sweep_dir: Path,
               directions: list[str]) -> optuna.Study:
    """The study (made, or reopened when it exists). A storage that cannot be opened is one
    line, and leaves no new file or folder behind."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    made = [p for p in (sweep_dir, *sweep_dir.parents) if not p.exists()]
    default_db = sweep_dir / "study.db"
    had_db = default_db.exists()
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = _storage(url)
        try:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                      pruner=pruner)
        except KeyError:  # no such study yet
            return optuna.create_study(study_name=name, storage=storage, directions=directions,
                                       sampler=sampler, pruner=pruner)
    except Exception as err:  # SQLAlchemy's, the journal's and the OS's errors alike
        if not had_db and default_db.exists() and url == storage_url(None, sweep_dir):
            default_db.unlink()
        for folder in made:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise SearchError(f"hydra.sweeper.storage={url!r} cannot be opened ({reason}): give an "
                          f"SQLAlchemy URL (sqlite:///FILE, postgresql://...) or journal:FILE, "
                          f"FILE in a folder that can be written") from None
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise SearchError(f"study {name!r} was begun with direction {have}, not {directions}: give "
                          f"another hydra.sweeper.study_name or hydra.sweep.dir for a new study")
    return study


def name_metrics(study: optuna.Study, names: list[str]) -> None:
    """The objectives' names, which optuna-dashboard shows instead of "Objective 0"."""
    import warnings

    with warnings.catch_warnings():  # an experimental API of Optuna's, stable in practice
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study.metric_names != names:
            study.set_metric_names(names)


def continued_seed(seed: int, study: optuna.Study) -> int:
    """The sampler's seed for a process that finds the study with n trials: the seed itself for
    a new study, then one derived from (seed, n), so a reopened study's sampler does not repeat
    the draws its first process made."""
    n = len(study.get_trials(deepcopy=False))
    return seed if n == 0 else int.from_bytes(
        hashlib.sha256(f"{seed}:{n}".encode()).digest()[:4], "big")


MAX_REPEATS = 50  # points asked in a row that were all tried before: the space is used up


def same_point(study: optuna.Study, trial: optuna.trial.Trial) -> Optional[int]:
    """The number of an earlier trial with exactly this trial's values (its run directory would
    be this trial's), or None. A repeat is not run and not counted: a trial is never credited
    with another trial's run."""
    for other in study.get_trials(deepcopy=False):
        if (other.number < trial.number and other.params == trial.params
                and "duplicate_of" not in other.user_attrs):
            return other.number
    return None


def check_same_command(study: optuna.Study, space: dict[str, BaseDistribution],
                       fixed: list[str]) -> None:
    """A study resumes only under the search space and fixed overrides it began with: its
    trials would not be comparable otherwise. A new study records them."""
    want = {"space": {k: optuna.distributions.distribution_to_json(d) for k, d in space.items()},
            "fixed": sorted(fixed)}
    have = {k: study.user_attrs.get(k) for k in want}
    if have["space"] is None:
        for k, v in want.items():
            study.set_user_attr(k, v)
        return
    space_diff = sorted(k for k in set(have["space"]) | set(want["space"])
                        if have["space"].get(k) != want["space"].get(k))
    fixed_diff = sorted(set(have["fixed"] or []) ^ set(want["fixed"]))
    if space_diff or fixed_diff:
        raise SearchError(f"study {study.study_name!r} was begun with another command (it "
                          f"differs in {', '.join(space_diff + fixed_diff)}): give another "
                          f"hydra.sweeper.study_name or hydra.sweep.dir to start a new study")


def enqueue_baseline(study: optuna.Study, space: dict[str, BaseDistribution], config: Any) -> None:
    """Trial 0 runs the config's own values of the searched keys (those inside the space): the
    defaults a search has to beat, judged at the same budget, in the same study."""
    values = {k: OmegaConf.select(config, k) for k in space}
    inside = {k: _as_sampled(space[k], v) for k, v in values.items() if _contains(space[k], v)}
    if inside:
        study.enqueue_trial(inside, user_attrs={"baseline": True})


def _as_sampled(d: BaseDistribution, value: Any) -> Any:
    """The value as the space would give it (a config's 1.0 is the choice 1), so the trial's
    run directory is named as a sampled one would be."""
    if isinstance(d, CategoricalDistribution):
        return next(c for c in d.choices if c == value)
    return int(value) if isinstance(d, IntDistribution) else float(value)


def _contains(d: BaseDistribution, value: Any) -> bool:
    if isinstance(d, CategoricalDistribution):
        return value in d.choices
    return isinstance(value, (int, float)) and d.low <= value <= d.high


def outcome(run_dir: Path, job_failed: Optional[str], names: Sequence[str] = ("val_acc",),
            sweep_dir: Optional[Path] = None) -> Optional[tuple[TrialState, Optional[list[float]], dict]]:
    """What to tell the study about the trial run in `run_dir`: (state, values of the named
    objectives, attributes), or None when it is not finished (pre-empted, or run by another
    process): it stays RUNNING and a rerun of the search resumes it."""
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        summary = {}
    status = summary.get("status", Status.FAILED if job_failed else Status.UNKNOWN)
    shown = _relative(str(run_dir), sweep_dir) if sweep_dir is not None else str(run_dir)
    attrs = {"run_dir": shown, "status": status, "val_acc": summary.get("final_val_acc"),
             "val_loss": summary.get("final_val_loss"),
             "test_acc": summary.get("final_test_acc"), "seconds": summary.get("wall_seconds")}
    if job_failed and status not in FINISHED:
        return TrialState.FAIL, None, {**attrs, "status": Status.FAILED, "error": job_failed}
    if status == Status.COMPLETE:
        values = [summary.get(OBJECTIVES[n][0]) for n in names]
        if any(v is None or not math.isfinite(v) for v in values):
            return TrialState.FAIL, None, {**attrs, "error": f"no {', '.join(names)} logged"}
        return TrialState.COMPLETE, [float(v) for v in values], attrs
    if status == Status.PRUNED:
        return TrialState.PRUNED, None, attrs
    if status in (Status.DIVERGED, Status.OOM, Status.TIMEOUT):
        return TrialState.FAIL, None, attrs
    return None


def judge_from_env(sweeper_cfg: Any, sweep_dir: Path) -> Optional[Any]:
    """Inside a trial's job: a judge that reports each epoch's validation accuracy of the result
    phase to the study and says whether the pruner stops the trial there. None outside a search
    or without pruning."""
    trial_id = os.environ.get(TRIAL_ENV)
    if trial_id is None or sweeper_cfg.get("pruner", "none") == "none":
        return None
    names, _ = objectives(sweeper_cfg.get("direction", "maximize"), sweeper_cfg.get("objective"))
    column = OBJECTIVES[names[0]][1]
    if len(names) > 1 or column is None:  # Optuna prunes on one objective known every epoch
        return None
    study = optuna.load_study(
        study_name=sweeper_cfg.study_name or sweep_dir.name,
        storage=_storage(storage_url(sweeper_cfg.storage, sweep_dir)),
        pruner=make_pruner(sweeper_cfg.pruner, sweeper_cfg.pruner_startup_trials,
                           sweeper_cfg.pruner_warmup_epochs))
    # Optuna's documented way to act for a trial asked elsewhere (another process).
    trial = optuna.trial.Trial(study, int(trial_id))

    def judge(phase: str, row: dict[str, Any]) -> bool:
        if phase not in RESULT_PHASES or column not in row:
            return False
        trial.report(float(row[column]), step=int(row["epoch"]))
        return trial.should_prune()

    return judge


def override_value(value: Any) -> str:
    """A sampled value as a Hydra override value (floats in their shortest exact form)."""
    return repr(value) if isinstance(value, float) else str(value)


def write_tables(study: optuna.Study, sweep_dir: Path) -> dict[str, Any]:
    """study.csv (a row per trial) and study.json (the study, its best trial and the
    parameters' importances) beside the trials: what `analysis.report` reads. Returns the
    study.json content."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    params = sorted({k for t in trials for k in t.params})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", "state", "val_acc", "val_loss", "test_acc", "status", "seconds",
                     *params, "run_dir"])
    for t in trials:
        a = t.user_attrs
        writer.writerow(["" if c is None else c for c in (
            t.number, t.state.name.lower(), _val_acc(t), a.get("val_loss"), a.get("test_acc"),
            a.get("status", ""), a.get("seconds"), *(t.params.get(k) for k in params),
            _relative(a.get("run_dir", ""), sweep_dir))])
    atomic_write_text(sweep_dir / STUDY_CSV, out.getvalue())

    done = [t for t in trials if t.state == TrialState.COMPLETE]
    directions = [d.name.lower() for d in study.directions]
    names = study.metric_names or ["val_acc"]
    if len(directions) == 1:
        pick = max if directions[0] == "maximize" else min
        front = [pick(done, key=lambda t: t.values[0])] if done else []
    else:  # several objectives: the Pareto front, earliest first
        front = sorted(study.best_trials, key=lambda t: t.number) if done else []
    best = front[0] if front else None
    summary = {
        "study": study.study_name,
        "direction": directions[0] if len(directions) == 1 else directions,
        "metric": names[0] if len(names) == 1 else names,
        "pareto": [t.number for t in front] if len(directions) > 1 else None,
        "space": {k: describe(optuna.distributions.json_to_distribution(v))
                  for k, v in (study.user_attrs.get("space") or {}).items()},
        "fixed": study.user_attrs.get("fixed"),
        "trials": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        "best": None if best is None else {
            "trial": best.number, "val_acc": _val_acc(best), "values": best.values,
            "params": best.params,
            "test_acc": best.user_attrs.get("test_acc"),
            "run_dir": _relative(best.user_attrs.get("run_dir", ""), sweep_dir)},
        "baseline": next(({"trial": t.number, "state": t.state.name.lower(), "val_acc": _val_acc(t),
                           "params": t.params, "test_acc": t.user_attrs.get("test_acc")}
                          for t in trials if t.user_attrs.get("baseline")), None),
        "importances": importances(study, len(done)),
    }
    if summary["pareto"] is None:
        del summary["pareto"]
    atomic_write_text(sweep_dir / STUDY_JSON, json.dumps(summary, indent=2) + "\n")
    return summary


def _val_acc(t: optuna.trial.FrozenTrial) -> Optional[float]:
    """A trial's validation accuracy (studies made before it was recorded: their value)."""
    if "val_acc" in t.user_attrs:
        return t.user_attrs["val_acc"]
    return t.value if len(t.values or []) == 1 else None


def _relative(run_dir: str, sweep_dir: Path) -> str:
    """A trial's run directory as the sweep folder's subfolder, so the tables move with it."""
    if not Path(run_dir).is_absolute():
        return run_dir
    try:
        return str(Path(run_dir).resolve().relative_to(sweep_dir.resolve()))
    except ValueError:
        return run_dir


def describe(d: BaseDistribution) -> str:
    """A distribution as the report prints it: `log [0.0001, 0.003]`, `{0, 1, 2}`."""
    if isinstance(d, CategoricalDistribution):
        return "{" + ", ".join(map(str, d.choices)) + "}"
    scale = "log " if getattr(d, "log", False) else ""
    step = f" step {d.step}" if getattr(d, "step", None) not in (None, 1) else ""
    return f"{scale}[{d.low}, {d.high}]{step}"


def importances(study: optuna.Study, completed: int) -> Optional[dict[str, float]]:
    """PED-ANOVA importances (no scikit-learn needed), once there are trials enough to rank."""
    if completed < 4:
        return None
    try:
        ranked = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
            target=(lambda t: t.values[0]) if len(study.directions) > 1 else None)
    except (RuntimeError, ValueError):  # too few distinct values to tell the parameters apart
        return None
    return {k: round(float(v), 4) for k, v in ranked.items()}


def unfinished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials asked but never told: a search killed mid-batch leaves them; they are resumed."""
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def trial_id(trial: Any) -> int:
    """The storage's id of a trial, which a run in another process needs to report to it
    (`optuna.trial.Trial(study, id)`); Optuna has no public accessor for it."""
    return trial._trial_id


def finished(study: optuna.Study) -> int:
    """Trials that ran to an end (repeats of an earlier point are not counted)."""
    return sum("duplicate_of" not in t.user_attrs
               for t in study.get_trials(deepcopy=False, states=FINISHED_STATES))


def trial_overrides(fixed: Iterable[str], params: dict[str, Any],
                    trial_id: Optional[int] = None) -> list[str]:
    """One trial's job: the fixed overrides, its sampled values, and (a Hydra override, so not
    part of the run's name) the trial id its epochs report to."""
    job = [*fixed, *(f"{k}={override_value(v)}" for k, v in params.items())]
    return job if trial_id is None else [*job, f"+hydra.job.env_set.{TRIAL_ENV}={trial_id}"]
