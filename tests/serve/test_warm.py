"""``geoloc serve`` warms its localizer up before the first frame (a real Service on the sample)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from geoloc.store import repository as repo
from geoloc.store.repository import _text
from tests.serve.conftest import frame_bytes


def test_warm_up_reads_what_the_first_frame_needs(serve_settings: Any) -> None:
    from geoloc.serve import Service
    from geoloc.serve.decode import decode_image

    svc = Service.open(serve_settings, preset="accurate")
    try:
        store = svc.localizer.store
        assert not store.sign_codes_loaded  # read on the first search otherwise
        assert len(store._grids) == 0  # one query per orthomosaic as frames meet them otherwise
        took = svc.warm()
        assert took is not None and took > 0
        assert store.sign_codes_loaded
        # every orthomosaic's grid, as the query of one orthomosaic gives it
        with store._db.engine.connect() as conn:
            oids = [int(r[0]) for r in conn.execute(_text("SELECT id FROM orthomosaics"))]
        assert oids and len(store._grids) == len(oids)
        for oid in oids:
            want = repo.orthomosaic_grid(store._db, store.encoder_id, oid)
            got = store._grids.get(oid)
            assert want is not None and got is not None
            assert np.array_equal(got.ids, want.ids)
            assert (got.stride, got.tile_size) == (want.stride, want.tile_size)
        # the warm-up frame is not an answer of the service
        assert svc.seq == 0 and svc.counts == {"ok": 0, "no_match": 0, "error": 0}
        assert svc.localizer.last_state is None
        d = svc.locate(decode_image(frame_bytes(0)), name="f0", gsd=0.3128)
        assert d["status"] == "ok" and svc.counts["ok"] == 1
    finally:
        svc.close()


def test_a_failed_warm_up_is_logged_and_the_service_still_answers(
    service: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geoloc.serve.decode import decode_image

    def broken() -> float:
        raise RuntimeError("database went away")

    monkeypatch.setattr(service.localizer, "warm", broken)
    with caplog.at_level(logging.WARNING, logger="geoloc.serve"):
        assert service.warm() is None
    assert any("warm-up failed (database went away)" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    d = service.locate(decode_image(frame_bytes(1)), name="f1", gsd=0.3128)
    assert d["status"] == "ok"
