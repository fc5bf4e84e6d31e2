"""One error base for tiling and geoloc: one line, path first, exit code; old names still work."""

from __future__ import annotations

from pathlib import Path

import pytest

import geoloc.errors as errors
from tiling.errors import OneLineError, TilingError


@pytest.mark.parametrize("cls", [TilingError, errors.GeolocError, errors.IngestError])
def test_one_line_with_path(cls: type[OneLineError]) -> None:
    e = cls("bad\n  thing", path=Path("/x/y.tif"))  # type: ignore[arg-type]
    assert str(e) == "/x/y.tif: bad thing" and e.problem == "bad thing" and e.path == "/x/y.tif"
    assert e.exit_code == 1 and isinstance(e, OneLineError)
    assert str(cls("no path")) == "no path" and cls("no path").path is None


def test_every_error_class_lives_in_errors_and_old_names_still_import() -> None:
    from geoloc.ingest.core import IngestError
    from geoloc.models.base import EncoderInputError
    from geoloc.models.explain import ImageReadError
    from geoloc.training.datasets import DatasetError
    from geoloc.training.synthetic import SyntheticError
    from geoloc.training.trainer import TrainError

    old = [IngestError, EncoderInputError, ImageReadError, DatasetError, SyntheticError, TrainError]
    for cls in old:
        assert cls.__module__ == "geoloc.errors" and getattr(errors, cls.__name__) is cls
        assert issubclass(cls, errors.GeolocError)
