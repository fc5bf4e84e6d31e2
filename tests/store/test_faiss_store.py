"""OmegaIndex: exact while small, accurate after truncation, remove, persist, atomic saves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geoloc.config import Settings
from geoloc.errors import IndexError_
from geoloc.store.faiss_store import OmegaIndex

from .helpers import recall_at, unit

SHA = "0123abcd" * 8
D = 1024


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1)[:, :k]


def low_rank(rng: np.random.Generator, n: int, rank: int, noise: float = 0.05) -> np.ndarray:
    """Unit vectors near a rank-``rank`` subspace (like Ω of one region)."""
    basis = unit(rng, rank, D)
    x = rng.standard_normal((n, rank)).astype(np.float32) @ basis
    x += noise * unit(rng, n, D) * np.sqrt(1.0)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_small_index_is_exact(settings: Settings) -> None:
    rng = np.random.default_rng(0)
    x = unit(rng, 40, D)
    ids = np.arange(100, 140, dtype=np.int64)
    ix = OmegaIndex.open(settings, SHA, omega_dim=D, target_dim=64)
    for s in range(0, 40, 7):  # small batches, as during an ingest
        ix.add(ids[s : s + 7], x[s : s + 7])
    assert len(ix) == 40 and ix.dim == 40 and ix.is_exact
    q = x[:6] + 0.1 * unit(rng, 6, D)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores, found = ix.search(q, 10)
    np.testing.assert_array_equal(found, ids[exact_topk(x, q, 10)])
    # codes are stored as float16: scores agree to ~1e-3
    np.testing.assert_allclose(scores, np.sort(q @ x.T, axis=1)[:, ::-1][:, :10], atol=2e-3)
    # fewer stored vectors than k: padded with -1 / -inf
    s2, i2 = ix.search(q[:1], 50)
    assert (i2[0, 40:] == -1).all() and np.isneginf(s2[0, 40:]).all()


def test_truncated_basis_keeps_recall(settings: Settings) -> None:
    rng = np.random.default_rng(1)
    x = low_rank(rng, 240, rank=32)
    ids = np.arange(240, dtype=np.int64) * 3 + 7
    # the compressed stage alone (refine_dims=0): unstructured vectors, see test_refine.py
    ix = OmegaIndex.open(settings, SHA, omega_dim=D, target_dim=48, refine_dims=0)
    for s in range(0, 240, 32):
        ix.add(ids[s : s + 32], x[s : s + 32])
    assert ix.dim <= ix.max_dim == 96 and not ix.is_exact
    q = x[rng.choice(240, 30, replace=False)] + 0.05 * unit(rng, 30, D)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, found = ix.search(q, 10)
    assert recall_at(found, ids[exact_topk(x, q, 10)]) >= 0.95
    assert ix.info()["residual_energy"] < 0.1


def test_remove_and_allowed_ids(settings: Settings) -> None:
    rng = np.random.default_rng(2)
    x = unit(rng, 30, D)
    ids = np.arange(1, 31, dtype=np.int64)
    ix = OmegaIndex.open(settings, SHA, omega_dim=D)
    ix.add(ids, x)
    assert ix.remove(np.array([1, 2, 999])) == 2
    assert ix.ids().tolist() == list(range(3, 31))
    _, found = ix.search(x[:2], 5)
    assert not np.isin(found, [1, 2]).any()
    allowed = np.array([5, 9, 12, 1], dtype=np.int64)  # 1 was removed
    s, found = ix.search(x[8:9], 4, allowed_ids=allowed)
    assert found[0, 0] == 9 and set(found[0, :3]) == {5, 9, 12} and found[0, 3] == -1
    with pytest.raises(IndexError_, match="already in the index"):
        ix.add(np.array([5]), x[:1])
    with pytest.raises(IndexError_, match=r"\(n, 1024\)"):
        ix.add(np.array([77]), np.ones((1, 10), np.float32))


def test_persist_reload_and_keep_adding(settings: Settings) -> None:
    rng = np.random.default_rng(3)
    x = unit(rng, 50, D)
    ids = np.arange(50, dtype=np.int64)
    ix = OmegaIndex.open(settings, SHA, omega_dim=D, encoder_id=7)
    ix.add(ids[:30], x[:30])
    ix.save()
    before = ix.search(x[:5], 5)
    again = OmegaIndex.open(settings, SHA)  # memory-mapped
    assert again.encoder_id == 7 and again.ids().tolist() == list(range(30))
    after = again.search(x[:5], 5)
    np.testing.assert_array_equal(before[1], after[1])
    again.add(ids[30:], x[30:])  # modifying a memory-mapped index copies it first
    again.remove(np.array([0]))
    again.save()
    third = OmegaIndex.open(settings, SHA, mmap=False)
    assert len(third) == 49 and third.info()["count"] == 49
    _, found = third.search(x[40:41], 1)
    assert found[0, 0] == 40
    files = sorted(p.name for p in OmegaIndex.path_for(settings, SHA).iterdir())
    assert files == sorted(
        ["meta.json", *third.info()["files"].values()]
    )  # old generations cleaned up


def test_failed_save_leaves_previous_index(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import faiss

    rng = np.random.default_rng(4)
    x = unit(rng, 20, D)
    ix = OmegaIndex.open(settings, SHA, omega_dim=D)
    ix.add(np.arange(10), x[:10])
    ix.save()
    before = sorted(p.name for p in ix.directory.iterdir())
    ix.add(np.arange(10, 20), x[10:])

    def boom(index: object, path: str) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        ix.save()
    monkeypatch.undo()
    assert sorted(p.name for p in ix.directory.iterdir()) == before  # no orphan files
    reloaded = OmegaIndex.open(settings, SHA)
    assert reloaded.ids().tolist() == list(range(10))


def test_missing_or_truncated_files_say_rebuild(settings: Settings) -> None:
    with pytest.raises(IndexError_, match="geoloc index rebuild"):
        OmegaIndex.open(settings, SHA, create=False)
    rng = np.random.default_rng(5)
    ix = OmegaIndex.open(settings, SHA, omega_dim=D)
    ix.add(np.arange(10), unit(rng, 10, D))
    ix.save()
    d = OmegaIndex.path_for(settings, SHA)
    faiss_file = d / ix.info()["files"]["index"]
    data = faiss_file.read_bytes()
    faiss_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexError_, match="geoloc index rebuild") as info:
        OmegaIndex.open(settings, SHA)
    assert "\n" not in str(info.value)
    faiss_file.unlink()
    with pytest.raises(IndexError_, match="missing"):
        OmegaIndex.open(settings, SHA)
    (d / "meta.json").write_text("{not json")
    with pytest.raises(IndexError_, match="sidecar"):
        OmegaIndex.open(settings, SHA)
    with pytest.raises(IndexError_, match=r"omega must be \(n, 1024\)"):
        OmegaIndex.open(Settings(home=settings.home / "x"), SHA, omega_dim=D).add(
            np.arange(1), np.ones((1, D + 1), np.float32)
        )


def test_switches_to_ivf_above_threshold(settings: Settings) -> None:
    rng = np.random.default_rng(6)
    x = low_rank(rng, 400, rank=24, noise=0.02)
    ids = np.arange(400, dtype=np.int64) + 1000
    ix = OmegaIndex.open(
        settings, SHA, omega_dim=D, target_dim=32, ivf_threshold=200, nprobe=8, refine_dims=0
    )
    for s in range(0, 400, 100):
        ix.add(ids[s : s + 100], x[s : s + 100])
    assert ix.index_type == "ivf" and ix.dim == 32 and len(ix) == 400
    q = x[:40]
    _, found = ix.search(q, 10)
    assert recall_at(found, ids[exact_topk(x, q, 10)]) >= 0.9
    assert ix.remove(ids[:5]) == 5
    ix.save()
    again = OmegaIndex.open(settings, SHA)
    assert again.index_type == "ivf" and len(again) == 395
    _, found = again.search(x[10:11], 1)
    assert found[0, 0] == ids[10]
    s, found = again.search(x[10:11], 3, allowed_ids=ids[8:12])
    assert found[0, 0] == ids[10] and set(found[0]) <= set(ids[8:12])


def test_create_over_an_existing_index_replaces_it_atomically(settings: Settings) -> None:
    rng = np.random.default_rng(7)
    old = OmegaIndex.open(settings, SHA, omega_dim=D)
    old.add(np.arange(5), unit(rng, 5, D))
    old.save()
    old_files = set(old.info()["files"].values())
    new = OmegaIndex.create(settings, SHA, omega_dim=D)
    new.add(np.arange(100, 103), unit(rng, 3, D))
    new.save()
    assert not old_files & set(new.info()["files"].values())  # new generation names
    assert OmegaIndex.open(settings, SHA).ids().tolist() == [100, 101, 102]


def test_ivf_is_retrained_with_more_lists_as_it_grows(settings: Settings) -> None:
    rng = np.random.default_rng(8)
    x = low_rank(rng, 1300, rank=16, noise=0.02)
    ids = np.arange(1300, dtype=np.int64)
    ix = OmegaIndex.open(
        settings, SHA, omega_dim=D, target_dim=16, ivf_threshold=100, nprobe=16, refine_dims=0
    )
    ix.add(ids[:150], x[:150])
    first = ix.info()["params"]["nlist"]
    assert ix.index_type == "ivf" and ix.fit_count == 150
    for s in range(150, 1300, 256):
        ix.add(ids[s : s + 256], x[s : s + 256])
    info = ix.info()  # folds in the pending additions
    assert len(ix) == 1300 and info["fit_count"] == 1300
    assert info["params"]["nlist"] > first
    _, found = ix.search(x[:20], 10)
    assert _recall_ok(found, ids[exact_topk(x, x[:20], 10)])


def _recall_ok(found: np.ndarray, truth: np.ndarray) -> bool:
    return recall_at(found, truth) >= 0.9


def test_orthonormal_rows_spans_the_input_and_drops_dependent_rows() -> None:
    from geoloc.store.omega_basis import orthonormal_rows as _orthonormal_rows

    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 3000)).astype(np.float32)
    a[7] = 2 * a[3] - a[5]  # linearly dependent
    a[9] *= 1e-3  # small but independent
    q = _orthonormal_rows(a)
    assert q.shape == (39, 3000) and q.dtype == np.float32
    np.testing.assert_allclose(q @ q.T, np.eye(39), atol=1e-5)
    resid = a - (a @ q.T) @ q  # every input row lies in the span
    assert float(np.abs(resid).max()) < 1e-4 * float(np.abs(a).max())
    assert _orthonormal_rows(np.zeros((3, 10), np.float32)).shape == (0, 10)


def test_changed_on_disk_sees_another_writers_save(settings: Settings) -> None:
    rng = np.random.default_rng(11)
    x = low_rank(rng, 60, 8)
    writer = OmegaIndex.open(settings, SHA, omega_dim=D)
    assert not writer.changed_on_disk()  # nothing on disk yet, nothing read
    writer.add(np.arange(30, dtype=np.int64), x[:30])
    writer.save()
    assert not writer.changed_on_disk()  # its own save
    reader = OmegaIndex.open(settings, SHA)
    assert not reader.changed_on_disk() and len(reader) == 30
    writer.add(np.arange(30, 60, dtype=np.int64), x[30:])
    writer.save()
    assert reader.changed_on_disk() and not writer.changed_on_disk()
    assert len(OmegaIndex.open(settings, SHA)) == 60


def test_a_reloaded_index_continues_as_the_one_that_saved_it(settings: Settings) -> None:
    """Vectors inside the basis add to the code moment that later truncations use: a save must
    keep it, or an index re-opened between ingests truncates differently."""
    rng = np.random.default_rng(12)
    x = unit(rng, 10, D)
    inside = rng.standard_normal((5, 10)).astype(np.float32) @ x
    inside /= np.linalg.norm(inside, axis=1, keepdims=True)
    more = low_rank(rng, 60, rank=40)
    kept = OmegaIndex.open(settings, SHA, omega_dim=D, target_dim=16, refine_dims=0)
    kept.add(np.arange(10), x)
    kept.save()
    kept.add(np.arange(10, 15), inside)  # in the span: projected, the basis does not grow
    assert kept.dim == 10
    kept.save()
    reopened = OmegaIndex.open(settings, SHA, mmap=False)
    for ix in (kept, reopened):
        ix.add(np.arange(100, 160), more)
        assert ix.dim <= ix.max_dim and not ix.is_exact  # truncated by the code moment
    q = np.concatenate([x[:3], more[:10]])
    s1, f1 = kept.search(q, 8)
    s2, f2 = reopened.search(q, 8)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)


def test_frozen_basis_stops_growing_and_survives_a_reload(settings: Settings) -> None:
    rng = np.random.default_rng(11)
    x = low_rank(rng, 900, rank=24)
    ids = np.arange(900, dtype=np.int64)
    kw = {"omega_dim": D, "target_dim": 32, "refine_dims": 0}
    ix = OmegaIndex.open(settings, SHA, freeze_after=300, **kw)
    for s in range(0, 600, 16):
        ix.add(ids[s : min(s + 16, 600)], x[s : min(s + 16, 600)])
    assert ix.dim == 32 and ix.fit_count >= 300 and ix._basis.frozen
    frozen_rows = np.array(ix._basis.basis)
    ix.save()
    again = OmegaIndex.open(settings, SHA)
    assert again.freeze_after == 300 and again.info()["params"]["freeze_after"] == 300
    again.add(ids[600:], x[600:])
    again.save()
    assert again.dim == 32 and len(again) == 900
    np.testing.assert_array_equal(np.asarray(again._basis.basis), frozen_rows)
    q = x[rng.choice(900, 30, replace=False)] + 0.05 * unit(rng, 30, D)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, found = again.search(q, 10)
    assert recall_at(found, ids[exact_topk(x, q, 10)]) >= 0.95
    # the same vectors with a basis that never freezes: it keeps re-fitting
    growing = OmegaIndex.open(Settings(home=settings.home / "g"), SHA, freeze_after=0, **kw)
    growing.add(ids, x)
    assert growing.dim <= growing.max_dim and growing.fit_count == 900
