"""The Ω index file format alone: upgrade of older sidecars, crash-safe writes, saves."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.errors import IndexError_
from geoloc.store import omega_format as fmt
from geoloc.store.omega_basis import DEFAULT_FREEZE_AFTER, GrowingBasis
from geoloc.store.refine import DEFAULT_REFINE_DIMS, DEFAULT_REFINE_K

from .helpers import unit


def meta_v3() -> dict[str, Any]:
    """A format-3 sidecar of an index with refine codes in two segments."""
    return {
        "format": 3,
        "encoder_id": 4,
        "encoder_sha256": "ab" * 32,
        "omega_dim": 512,
        "dim": 32,
        "count": 10,
        "index_type": "flat",
        "metric": "inner_product",
        "params": {
            "target_dim": 32,
            "max_dim": 64,
            "ivf_threshold": 50_000,
            "nprobe": 128,
            "nlist": 0,
            "refine_dims": 12,
            "refine_bits": 4,
            "refine_channels": 32,
            "refine_k": 40,
        },
        "exact": False,
        "refine": {"count": 10},
        "fit_count": 10,
        "residual_sum": 0.5,
        "residual_n": 10,
        "created": "2026-01-01T00:00:00Z",
        "updated": "2026-01-01T00:00:00Z",
        "generation": 3,
        "files": {
            "basis": "basis.3.npy",
            "moment": "moment.3.npy",
            "index": "omega.3.faiss",
            "refine_ids": "refine_ids.3.npy",
            "refine_norms": "refine_norms.3.npy",
            "refineq": "refineq.2.npy",
            "refine": ["refine.2.0.npy", "refine.3.1.npy"],
        },
    }


def test_upgrade_lifts_a_format_1_sidecar() -> None:
    old = meta_v3()
    old.pop("format")  # format 1 did not record it
    old.pop("refine")
    for key in ("refine_dims", "refine_bits", "refine_channels", "refine_k"):
        old["params"].pop(key)
    for key in ("refine_ids", "refine_norms", "refineq", "refine"):
        old["files"].pop(key)
    kept = copy.deepcopy(old)
    new = fmt.upgrade(old)
    assert old == kept  # the input is not modified
    assert new["format"] == fmt.FORMAT_VERSION and new["refine"] is None
    assert new["params"]["refine_dims"] == DEFAULT_REFINE_DIMS
    assert new["params"]["refine_k"] == DEFAULT_REFINE_K
    assert "refine" not in new["files"] and new["files"]["basis"] == "basis.3.npy"
    assert fmt.upgrade(new) == new  # current format: unchanged


def test_upgrade_lifts_a_format_2_sidecar() -> None:
    old = meta_v3()
    old["format"] = 2
    old["files"]["refine"] = "refine.2.npy"  # one refine file
    new = fmt.upgrade(old)
    assert new["files"]["refine"] == ["refine.2.npy"] and new["format"] == fmt.FORMAT_VERSION
    # format 2 already had the refine parameters; format 4 added the freeze
    assert new["params"] == {**old["params"], "freeze_after": DEFAULT_FREEZE_AFTER}
    assert old["files"]["refine"] == "refine.2.npy"


def test_upgrade_lifts_a_format_3_sidecar() -> None:
    old = meta_v3()
    new = fmt.upgrade(old)
    assert new["format"] == 4 and new["params"]["freeze_after"] == DEFAULT_FREEZE_AFTER
    assert "freeze_after" not in old["params"] and new["files"] == old["files"]
    frozen = copy.deepcopy(new)
    frozen["params"]["freeze_after"] = 0  # a sidecar's own value is kept
    assert fmt.upgrade(frozen)["params"]["freeze_after"] == 0


def test_upgrade_refuses_a_newer_format() -> None:
    meta = meta_v3()
    meta["format"] = fmt.FORMAT_VERSION + 1
    with pytest.raises(IndexError_, match="newer than this geoloc reads") as err:
        fmt.upgrade(meta, path="/x/meta.json")
    assert str(err.value).startswith("/x/meta.json: ")


def test_read_sidecar_records_the_source_format(tmp_path: Path) -> None:
    meta = meta_v3()
    meta["format"] = 2
    meta["files"]["refine"] = "refine.2.npy"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    side = fmt.read_sidecar(tmp_path)
    assert side.source_format == 2 and side.refine_files == ["refine.2.npy"]
    assert "refine" not in side.files and side.files["refineq"] == "refineq.2.npy"
    assert side.params["refine_k"] == 40 and "nlist" not in side.params
    assert side.encoder_id == 4 and side.generation == 3 and side.residual_sum == 0.5
    del meta["params"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexError_, match="unreadable index sidecar") as err:
        fmt.read_sidecar(tmp_path)
    assert "geoloc index rebuild" in str(err.value) and "\n" not in str(err.value)


def test_fsync_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    fmt.fsync_write(target, lambda p: p.write_bytes(b"old"))
    assert target.read_bytes() == b"old"

    def half_then_fail(p: Path) -> None:
        p.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fmt.fsync_write(target, half_then_fail)
    assert target.read_bytes() == b"old"  # the previous contents, never a partial file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]  # no temp file left
    fmt.fsync_write(target, lambda p: p.write_bytes(b"new"))
    assert target.read_bytes() == b"new"


def _basis(rng: np.random.Generator, n: int) -> GrowingBasis:
    basis = GrowingBasis(64, target_dim=8, max_dim=16)
    basis.fold(unit(rng, n, 64), frozen=False)
    return basis


def _body(count: int, dim: int) -> dict[str, Any]:
    meta = fmt.upgrade(meta_v3())  # the body of a current index
    body = {k: meta[k] for k in ("encoder_id", "encoder_sha256", "index_type", "params")}
    return {**body, "omega_dim": 64, "dim": dim, "count": count, "created": meta["created"]}


def test_save_writes_a_generation_and_a_failed_save_leaves_the_previous(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    basis = _basis(rng, 5)
    saved = fmt.save(
        tmp_path,
        generation=0,
        files={},
        basis=basis,
        index=None,
        refine=None,
        quantizer_dirty=False,
        describe=lambda: _body(0, basis.dim),
    )
    assert saved.generation == 1 and not basis.dirty
    assert saved.files == {"basis": "basis.1.npy", "moment": "moment.1.npy"}
    assert saved.stamp == fmt.meta_stamp(tmp_path) and fmt.disk_generation(tmp_path) == 1
    side = fmt.read_sidecar(tmp_path)
    assert side.source_format == fmt.FORMAT_VERSION and side.dim == 5
    b, m = fmt.load_basis(tmp_path, side, mmap=True)
    np.testing.assert_array_equal(b, basis.basis)
    np.testing.assert_array_equal(m, basis.moment)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    grown = _basis(rng, 7)

    def fail() -> dict[str, Any]:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fmt.save(
            tmp_path,
            generation=saved.generation,
            files=saved.files,
            basis=grown,
            index=None,
            refine=None,
            quantizer_dirty=False,
            describe=fail,
        )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no orphan files
    assert grown.dirty  # not marked saved
    # an unchanged basis is named again, not rewritten; older generations are cleaned up
    again = fmt.save(
        tmp_path,
        generation=saved.generation,
        files=saved.files,
        basis=basis,
        index=None,
        refine=None,
        quantizer_dirty=False,
        describe=lambda: _body(0, basis.dim),
    )
    assert again.generation == 2 and again.files == saved.files
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["meta.json", *saved.files.values()]
    )
