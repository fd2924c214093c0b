"""Named choices: the one registry primitive every "pick one by name" setting uses (projectors, feature norms, STI
pools, LR schedules, chat renderers, translators, hardware backends). A config field that names a registry entry
is checked against it when the config is parsed (``check``), so a typo fails before any model is built, naming the
field and the choices.

    python -c "from vlm_core.projectors import PROJECTORS; print(PROJECTORS.names())"
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """``name → entry`` for the config field ``field`` (e.g. ``projector.name``); ``kind`` names an entry in
    messages (e.g. ``projector``)."""

    def __init__(self, field: str, kind: str, entries: dict[str, T] | None = None):
        self.field, self.kind = field, kind
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.add(name, entry)

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def check(self, name: str) -> None:
        """Raise ``ConfigError`` naming the field and the choices unless ``name`` is registered."""
        if name not in self._entries:
            raise ConfigError(f"{self.field}: unknown {self.kind} {name!r}; choose one of {self.names()}")

    def __getitem__(self, name: str) -> T:
        self.check(name)
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]
