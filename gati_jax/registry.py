"""A named registry: data sets and networks are found by name, as in big_vision."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builders; unknown names fail with the list of known ones."""

    def __init__(self, kind: str, config_key: str):
        self.kind, self.config_key = kind, config_key
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``entry`` under ``name`` (each name once)."""

        def decorator(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return decorator

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._entries))

    def get(self, name: str) -> T:
        """The entry registered under ``name``."""
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r} ({self.config_key}); available: "
                f"{', '.join(self.names())}"
            )
        return self._entries[name]
