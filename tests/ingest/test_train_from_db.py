"""``geoloc train --from-db``: self-supervised training on what was ingested (real database)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from geoloc.config import Settings
from geoloc.ingest import ingest
from tests.ingest.test_ingest_db import _env


@pytest.mark.slow
def test_train_from_db_uses_the_ingested_rasters(
    pg_settings: Settings,
    crops: dict[str, Path],
    encoder: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from geoloc.cli.main import main
    from geoloc.models import load_encoder

    (res,) = ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False)
    assert res.status == "ingested"
    _env(monkeypatch, pg_settings)
    out = tmp_path / "run"
    args = ["train", "--from-db", "--out", str(out), "--epochs", "1", "--samples", "16",
            "--passes", "1", "--batch-size", "8", "--val-samples", "0",
            "--gsd-max", "0.3"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_run"] == 1 and summary["history"][0]["loss"] > 0
    meta = json.loads((out / "best.json").read_text())
    assert meta["training"]["config"]["samples_per_epoch"] == 16
    trained = load_encoder("sgmnet", checkpoint=out / "best")  # hashes verified on load
    assert trained.weights_sha256 != encoder.weights_sha256


def test_train_from_an_empty_database_says_ingest_first(
    pg_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from geoloc.cli.main import main

    _env(monkeypatch, pg_settings)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--from-db", "--out", str(tmp_path / "run")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "run geoloc ingest first" in err and "Traceback" not in err
