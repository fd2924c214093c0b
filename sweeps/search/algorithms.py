"""``--search grid|random|optuna``: how a stage's rows and its search space become one Ray Tune experiment.

Every searched trial's Tune config is laid out the same way (``sweeps.trial_config.trial_from_config`` reads it)::

    {"rows": {config id: the row's trial dict}, "row": <which row>, "params": {"train.lr": <a draw>, ...}}

so ``params.json`` holds what the searcher drew, by the field's dotted name. A grid without a space keeps the
grid's layout (``{"trial": <the row>}``, one trial per row).

* ``grid`` — every row (× every value of each ``grid`` field of the space): Tune's ``grid_search``; a space
  with a sampled distribution is refused (use ``random`` or ``optuna``).
* ``random`` — Tune's ``BasicVariantGenerator`` seeded with ``--search-seed``: rows gridded (or a ``choice``),
  ``--num-samples`` draws of the space per row.
* ``optuna`` — Optuna's TPE sampler through ``ray.tune.search.optuna.OptunaSearch``, seeded with
  ``--search-seed`` (its first ``n_startup_trials`` = 10 suggestions are seeded independent draws, so a small
  search suggests the same configs in the same order whatever order results arrive; later ones follow the
  results, so with several trials in flight they also depend on which finished first). Rows are a ``choice``
  (Optuna cannot grid); ``--num-samples`` trials in all. ``--search-storage`` keeps the Optuna study in a database
  (``sqlite:///study.db``, a PostgreSQL URL) that ``optuna-dashboard`` opens.

Points to evaluate first (``points:`` in the space file, default: each row's own values of the searched fields,
where they lie in the space, i.e. what the grid would have run) count toward ``--num-samples``. A killed driver
resumes with ``--resume``: Tune saves the searcher with the experiment and restores it (finished trials are kept,
none is suggested twice).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

from vlm_core.base.errors import ConfigError
from vlm_core.base.registry import Registry
from vlm_core.config import TrainConfig, VLMConfig

from .space import SearchSpace, field_value

SEARCH_FILE = "search.json"
"""In each stage's experiment folder: the algorithm, its space and how many trials it runs (``TuneSearch.record``)."""


@dataclass
class SearchSettings:
    """What the search flags of a sweep say (``sweeps.driver.SweepConfig``)."""

    algorithm: str = "grid"
    num_samples: int = 1
    seed: int = 0
    storage: str | None = None
    study_name: str = "vlm-sweep"


@dataclass
class Row:
    """A row of the stage's grid as a search starts from it: its trial dict and its configs (for default points)."""

    config_id: str
    trial: dict[str, Any]
    model: VLMConfig
    train: TrainConfig


@dataclass
class TuneSearch:
    """One stage's Tune ``param_space``, search algorithm (None: Tune's default generator) and ``num_samples``."""

    param_space: dict[str, Any]
    search_alg: Any
    num_samples: int
    trials: int
    """How many trials the experiment runs when complete (a resumed search that has fewer is unfinished)."""
    algorithm: str = "grid"
    space: SearchSpace | None = None
    points: list[dict[str, Any]] | None = None
    """The points evaluated first, as ``{"row": ..., "params": {...}}`` (``row`` when there are several)."""

    def record(self) -> dict[str, Any]:
        """``search.json`` of the experiment: what the reports, the analysis notebook and a stage 2 that also
        continues the points (``--stage2-with-points``) read."""
        return {"algorithm": self.algorithm, "num_samples": self.num_samples, "trials": self.trials,
                **(self.space.to_json() if self.space else {"space": {}}), "evaluated_first": self.points or []}


def default_points(rows: list[Row], space: SearchSpace, with_row: bool) -> list[dict[str, Any]]:
    """Each row's own values of the searched fields (what the grid would run), where every one lies in the space."""
    points = []
    for r in rows:
        values = {n: field_value(r.model, r.train, n) for n in space.names()}
        if all(space.fields[n].contains(v) for n, v in values.items()):
            points.append({**({"row": r.config_id} if with_row else {}), "params": values})
    return points


def _rows_domain(rows: list[Row], how: str):
    import ray.tune

    ids = [r.config_id for r in rows]
    if len(ids) == 1:
        return ids[0]
    return ray.tune.grid_search(ids) if how == "grid" else ray.tune.choice(ids)


def _layout(rows: list[Row], space: SearchSpace, rows_how: str) -> dict[str, Any]:
    return {"rows": {r.config_id: r.trial for r in rows}, "row": _rows_domain(rows, rows_how),
            "params": {n: d.to_tune() for n, d in space.fields.items()}}


def _points(rows: list[Row], space: SearchSpace) -> list[dict[str, Any]]:
    """The points to evaluate first, each naming its row when there are several (the file's points on every row)."""
    if not space.points:
        return default_points(rows, space, with_row=len(rows) > 1)
    if len(rows) == 1:
        return [{"params": dict(p)} for p in space.points]
    return [{"row": r.config_id, "params": dict(p)} for p in space.points for r in rows]


