"""Fixtures of the tracker tests: the bundled sample ingested once, synthetic flights over it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.localize.conftest import encoder, ingested  # noqa: F401  (shared session fixtures)
from tests.track.flight import Flight, synthetic_flight


@pytest.fixture(scope="session")
def flight() -> Flight:
    """40 frames at 10 fps over the sample: a straight leg, then a turn."""
    return synthetic_flight(n=40)


@pytest.fixture(scope="session")
def short_flight() -> Flight:
    """24 frames at 10 fps: a straight leg, then a turn."""
    return synthetic_flight(n=24)


@pytest.fixture(scope="module")
def tracker_factory(ingested: Any, encoder: Any) -> Iterator[Any]:  # noqa: F811
    """Open trackers on the ingested sample (closed at the end of the module)."""
    from geoloc.track import Tracker

    opened: list[Any] = []

    def make(**kw: Any) -> Any:
        tr = Tracker.open(ingested, encoder=encoder, **kw)
        opened.append(tr)
        return tr

    try:
        yield make
    finally:
        for tr in opened:
            tr.close()
