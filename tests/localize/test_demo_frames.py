"""The bundled demo frames over the bundled sample: every one located, and located precisely
(the guided matches' answer must not inherit the coarse check's model error)."""

from __future__ import annotations

from typing import Any

import numpy as np


def test_demo_frames_are_located_to_a_metre(ingested: Any, encoder: Any) -> None:
    from geoloc.demo import FRAMES_DIR, read_truth
    from geoloc.localize import Localizer
    from tiling.crs import geodesic_distance_m

    errors = []
    with Localizer.open(ingested, encoder=encoder) as loc:
        for t in read_truth():
            fix = loc.locate(FRAMES_DIR / t.name, gsd=t.gsd_m, name=t.name)
            assert fix.status == "ok" and fix.lat is not None and fix.lon is not None, t.name
            errors.append(float(geodesic_distance_m(fix.lon, fix.lat, t.lon, t.lat)))
    # the sample is at 0.5 m/px: a median under a metre is about two map pixels
    assert float(np.median(errors)) < 1.0, errors
    assert max(errors) < 5.0, errors
