"""Counting a method's calls in a test (the method still runs)."""

from __future__ import annotations

from typing import Any


class Counted:
    """Counts the calls of one method of an object, or of a module's function (it still
    runs); :meth:`undo` puts back what was there."""

    def __init__(self, obj: Any, method: str) -> None:
        self.calls = 0
        inner = getattr(obj, method)
        self._own = method in vars(obj)  # a module's function, an instance's own attribute
        self.inner = inner

        def wrapper(*a: Any, **kw: Any) -> Any:
            self.calls += 1
            return inner(*a, **kw)

        self._obj, self._method = obj, method
        setattr(obj, method, wrapper)

    def undo(self) -> None:
        if self._own:
            setattr(self._obj, self._method, self.inner)
        else:  # the wrapper shadowed the class's method
            delattr(self._obj, self._method)
