"""One registry for every plugin group, discovered through entry points.

:data:`GROUPS` is the one table of plugin groups: each group names the Protocol its plugins
implement. Loading (:func:`load`, :func:`instantiate`), checking (:func:`check`) and
``geoloc plugins list`` all read it. A plugin is an entry point whose object is a class (or
factory) taking keyword parameters; built-ins are registered the same way, in geoloc's
``pyproject.toml``. Plugins are only ever imported by entry-point name, never from a
user-supplied path. A plugin that fails to import is reported and skipped.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from geoloc.errors import ConfigError

log = logging.getLogger(__name__)

#: Plugin group -> "module:Protocol" its plugins implement. The protocols are named, not
#: imported, so that this module stays below every package that registers plugins.
GROUPS: dict[str, str] = {
    "geoloc.encoders": "geoloc.models.base:EncoderProtocol",
    "geoloc.recall": "geoloc.localize.recall:RecallStage",
    "geoloc.rerank": "geoloc.localize.rerank:RerankStage",
    "geoloc.consistency": "geoloc.localize.consistency:ConsistencyStage",
    "geoloc.verify": "geoloc.localize.verify:Verifier",
    "geoloc.priors": "geoloc.localize.priors:PriorStage",
}

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
        dist = getattr(ep, "dist", None)  # EntryPoint.dist is absent on run-time registrations
        out[name] = PluginInfo(
            group=group,
            name=name,
            value=ep.value,
            package=dist.metadata["Name"] if dist is not None else None,
            version=dist.version if dist is not None else None,
        )
    return out


def _stage(group: str) -> str:
    return group.split(".")[-1]


def load(group: str, name: str) -> Any:
    """Import and return the object behind plugin ``name`` of ``group``.

    Raises :class:`ConfigError` listing the valid names when ``name`` is unknown, or naming the
    plugin and its import error when it cannot be loaded.
    """
    eps = _entry_points(group)
    if name not in eps:
        valid = ", ".join(sorted(eps)) or "none installed"
        raise ConfigError(f"unknown {_stage(group)} plugin {name!r}; valid: {valid}")
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


def protocol(group: str) -> Any:
    """The Protocol class of ``group`` (from :data:`GROUPS`)."""
    if group not in GROUPS:
        raise ConfigError(f"unknown plugin group {group!r}; valid: {', '.join(GROUPS)}")
    module, attr = GROUPS[group].split(":")
    return getattr(importlib.import_module(module), attr)


def protocol_members(proto: Any) -> list[str]:
    """The public attributes and methods a Protocol declares, sorted."""
    names: set[str] = set()
    for klass in proto.__mro__:
        if klass is object or klass.__name__ in ("Protocol", "Generic"):
            continue
        names.update(getattr(klass, "__annotations__", {}))
        names.update(k for k, v in vars(klass).items() if callable(v) or isinstance(v, property))
    return sorted(n for n in names if not n.startswith("_"))


def check(group: str, obj: Any, name: str | None = None) -> None:
    """ConfigError naming what ``obj`` lacks of its group's Protocol."""
    proto = protocol(group)
    missing = [m for m in protocol_members(proto) if not hasattr(obj, m)]
    if missing:
        label = name or getattr(obj, "name", type(obj).__name__)
        raise ConfigError(
            f"{_stage(group)} plugin {label!r} does not implement {', '.join(missing)}"
        )


def parameters(factory: Any) -> list[str] | None:
    """The keyword parameters a plugin takes: its ``default_conf`` keys, else its signature.

    None when it accepts any keyword (``**kwargs`` and no ``default_conf``).
    """
    conf = getattr(factory, "default_conf", None)
    if isinstance(conf, dict):
        return list(conf)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return None
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in sig.parameters.values() if p.kind in kinds and p.name != "self"]


def instantiate(group: str, name: str, params: dict[str, Any]) -> Any:
    """Load plugin ``name`` of ``group``, build it with ``params`` and check its Protocol.

    Unknown plugin -> ConfigError listing the valid names; a parameter the plugin does not take
    -> ConfigError listing its parameters; a missing Protocol member -> ConfigError naming it.
    """
    factory = load(group, name)
    stage = _stage(group)
    valid = parameters(factory)
    bad = sorted(set(params) - set(valid)) if valid is not None else []
    if bad:
        raise ConfigError(
            f"{stage} plugin {name!r}: unknown parameter(s) {', '.join(bad)}; "
            f"valid: {', '.join(valid or []) or 'none'}"
        )
    try:
        obj = factory(**params)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{stage} plugin {name!r}: bad parameters: {exc}") from exc
    check(group, obj, name)
    return obj
