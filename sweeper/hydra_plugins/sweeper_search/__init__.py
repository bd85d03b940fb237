"""`hydra/sweeper=optuna`: a Hydra sweeper on Optuna's ask/tell API.

It asks the study for a batch of `n_jobs` trials, launches them through whatever
`hydra/launcher` is chosen (basic, joblib, submitit/SLURM) as ordinary runs with ordinary run
directories, reads each run's outcome from its directory and tells the study. Rerunning the
command reopens the study: finished trials count, asked-but-unfinished ones are run again
(their run directories resume from their checkpoints). The search logic is `sweeper.search`.

Hydra loads sweepers only from the `hydra_plugins` namespace; pyproject.toml installs this
folder as `hydra_plugins.sweeper_search`, and `python -m sweeper` registers it explicitly
(an editable install hides it from Hydra's scan). This module imports no Optuna until used.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


# Keys of Hydra's own Optuna sweeper this one does not take, and what to write instead.
INSTEAD = {"search_space": "hydra.sweeper.params (Hydra's sweep syntax)"}


class OptunaSweeper(Sweeper):
    """Takes the keys of Hydra's own Optuna sweeper (hydra-optuna-sweeper), so its users'
    configs run as they are written, and this project's: objective, pruner, baseline."""

    def __init__(self, sampler: Any, direction: Any = "maximize", objective: Any = None,
                 n_trials: int = 20, n_jobs: int = 2, study_name: Optional[str] = None,
                 storage: Optional[str] = None, max_failure_rate: float = 1.0,
                 custom_search_space: Optional[str] = None,
                 params: Optional[dict[str, str]] = None, pruner: str = "median",
                 pruner_startup_trials: int = 3, pruner_warmup_epochs: int = 1,
                 baseline: bool = True, **unknown: Any) -> None:
        self.sampler_config = sampler
        self.direction, self.objective = direction, objective
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.study_name, self.storage = study_name, storage
        self.max_failure_rate = max_failure_rate
        self.custom_search_space = custom_search_space
        self.pruner = (pruner, pruner_startup_trials, pruner_warmup_epochs)
        self.baseline = baseline
        self.params = dict(params or {})
        self.unknown = unknown

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        """An entry point of its own (Hydra calls it): its errors end the command here."""
        from sweeper.errors import SearchError, SweeperError

        try:
            try:
                importlib.import_module("sweeper.search")  # Optuna comes with it
            except ImportError as err:
                raise SearchError(f"hydra/sweeper=optuna needs Optuna ({err}): "
                                  f"pip install -e \".[search]\"") from None
            return self._sweep(arguments)
        except SweeperError as err:
            raise SystemExit(err.show()) from None

    def _space(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
        """The preset's params, then the command line (a plain value there fixes a key)."""
        from sweeper import search

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        space: dict[str, Any] = {}
        fixed: dict[str, str] = {}
        for override in parser.parse_overrides(lines):
            key = override.get_key_element()
            if override.is_sweep_override():
                fixed.pop(key, None)
                current = OmegaConf.select(self.config, key.lstrip("+"), default=None)
                integer = isinstance(current, int) and not isinstance(current, bool)
                space[key.lstrip("+")] = search.distribution(override, integer)
            else:
                space.pop(key.lstrip("+"), None)
                fixed[key] = override.input_line
        return space, fixed

    def _check(self, space: dict[str, Any], fixed: list[str]) -> None:
        """Before any trial: the objective exists, and one point of the space makes a valid run."""
        from sweeper import search
        from sweeper.preflight import invalid_jobs

        if not space:
            raise search.SearchError("nothing to search: give ranges in hydra.sweeper.params or "
                                     "on the command line, e.g. lr='tag(log, interval(1e-4, 3e-3))'")
        if int(OmegaConf.select(self.config, "data.val_size", default=0)) <= 0:
            raise search.SearchError(
                "a search is judged on validation accuracy, and data.val_size=0 holds no "
                "validation images out: give data.val_size, e.g. data.val_size=5000")
        probe = {k: d.low if hasattr(d, "low") else d.choices[0] for k, d in space.items()}
        bad, unused = invalid_jobs(self.config, [search.trial_overrides(fixed, probe)])
        if bad:
            raise search.SearchError(f"the search's runs would be invalid: {bad[0]}")
        if unused:
            raise search.SearchError(f"no run of this search uses {unused[0]}: drop it")

    def _sweep(self, arguments: list[str]) -> list:
        import optuna

        from sweeper import search

        if self.unknown:
            key = sorted(self.unknown)[0]
            raise search.SearchError(
                f"hydra.sweeper.{key} is not a key of this sweeper"
                + (f": write {INSTEAD[key]}" if key in INSTEAD else
                   ": see conf/hydra/sweeper/optuna.yaml for its keys"))
        for key in ("n_trials", "n_jobs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise search.SearchError(f"hydra.sweeper.{key}={value!r} is not allowed: "
                                         f"a whole number of at least 1")
        if not 0.0 <= float(self.max_failure_rate) <= 1.0:
            raise search.SearchError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate!r} "
                                     f"is not allowed: a fraction from 0.0 to 1.0")
        names, directions = search.objectives(self.direction, self.objective)
        extend = self._extender()
        space, fixed_by_key = self._space(arguments)
        fixed = list(fixed_by_key.values())
        self._check(space, fixed)
        seed = self.sampler_config.get("seed")
        is_grid = str(self.sampler_config.get("_target_", "")).endswith("GridSampler")
        n_trials = min(self.n_trials, search.grid_size(space)) if is_grid else self.n_trials
        sweep_dir = Path(self.config.hydra.sweep.dir)
        study = search.open_study(
            self.study_name or sweep_dir.name, search.storage_url(self.storage, sweep_dir),
            search.make_sampler(self.sampler_config, seed, space),
            search.make_pruner(*self.pruner), sweep_dir, directions)
        named = [f"hydra.sweeper.objective={n}" for n in names if names != ["val_acc"]]
        if self.custom_search_space:
            named.append(f"hydra.sweeper.custom_search_space={self.custom_search_space}")
        search.check_same_command(study, space, [*fixed, *named])
        search.name_metrics(study, names)
        # A reopened study's sampler continues from the study, not from its first draw.
        study.sampler = search.make_sampler(
            self.sampler_config, None if seed is None else search.continued_seed(seed, study), space)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if self.baseline and not is_grid and not study.get_trials(deepcopy=False):
            search.enqueue_baseline(study, space, self.config)
        resumed = [optuna.trial.Trial(study, search.trial_id(t)) for t in search.unfinished(study)]
        if resumed:
            print(f"study {study.study_name}: resuming {len(resumed)} unfinished trial(s)", flush=True)
        job_idx, returns, best, repeats = 0, [], None, 0
        while True:
            batch, resumed = resumed[:self.n_jobs], resumed[self.n_jobs:]
            room = n_trials - search.finished(study) - len(batch) - len(resumed)
            for _ in range(max(0, min(self.n_jobs - len(batch), room))):
                trial = study.ask(space)
                if extend is not None:
                    extend(self.config, trial)
                earlier = search.same_point(study, trial)
                if earlier is None:
                    batch.append(trial)
                    continue
                repeats += 1
                trial.set_user_attr("duplicate_of", earlier)
                trial.set_user_attr("status", f"repeat of trial {earlier}")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                print(f"trial {trial.number}: the point of trial {earlier} again, not run "
                      f"(not counted)", flush=True)
            if not batch:
                if room > 0 and repeats < search.MAX_REPEATS:
                    continue
                if room > 0:
                    print(f"study {study.study_name}: {repeats} points asked in a row were "
                          f"tried already: the space has no new point left", flush=True)
                    best = search.write_tables(study, sweep_dir)["best"]
                break
            repeats = 0
            jobs = [search.trial_overrides(fixed, t.params, search.trial_id(t)) for t in batch]
            results = self.launcher.launch(jobs, initial_job_idx=job_idx)
            job_idx += len(batch)
            returns.append(results)
            told = [self._tell(study, trial, result, names, sweep_dir)
                    for trial, result in zip(batch, results)]
            best = search.write_tables(study, sweep_dir)["best"]
            failed = told.count(optuna.trial.TrialState.FAIL)
            if failed / len(batch) > self.max_failure_rate:
                raise search.SearchError(
                    f"{failed} of the {len(batch)} trials of the last batch failed, more than "
                    f"hydra.sweeper.max_failure_rate={self.max_failure_rate} allows: the study "
                    f"stops here ({sweep_dir / search.STUDY_CSV} lists them)")
            # none ended (pre-empted, or held by another search): asking more would not end
            if all(state is None for state in told):
                print(f"study {study.study_name}: no trial of this batch finished; rerun the "
                      f"command to resume them", flush=True)
                break
        if best is not None:
            values = ", ".join(f"{n} {v:.4f}" for n, v in zip(names, best["values"]))
            print(f"study {study.study_name}: best trial {best['trial']}, {values}, "
                  f"{best['params']} ({sweep_dir / search.STUDY_CSV})", flush=True)
        return returns

    def _extender(self) -> Any:
        """`custom_search_space`: a function (cfg, trial) that suggests more values per trial."""
        from sweeper import search

        if not self.custom_search_space:
            return None
        from hydra.utils import get_method

        try:
            return get_method(self.custom_search_space)
        except Exception as err:
            raise search.SearchError(f"hydra.sweeper.custom_search_space="
                                     f"{self.custom_search_space} cannot be imported: "
                                     f"{str(err.__cause__ or err).splitlines()[0]}") from None

    def _tell(self, study: Any, trial: Any, result: Any, names: list[str],
              sweep_dir: Path) -> Any:
        """Tell the study how the trial's run ended: the state told, or None if it has not
        ended."""
        from sweeper import search

        run_dir = Path(result.hydra_cfg.hydra.runtime.output_dir)
        error = None
        if result.status == JobStatus.FAILED:
            try:
                result.return_value  # Hydra's public way to a failed job's error: it raises it
            except Exception as err:
                error = str(err)
        told = search.outcome(run_dir, error, names, sweep_dir)
        if told is None:
            print(f"trial {trial.number}: not finished ({run_dir}); a rerun resumes it", flush=True)
            return None
        state, values, attrs = told
        for key, v in attrs.items():
            trial.set_user_attr(key, v)
        try:
            study.tell(trial, values, state=state)
        except RuntimeError as err:  # GridSampler asks to stop once the grid is done: it is
            if "Study.stop" not in str(err):  # recorded all the same, and the loop ends there
                raise
        shown = (", ".join(f"{n} {v:.4f}" for n, v in zip(names, values)) if values is not None
                 else attrs["status"])
        print(f"trial {trial.number}: {shown} | {trial.params}", flush=True)
        return state