def _flat(point: dict[str, Any]) -> dict[str, Any]:
    """A point as Optuna's parameter names (Tune flattens the config with ``/``)."""
    return {**({"row": point["row"]} if "row" in point else {}),
            **{f"params/{n}": v for n, v in point["params"].items()}}


def grid_search(rows: list[Row], space: SearchSpace, s: SearchSettings) -> TuneSearch:
    import ray.tune

    check_search("grid", space)
    if not space:
        return TuneSearch({"trial": ray.tune.grid_search([r.trial for r in rows])}, None, 1, len(rows))
    return TuneSearch(_layout(rows, space, "grid"), None, 1, len(rows) * _grid_size(space), "grid", space)


def _grid_size(space: SearchSpace, fixed: frozenset[str] = frozenset()) -> int:
    out = 1
    for n, d in space.fields.items():
        out *= len(d.values) if d.is_grid() and n not in fixed else 1
    return out


def random_trials(rows: list[Row], space: SearchSpace, points: list[dict[str, Any]], num_samples: int) -> int:
    """How many trials Tune's ``BasicVariantGenerator`` makes (its ``_count_variants`` rule): each point runs once
    per grid combination it does not fix, then ``num_samples - len(points)`` samples of every grid combination."""
    row_grid = len(rows) if len(rows) > 1 and (space.rows or "grid") == "grid" else 1
    total = 0
    for p in points:
        total += (1 if "row" in p else row_grid) * _grid_size(space, frozenset(p["params"]))
    return total + max(0, num_samples - len(points)) * row_grid * _grid_size(space)


def random_search(rows: list[Row], space: SearchSpace, s: SearchSettings) -> TuneSearch:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    points = _points(rows, space)
    return TuneSearch(_layout(rows, space, space.rows or "grid"),
                      BasicVariantGenerator(points_to_evaluate=points or None, random_state=s.seed),
                      s.num_samples, random_trials(rows, space, points, s.num_samples), "random", space, points)


def optuna_search(rows: list[Row], space: SearchSpace, s: SearchSettings) -> TuneSearch:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    check_search("optuna", space, len(rows))
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "new study created" line is not a trial event
    # a trial resumed from a checkpoint says its last epoch's result again (sweeps.trial), which Optuna already has
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step", module="optuna")
    nested = _points(rows, space)
    points = [_flat(p) for p in nested]
    storage = optuna.storages.RDBStorage(s.storage) if s.storage else None
    searcher = OptunaSearch(points_to_evaluate=points or None, sampler=optuna.samplers.TPESampler(seed=s.seed),
                            storage=storage, study_name=s.study_name if storage else None)
    return TuneSearch(_layout(rows, space, "choice"), searcher, s.num_samples, s.num_samples, "optuna", space,
                      nested)


SEARCHERS: Registry[Callable[[list[Row], SearchSpace, SearchSettings], TuneSearch]] = Registry(
    "search", "search algorithm", {"grid": grid_search, "random": random_search, "optuna": optuna_search})
"""``--search`` → how a stage's rows and space become a Tune experiment."""


def tune_search(rows: list[Row], space: SearchSpace, settings: SearchSettings) -> TuneSearch:
    """The stage's Tune experiment layout for ``settings.algorithm``."""
    return SEARCHERS[settings.algorithm](rows, space, settings)


def check_search(algorithm: str, space: SearchSpace, rows: int = 1) -> None:
    """Refuse, before Ray starts, a space the algorithm cannot search over the stage's ``rows`` (a sampled
    distribution in a grid; a grid in Optuna, of fields or of several rows)."""
    if algorithm == "grid":
        sampled = [n for n, d in space.fields.items() if not d.is_grid()]
        if sampled:
            raise ConfigError(f"search: --search grid enumerates; {', '.join(sampled)} in {space.source} "
                              f"{'is a sampled distribution' if len(sampled) == 1 else 'are sampled distributions'}: "
                              f"use --search random or optuna, or write {{grid: [...]}}")
    if algorithm == "optuna":
        grids = [n for n, d in space.fields.items() if d.is_grid()]
        if grids:
            raise ConfigError(f"search: Optuna cannot grid; {', '.join(grids)} in {space.source} "
                              f"{'uses' if len(grids) == 1 else 'use'} {{grid: ...}}: write {{choice: [...]}} "
                              f"(Optuna picks) or use --search random")
        if rows > 1 and space.rows == "grid":
            raise ConfigError(f"search: Optuna cannot grid the {rows} rows ({space.source} says study.rows: grid); "
                              f"use study.rows: choice, one row (--paper-ids / --limit 1), or --search random")
