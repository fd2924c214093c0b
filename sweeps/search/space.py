"""Search spaces as data: distributions over trial fields by their dotted names, checked against the typed configs.

A space file (``--space FILE.yaml``, or the same mapping inline as JSON / YAML) maps a trial field to a
distribution; an optional ``points`` list names configurations to evaluate first::

    space:
      train.lr: {loguniform: [1.0e-5, 1.0e-2]}
      train.warmup_ratio: {uniform: [0.0, 0.1]}
      train.scheduler: {choice: [linear, cosine]}
      model.projector.dense_groups: {randint: [2, 6]}     # 2..6, both included
      train.batch_size: {grid: [2, 4]}
    points:                                               # optional; default: each grid row's own values
      - {train.lr: 2.0e-5}

(A file holding only the field mapping, without ``space:``, is read as the space.) Fields are ``train.*``
(:class:`vlm_core.config.TrainConfig`) and ``model.*`` (:class:`vlm_core.config.VLMConfig`) leaves, by the dotted name
their config errors use. Everything is checked when the file is read, before Ray starts: an unknown field, a
field the sweep sets itself (the stage, the parent checkpoint, the models' sources), a distribution that is not one
of :data:`DISTRIBUTIONS`, bounds in the wrong order, a float distribution over an integer field, and a bound or
choice the config refuses (each is applied to the config, whose own checks run) — each refused naming the file,
the field and the fix.

The study's axes (the grid's rows: dataset, dense, chat, scheduler, epochs, batch) come from ``--grid`` /
``--paper-ids`` / ``--limit``; ``study.rows`` in the space says whether several rows are gridded (``grid``, every
row × every sample; the default for grid and random search) or searched (``choice``: the searcher picks a row;
Optuna's only way, it cannot grid). A searched field that is also a row's axis (``train.scheduler``,
``train.epochs``, ``train.batch_size``, ``train.lr``, ``model.projector.name``, ``model.format.mode``) overrides it,
and the trial's spec (its config id, its axes in the reports) says the value it ran.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from vlm_core.base.errors import ConfigError
from vlm_core.base.hashing import json_digest
from vlm_core.config import TrainConfig, VLMConfig
from vlm_core.config.parse import dataclass_in

ROWS_FIELD = "study.rows"
"""The pseudo-field that says how the grid's rows combine with the space (``grid`` or ``choice``)."""

FIXED_FIELDS = {
    "train.stage": "the stage is the sweep's (--stage)",
    "train.init_checkpoint": "stage 2 starts from its parent's checkpoint, which the sweep picks",
    "train.sharding": "sharding follows --stage2-sharding (it changes the trial's workers)",
    "train.max_steps_per_epoch": "the preset's scale sets it (--max-steps-per-epoch for every trial)",
    "train.max_val_samples": "every trial must be judged on the same validation samples",
    "train.val_every_epoch": "the search reads the validation loss every epoch",
    "train.lora.target_modules": "a list, not a searchable value",
    "model.vision.source": "the models are the preset's (feature caches and assets are keyed by them)",
    "model.vision.revision": "the models are the preset's",
    "model.vision.encoder": "the models are the preset's",
    "model.lm.source": "the models are the preset's",
    "model.lm.revision": "the models are the preset's",
    "model.lm.tokenizer": "the models are the preset's",
    "model.lm.tokenizer_revision": "the models are the preset's",
}
"""Fields a space may not search, and why."""


