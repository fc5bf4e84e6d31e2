"""A small least-recently-used map: the caches of decoded tile features, neighbourhoods and
region features."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["Lru"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A least-recently-used map of at most ``size`` entries once :meth:`trim` is called
    (callers insert a batch, then trim, so a batch never evicts its own entries)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recent), or None."""
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> None:
        """Set ``key`` (the most recent)."""
        self._d[key] = value
        self._d.move_to_end(key)

    def touch(self, keys: Iterable[K]) -> None:
        """Make these keys (those present) the most recent."""
        for k in keys:
            if k in self._d:
                self._d.move_to_end(k)

    def trim(self) -> None:
        """Drop the least recent entries beyond ``size``."""
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry."""
        self._d.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __getitem__(self, key: K) -> V:
        return self._d[key]

    def __len__(self) -> int:
        return len(self._d)
