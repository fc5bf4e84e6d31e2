"""Counting a method's calls in a test (the method still runs)."""

from __future__ import annotations

from typing import Any


class Counted:
    """Counts the calls of one method of an object (the method still runs)."""

    def __init__(self, obj: Any, method: str) -> None:
        self.calls = 0
        inner = getattr(obj, method)

        def wrapper(*a: Any, **kw: Any) -> Any:
            self.calls += 1
            return inner(*a, **kw)

        self._obj, self._method = obj, method
        setattr(obj, method, wrapper)

    def undo(self) -> None:
        delattr(self._obj, self._method)