@dataclass(frozen=True)
class Distribution:
    """One field's distribution: ``kind`` (a key of :data:`DISTRIBUTIONS`) and its arguments."""

    kind: str
    args: tuple[Any, ...]

    @property
    def values(self) -> tuple[Any, ...]:
        """Every value a ``choice`` / ``grid`` takes; the two bounds of a range."""
        return self.args

    def is_grid(self) -> bool:
        return self.kind == "grid"

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this distribution can draw (within a range's bounds, or one of its values)."""
        if DISTRIBUTIONS[self.kind].ranged:
            return isinstance(value, (int, float)) and self.args[0] <= value <= self.args[1]
        return value in self.args

    def to_tune(self):
        """The Ray Tune domain (``tune.loguniform`` ...) or ``grid_search`` spec."""
        return DISTRIBUTIONS[self.kind].to_tune(*self.args)

    def to_json(self) -> dict[str, list[Any]]:
        return {self.kind: list(self.args)}


@dataclass(frozen=True)
class Kind:
    """A distribution kind: how many arguments, whether it draws floats, and its Tune domain."""

    to_tune: Callable[..., Any]
    floats: bool
    """Draws non-integer numbers (refused for an int field)."""
    ranged: bool
    """(low, high) bounds rather than a list of values."""
    doc: str


def _tune():
    import ray.tune

    return ray.tune


DISTRIBUTIONS: dict[str, Kind] = {
    "loguniform": Kind(lambda lo, hi: _tune().loguniform(lo, hi), True, True, "[low, high], log scale, low > 0"),
    "uniform": Kind(lambda lo, hi: _tune().uniform(lo, hi), True, True, "[low, high]"),
    "randint": Kind(lambda lo, hi: _tune().randint(lo, hi + 1), False, True, "integers low..high, both included"),
    "choice": Kind(lambda *v: _tune().choice(list(v)), False, False, "one of the listed values"),
    "grid": Kind(lambda *v: _tune().grid_search(list(v)), False, False, "every listed value (grid / random only)"),
}
"""Distribution name → its meaning (Ray Tune's names; ``randint``'s high is included here, unlike Tune's)."""


def _leaf_types() -> dict[str, Any]:
    """Every searchable leaf field (``train.lr``, ``model.projector.name`` ...) → its type hint."""
    out: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            nested = dataclass_in(hints[f.name])
            if nested is not None:
                walk(nested, f"{prefix}.{f.name}")
            else:
                out[f"{prefix}.{f.name}"] = hints[f.name]

    walk(TrainConfig, "train")
    walk(VLMConfig, "model")
    return out


def _scalar_types(hint: Any) -> set[type]:
    """The scalar types a field's hint admits (``int | None`` → {int})."""
    args = typing.get_args(hint) or (hint,)
    return {a for a in args if a in (int, float, str, bool)}


def set_field(model: dict[str, Any], train: dict[str, Any], name: str, value: Any) -> None:
    """Set ``name`` (``train.lr``, ``model.projector.name``) in the configs' dicts."""
    root, *path = name.split(".")
    d = train if root == "train" else model
    for part in path[:-1]:
        d = d[part]
    d[path[-1]] = value


def field_value(model: VLMConfig, train: TrainConfig, name: str) -> Any:
    """The value of a dotted field (``train.lr``, ``model.projector.name``) in the configs (:func:`set_field`'s
    reading side)."""
    root, *path = name.split(".")
    value: Any = train if root == "train" else model
    for part in path:
        value = getattr(value, part)
    return value


def apply(model: VLMConfig, train: TrainConfig, params: dict[str, Any]) -> tuple[VLMConfig, TrainConfig]:
    """The configs with ``params`` (dotted field → value) set, rebuilt so their own checks run."""
    m, t = model.to_dict(), train.to_dict()
    for name, value in params.items():
        set_field(m, t, name, value)
    return VLMConfig.from_dict(m), TrainConfig.from_dict(t)


@dataclass
class SearchSpace:
    """A checked space: field → distribution, the points to evaluate first, and how the grid's rows combine."""

    fields: dict[str, Distribution] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    rows: str | None = None
    """``grid``: every grid row × every sample; ``choice``: the searcher picks the row; None (not said): ``grid``
    for grid and random search, ``choice`` for Optuna."""
    source: str = "(inline)"

    def __bool__(self) -> bool:
        return bool(self.fields)

    def names(self) -> list[str]:
        return list(self.fields)

    def to_json(self) -> dict[str, Any]:
        return {"space": {k: d.to_json() for k, d in self.fields.items()}, "points": self.points, "rows": self.rows,
                "source": self.source}


def format_draw(params: dict[str, Any], code: bool = False) -> str:
    """A draw as ``train.lr=0.000443, train.scheduler=cosine`` (floats to 3 significant digits; ``code``: each
    name in backticks, for Markdown)."""
    tick = "`" if code else ""
    return ", ".join(f"{tick}{k}{tick}={v:.3g}" if isinstance(v, float) else f"{tick}{k}{tick}={v}"
                     for k, v in params.items())


def params_digest(params: dict[str, Any]) -> str:
    """Six hex digits naming a searched trial's parameters (its config id's suffix)."""
    return json_digest({k: params[k] for k in sorted(params)}, 6)


def _refuse(source: str, name: str, msg: str) -> ConfigError:
    return ConfigError(f"search space {source}: {name}: {msg}")


def _number(value: Any) -> Any:
    """``"1e-5"`` → 1e-05 (PyYAML's YAML 1.1 reads an exponent without a dot as text); anything else as it is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _parse_distribution(source: str, name: str, raw: Any, hint: Any) -> Distribution:
    kinds = ", ".join(f"{k} ({v.doc})" for k, v in DISTRIBUTIONS.items())
    if not isinstance(raw, dict) or len(raw) != 1:
        raise _refuse(source, name, f"expected one distribution as a mapping, e.g. {{loguniform: [1.0e-5, 1.0e-2]}} "
                                    f"or {{choice: [linear, cosine]}}; got {raw!r}. Distributions: {kinds}")
    (kind, args), = raw.items()
    if kind not in DISTRIBUTIONS:
        raise _refuse(source, name, f"unknown distribution {kind!r}; use one of: {kinds}")
    spec = DISTRIBUTIONS[kind]
    if not isinstance(args, list) or not args:
        raise _refuse(source, name, f"{kind} takes a non-empty list, e.g. {{{kind}: [a, b]}}; got {args!r}")
    types = _scalar_types(hint)
    if not types:
        raise _refuse(source, name, f"a field of type {hint} cannot be searched (numbers, strings and booleans can)")
    if str not in types:  # YAML 1.1 reads 1e-5 (no dot) as a string: a number field takes it as the number
        args = [_number(a) for a in args]
    if spec.ranged:
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise _refuse(source, name, f"{kind} takes two numbers [low, high]; got {args!r}")
        lo, hi = args
        if not lo < hi:
            raise _refuse(source, name, f"{kind} bounds must be low < high; got [{lo}, {hi}]")
        if kind == "loguniform" and lo <= 0:
            raise _refuse(source, name, f"loguniform needs low > 0 (a log scale); got {lo}")
        if spec.floats and float not in types:
            raise _refuse(source, name, f"is an integer field; {kind} draws fractions: use randint or choice")
        if not spec.floats and int not in types and float not in types:
            raise _refuse(source, name, f"is a {hint} field; randint draws integers")
        if kind == "randint" and not all(float(a).is_integer() for a in args):
            raise _refuse(source, name, f"randint bounds must be integers; got {args!r}")
        args = [int(a) for a in args] if kind == "randint" else [float(a) for a in args]
    else:
        if len(set(map(json.dumps, args))) != len(args):
            raise _refuse(source, name, f"{kind} lists a value twice: {args!r}")
        for v in args:
            ok = any(isinstance(v, t) and not (t is int and isinstance(v, bool)) for t in types) or \
                (float in types and isinstance(v, int) and not isinstance(v, bool))
            if not ok:
                raise _refuse(source, name, f"value {v!r} is not a {' or '.join(t.__name__ for t in types)}")
    return Distribution(kind, tuple(args))


def _check_values(source: str, name: str, dist: Distribution, base: tuple[VLMConfig, TrainConfig]) -> None:
    """Every bound / choice applied to a config: the config's own checks refuse a value out of its range."""
    model, train = base
    for v in dist.values:
        try:
            apply(model, train, {name: v})
        except ConfigError as e:
            what = "bound" if DISTRIBUTIONS[dist.kind].ranged else "value"
            raise _refuse(source, name, f"{dist.kind} {what} {v!r} is out of the field's range ({e})") from None


def parse_space(raw: Any, source: str = "(inline)", stage: int = 1,
                base: tuple[VLMConfig, TrainConfig] | None = None) -> SearchSpace:
    """A space from its mapping (see the module docstring), checked field by field against the configs (``base``:
    the configs bounds are applied to; default: the stage's defaults)."""
    if raw is None:
        return SearchSpace(source=source)
    if not isinstance(raw, dict):
        raise ConfigError(f"search space {source}: expected a mapping of field → distribution, got "
                          f"{type(raw).__name__}")
    fields_raw = raw.get("space", raw) if "space" in raw or "points" in raw else raw
    unknown_top = set(raw) - {"space", "points"} if "space" in raw or "points" in raw else set()
    if unknown_top:
        raise ConfigError(f"search space {source}: unknown key(s) {sorted(unknown_top)}; a space file holds "
                          f"`space:` (field → distribution) and optionally `points:` (configs to evaluate first)")
    if not isinstance(fields_raw, dict):
        raise ConfigError(f"search space {source}: `space:` must map fields to distributions")
    base = base or (VLMConfig(), TrainConfig(stage=stage, lm_tuning="full"))
    leaves = _leaf_types()
    fields: dict[str, Distribution] = {}
    rows = None
    for name, dist_raw in fields_raw.items():
        if name == ROWS_FIELD:
            if dist_raw not in ("grid", "choice"):
                raise _refuse(source, name, f"must be grid (every row × every sample) or choice (the searcher "
                                            f"picks a row); got {dist_raw!r}")
            rows = dist_raw
            continue
        if name in FIXED_FIELDS:
            raise _refuse(source, name, f"cannot be searched: {FIXED_FIELDS[name]}")
        if name not in leaves:
            near = [k for k in leaves if k.rsplit(".", 1)[-1] == str(name).rsplit(".", 1)[-1]]
            hint = f"; did you mean {', '.join(near)}?" if near else \
                "; fields are train.* (TrainConfig) and model.* (VLMConfig) leaves by their dotted name, e.g. train.lr"
            raise _refuse(source, name, f"unknown field{hint}")
        dist = _parse_distribution(source, name, dist_raw, leaves[name])
        _check_values(source, name, dist, base)
        fields[name] = dist
    points_raw = raw.get("points", []) if isinstance(raw, dict) and ("space" in raw or "points" in raw) else []
    if not isinstance(points_raw, list) or not all(isinstance(p, dict) for p in points_raw):
        raise ConfigError(f"search space {source}: `points:` must be a list of mappings (field → value)")
    points = []
    for i, p in enumerate(points_raw):
        extra = sorted(set(p) - set(fields))
        if extra:
            raise ConfigError(f"search space {source}: points[{i}] sets {extra}, which the space does not search")
        for name, v in p.items():
            d = fields[name]
            if not d.contains(v):
                raise ConfigError(f"search space {source}: points[{i}]: {name}={v!r} is outside the space "
                                  f"({d.kind} {list(d.values)})")
        points.append(dict(p))
    return SearchSpace(fields, points, rows, source)


def read_space(spec: str | None, stage: int = 1, base: tuple[VLMConfig, TrainConfig] | None = None) -> SearchSpace:
    """``--space``: a YAML / JSON file, or the mapping inline (``'{"train.lr": {"loguniform": [1e-5, 1e-2]}}'``)."""
    if not spec:
        return SearchSpace()
    inline = spec.lstrip().startswith("{")
    path = Path(spec).expanduser()
    if not inline and path.is_file():
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"search space {path}: not valid YAML ({e})") from None
        return parse_space(raw, str(path), stage, base)
    if inline:
        try:
            raw = yaml.safe_load(spec)
        except yaml.YAMLError as e:
            raise ConfigError(f"search space (inline): not valid YAML / JSON ({e})") from None
        return parse_space(raw, "(inline)", stage, base)
    raise ConfigError(f"search space: {spec} is neither a file nor an inline mapping; write a YAML file (see "
                      f"README \"Search\") or pass the mapping inline")


def to_plain(value: Any) -> Any:
    """A sampled value as plain JSON (numpy scalars from a searcher become Python numbers)."""
    return value.item() if hasattr(value, "item") and callable(value.item) else value
