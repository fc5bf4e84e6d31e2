"""Encoder plugin discovery: the built-ins and an entry point registered at test time."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from geoloc import plugins
from geoloc.errors import ConfigError
from geoloc.models import available_encoders, load_encoder


@pytest.fixture()
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(plugins, "_registered", {})
    plugins._entry_points.cache_clear()
    yield
    plugins._entry_points.cache_clear()


def test_builtins_are_discovered() -> None:
    names = available_encoders()
    for name in ("sgmnet", "sgmnet-vgg16", "sgmnet-resnet50", "netvlad"):
        assert name in names


def test_third_party_entry_point(isolated_registry: None) -> None:
    assert "tiny" not in available_encoders()
    plugins.register("geoloc.encoders", "tiny", "tests.models.tiny_plugin:TinyEncoder")
    assert "tiny" in available_encoders()
    enc = load_encoder("tiny", width=8)
    out = enc.encode(np.zeros((2, 3, 64, 64), dtype=np.uint8))
    assert out.omega.shape == (2, 8 * 196) and out.phi.shape == (2, 2 * 8)
    assert enc.config() == {"name": "tiny", "width": 8}


def test_unknown_and_broken_plugins(isolated_registry: None) -> None:
    with pytest.raises(ConfigError, match="unknown encoders plugin 'nope'; valid: .*sgmnet"):
        load_encoder("nope")
    plugins.register("geoloc.encoders", "broken", "tests.models.does_not_exist:X")
    with pytest.raises(ConfigError, match="plugin 'broken'.*failed to load"):
        load_encoder("broken")
    with pytest.raises(ConfigError, match="bad parameters"):
        load_encoder("sgmnet", no_such_parameter=1)


def test_plugin_without_the_protocol_is_rejected(isolated_registry: None) -> None:
    plugins.register("geoloc.encoders", "notanencoder", "collections:OrderedDict")
    with pytest.raises(ConfigError, match="does not implement .*encode"):
        load_encoder("notanencoder", shipped=False)
