"""One registry for every plugin group, discovered through entry points.

Groups: ``geoloc.encoders``, ``geoloc.recall``, ``geoloc.rerank``, ``geoloc.consistency``,
``geoloc.verify``, ``geoloc.priors``. A plugin is an entry point whose object is a class (or
factory) taking keyword parameters. Plugins are only ever imported by entry-point name, never
from a user-supplied path. A plugin that fails to import is reported and skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from geoloc.errors import ConfigError

log = logging.getLogger(__name__)

GROUPS: tuple[str, ...] = (
    "geoloc.encoders",
    "geoloc.recall",
    "geoloc.rerank",
    "geoloc.consistency",
    "geoloc.verify",
    "geoloc.priors",
)

# Extra entry points registered at run time (tests, notebooks): group -> name -> "module:attr".
_registered: dict[str, dict[str, str]] = {}


@dataclass(frozen=True)
class PluginInfo:
    """What is known about one installed plugin."""

    group: str
    name: str
    value: str
    package: str | None
    version: str | None


def register(group: str, name: str, value: str) -> None:
    """Register an entry point ``name = value`` in ``group`` for this process (like an install)."""
    _registered.setdefault(group, {})[name] = value
    _entry_points.cache_clear()


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    for name, value in _registered.get(group, {}).items():
        found[name] = EntryPoint(name=name, value=value, group=group)
    return found


def available(group: str) -> dict[str, PluginInfo]:
    """Installed plugins of ``group`` by name (not imported)."""
    out: dict[str, PluginInfo] = {}
    for name, ep in sorted(_entry_points(group).items()):
        dist = getattr(ep, "dist", None)
        out[name] = PluginInfo(
            group=group,
            name=name,
            value=ep.value,
            package=dist.metadata["Name"] if dist is not None else None,
            version=dist.version if dist is not None else None,
        )
    return out


def load(group: str, name: str) -> Any:
    """Import and return the object behind plugin ``name`` of ``group``.

    Raises :class:`ConfigError` listing the valid names when ``name`` is unknown, or naming the
    plugin and its import error when it cannot be loaded.
    """
    eps = _entry_points(group)
    if name not in eps:
        valid = ", ".join(sorted(eps)) or "none installed"
        raise ConfigError(f"unknown {group.split('.')[-1]} plugin {name!r}; valid: {valid}")
    try:
        return eps[name].load()
    except Exception as exc:  # noqa: BLE001 - any import failure of third-party code
        raise ConfigError(f"plugin {name!r} ({group}) failed to load: {exc}") from exc


def load_all(group: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Load every plugin of ``group``; return (loaded by name, error message by name)."""
    loaded: dict[str, Any] = {}
    broken: dict[str, str] = {}
    for name in _entry_points(group):
        try:
            loaded[name] = load(group, name)
        except ConfigError as exc:
            log.warning("%s", exc)
            broken[name] = str(exc)
    return loaded, broken
