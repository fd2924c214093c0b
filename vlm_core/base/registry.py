"""Named choices: the one registry primitive every "pick one by name" setting uses (projectors, feature norms, STI
pools, LR schedules, chat renderers, vision encoders, translators, hardware backends, runners, grids, presets).

Two uses of the one class:

* a registry of entries, ``Registry(field, kind, {name: entry})``: looking a name up returns its entry, an
  unknown name raises ``ConfigError`` naming the field and the choices;
* a registry that *implements declared choices*, ``Registry.implementing(declared)``: the names are declared as data
  where a config can see them (``vlm_core.config.choices``: name → one line saying what it is) and filled by the
  module that implements them (``@PROJECTORS.register("linear")``). A config checks a name against the declaration
  without importing the implementing module; the implementing registry refuses a name nobody declared, and
  :meth:`Registry.unfilled` lists declared names nothing implemented (a test keeps it empty).
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """``name → entry`` for the config field ``field`` (e.g. ``projector.name``); ``kind`` names an entry in
    messages (e.g. ``projector``)."""

    def __init__(self, field: str, kind: str, entries: dict[str, T] | None = None, *,
                 declared: Registry[str] | None = None):
        self.field, self.kind, self.declared = field, kind, declared
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.add(name, entry)

    @classmethod
    def implementing(cls, declared: Registry[str]) -> Registry:
        """An empty registry whose names are ``declared``'s (a choice set of ``vlm_core.config.choices``), to be
        filled by the module that implements them."""
        return cls(declared.field, declared.kind, declared=declared)

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if self.declared is not None and name not in self.declared:
            raise ValueError(f"{self.kind} {name!r} is not a declared choice of {self.field} "
                             f"({self.declared.names()}); declare it in vlm_core.config.choices first")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def names(self) -> list[str]:
        """The valid names: the declared ones for an implementing registry, else the entries'."""
        return self.declared.names() if self.declared is not None else sorted(self._entries)

    def check(self, name: str, field: str | None = None) -> None:
        """Raise ``ConfigError`` naming the field (``field`` when another one holds the name) and the choices unless
        ``name`` is valid."""
        if name not in self:
            raise ConfigError(f"{field or self.field}: unknown {self.kind} {name!r}; choose one of {self.names()}")

    def unfilled(self) -> list[str]:
        """Declared names that no entry implements (always empty for a registry of its own entries)."""
        return [n for n in self.names() if n not in self._entries]

    def __getitem__(self, name: str) -> T:
        self.check(name)
        if name not in self._entries:  # declared, but its module was not imported: a bug, not the user's
            raise LookupError(f"{self.kind} {name!r} is declared for {self.field} but nothing registered it")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in (self.declared if self.declared is not None else self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names() if n in self._entries]
