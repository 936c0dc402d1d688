"""A tiny name -> factory registry used for datasets, models, attacks, curves, matchers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from robustpath.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; ``@reg.register("name")`` adds one, ``reg.get`` looks it up.

    Unknown names raise :class:`UserError` listing the known names.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise UserError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def registered(self) -> tuple[str, ...]:
        """Names in registration order (e.g. the order of table rows and legends)."""
        return tuple(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
