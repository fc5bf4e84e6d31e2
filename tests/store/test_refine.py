"""OmegaIndex refine codes: a per-position product quantizer re-scores the compressed candidates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geoloc.config import Settings
from geoloc.errors import IndexError_
from geoloc.store.faiss_store import OmegaIndex
from geoloc.store.omega_format import FORMAT_VERSION
from geoloc.store.refine import DEFAULT_REFINE_BITS, RefineCodes, RefineQuantizer

from .helpers import recall_at

SHA = "fedc0123" * 8
C, P = 32, 16  # channels x positions of the synthetic maps (channel-major, like SGM-Net's Ω)
D = C * P
R = 12  # rank of the channel vectors (the refine quantizer's PCA dims)
SMALL = {"omega_dim": D, "target_dim": 32, "max_dim": 64, "refine_channels": C, "refine_dims": R}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def walks(rng: np.random.Generator, n_walks: int, steps: int) -> np.ndarray:
    """Maps whose position vectors come from one shared set of 64 channel prototypes (rank 12).

    Each walk changes 2 of the 16 positions per step, so similarity decays smoothly along it:
    a graded top-10 that a 32-d global PCA of the 512-d maps cannot order, while a quantizer
    of position vectors (shared by all positions) codes them almost exactly.
    """
    protos = (rng.standard_normal((64, R)) @ np.linalg.qr(rng.standard_normal((C, R)))[0].T).astype(
        np.float32
    )
    out = []
    for _ in range(n_walks):
        state = rng.integers(0, 64, P)
        for _ in range(steps):
            state = state.copy()
            state[rng.choice(P, 2, replace=False)] = rng.integers(0, 64, 2)
            v = protos[state] * (1 + 0.02 * rng.standard_normal((P, 1)).astype(np.float32))
            out.append(v.T.reshape(-1))  # channel-major: index = c * P + p
    x = np.asarray(out, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(settings: Settings, x: np.ndarray, ids: np.ndarray, **kw: int) -> OmegaIndex:
    ix = OmegaIndex.open(settings, SHA, **{**SMALL, **kw})
    for s in range(0, len(ids), 16):  # the ingest's batch size
        ix.add(ids[s : s + 16], x[s : s + 16])
    return ix


@pytest.mark.parametrize("bits", [8, 4])
def test_quantizer_scores_equal_the_cosine_of_decoded_vectors(bits: int) -> None:
    rng = np.random.default_rng(0)
    x = walks(rng, 2, 40)
    q = RefineQuantizer.train(x, C, R, bits)
    assert q.code_size == P * R * bits // 8 and q.positions == P
    codes = q.encode(x)
    assert codes.shape == (80, q.code_size) and codes.dtype == np.uint8
    dec = q.decode(codes)
    err = np.linalg.norm(dec - x, axis=1).mean()
    assert err < (0.01 if bits == 8 else 0.15)  # rank-12 channel vectors: the PCA is exact
    dec /= np.linalg.norm(dec, axis=1, keepdims=True)
    table = q.tables(x[:3])
    for i in range(3):
        np.testing.assert_allclose(q.scores(table[i], codes[:20]), dec[:20] @ x[i], atol=1e-5)
    again = RefineQuantizer.from_array(q.to_array(), P, bits)
    np.testing.assert_array_equal(again.encode(x), codes)
    with pytest.raises(ValueError, match="does not split"):
        RefineQuantizer.train(x[:, :-1], C, R)


def test_refine_recovers_the_exact_top10_the_compressed_stage_misses(settings: Settings) -> None:
    rng = np.random.default_rng(1)
    x = walks(rng, 10, 40)
    ids = np.arange(len(x), dtype=np.int64) * 5 + 3
    q = x[rng.choice(len(x), 40, replace=False)]
    truth = ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]
    plain = build(settings, x, ids, refine_dims=0, target_dim=16, max_dim=32)
    assert not plain.is_exact and not plain.has_refine
    _, found_plain = plain.search(q, 10)
    refined = build(
        Settings(home=settings.home / "r"), x, ids, refine_k=50, target_dim=16, max_dim=32
    )
    assert refined.has_refine and not refined.is_exact
    scores, found = refined.search(q, 10)
    assert recall_at(found_plain, truth) < 0.85  # measured 0.76
    assert recall_at(found, truth) >= 0.95
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    np.testing.assert_allclose(scores[:, 0], np.sort(q @ x.T, axis=1)[:, -1], atol=0.02)
    info = refined.info()
    assert (
        info["refine"]["count"] == len(x)
        and info["refine"]["bytes_per_tile"] == P * R * DEFAULT_REFINE_BITS // 8
    )
    assert "re-scored by refine codes" in info["search"]


def test_no_refine_while_exact(settings: Settings) -> None:
    rng = np.random.default_rng(2)
    x = walks(rng, 1, 40)
    ix = build(settings, x, np.arange(40, dtype=np.int64))
    assert ix.is_exact and not ix.has_refine
    assert ix.info()["refine"] is None and ix.info()["search"].startswith("exact")
    ix.save()
    assert not any(k.startswith("refine") for k in ix.info()["files"])


def test_refine_codes_persist_memory_mapped_and_keep_growing(settings: Settings) -> None:
    rng = np.random.default_rng(3)
    x = walks(rng, 3, 100)
    ids = np.arange(300, dtype=np.int64) + 1000
    ix = build(settings, x[:200], ids[:200], refine_k=40)
    ix.save()
    files = ix.info()["files"]
    assert {"refine", "refine_ids", "refine_norms", "refineq"} <= set(files)
    before = ix.search(x[:8], 10)
    again = OmegaIndex.open(settings, SHA)
    assert again.has_refine and again.info()["format"] == FORMAT_VERSION
    assert isinstance(again._refine, RefineCodes)
    assert isinstance(again._refine.codes, np.memmap)  # read only for the candidates
    after = again.search(x[:8], 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], atol=1e-6)
    again.add(ids[200:], x[200:])  # refine-encoded at add from the raw Ω
    again.save()
    assert again.info()["files"]["refineq"] == files["refineq"]  # quantizer unchanged
    third = OmegaIndex.open(settings, SHA, mmap=False)
    assert third.info()["refine"]["count"] == 300 == len(third)
    assert third._refine is not None
    assert np.array_equal(np.sort(third._refine.ids), third.ids())
    truth = ids[np.argsort(-(x[250:270] @ x.T), axis=1)[:, :10]]
    _, found = third.search(x[250:270], 10)
    assert recall_at(found, truth) >= 0.9
    names = sorted(p.name for p in OmegaIndex.path_for(settings, SHA).iterdir())
    assert names == sorted(["meta.json", *third.data_files()])


def test_remove_and_allowed_ids_with_refine(settings: Settings) -> None:
    rng = np.random.default_rng(4)
    x = walks(rng, 2, 100)
    ids = np.arange(200, dtype=np.int64) * 2
    ix = build(settings, x, ids, refine_k=30)
    assert ix.has_refine
    gone = ids[[5, 6, 7, 50]]
    assert ix.remove(np.concatenate([gone, [10**6]])) == 4
    assert ix.info()["refine"]["count"] == 196 == len(ix)
    _, found = ix.search(x[4:9], 20)
    assert not np.isin(found, gone).any() and (found >= 0).all()
    allowed = ids[[4, 8, 9, 120, 6]]  # ids[6] was removed
    s, found = ix.search(x[8:9], 5, allowed_ids=allowed)
    assert found[0, 0] == ids[8] and set(found[0, :4]) == set(ids[[4, 8, 9, 120]])
    assert found[0, 4] == -1 and np.isneginf(s[0, 4])
    ix.save()
    again = OmegaIndex.open(settings, SHA)
    _, found2 = again.search(x[4:9], 20)
    assert not np.isin(found2, gone).any()
    # a refine file whose ids disagree with the FAISS file is refused
    d = OmegaIndex.path_for(settings, SHA)
    rid = d / again.info()["files"]["refine_ids"]
    bad = np.load(rid)
    bad[0] = 10**7
    np.save(rid, bad)
    with pytest.raises(IndexError_, match="geoloc index rebuild") as err:
        OmegaIndex.open(settings, SHA)
    assert "refine codes" in str(err.value) and "\n" not in str(err.value)


def test_format_1_index_loads_without_refine_and_says_rebuild(settings: Settings) -> None:
    rng = np.random.default_rng(5)
    x = walks(rng, 2, 100)
    ids = np.arange(200, dtype=np.int64)
    ix = build(settings, x[:150], ids[:150], refine_dims=0)  # what format 1 wrote
    ix.save()
    d = OmegaIndex.path_for(settings, SHA)
    meta = json.loads((d / "meta.json").read_text())
    meta["format"] = 1
    for key in ("refine_dims", "refine_bits", "refine_channels", "refine_k"):
        del meta["params"][key]
    del meta["refine"]
    (d / "meta.json").write_text(json.dumps(meta))
    old = OmegaIndex.open(settings, SHA)
    assert old.info()["format"] == 1 and not old.has_refine
    assert old.refine_dims > 0  # the defaults: a rebuild gets refine codes
    assert "geoloc index rebuild" in old.info()["search"]
    _, found = old.search(x[:5], 3)
    assert found[:, 0].tolist() == [0, 1, 2, 3, 4]
    # adding to it keeps it working; it cannot grow refine codes (stored Ω is gone)
    old.add(ids[150:], x[150:])
    assert not old.has_refine and len(old) == 200
    old.save()
    assert OmegaIndex.open(settings, SHA).info()["format"] == FORMAT_VERSION
    meta["format"] = FORMAT_VERSION + 1
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexError_, match="newer"):
        OmegaIndex.open(settings, SHA)


def test_saves_append_refine_segments_instead_of_rewriting(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding a raster to a large index writes that raster's codes only (not all of them);
    removing rows rewrites only their segments; many small segments are merged."""
    from geoloc.store import omega_format

    rng = np.random.default_rng(6)
    x = walks(rng, 4, 100)
    ids = np.arange(400, dtype=np.int64) + 7
    ix = build(settings, x[:200], ids[:200], refine_k=60)
    ix.save()
    d = OmegaIndex.path_for(settings, SHA)
    (first,) = ix.info()["files"]["refine"]
    stat0 = (d / first).stat()
    ix = OmegaIndex.open(settings, SHA)
    ix.add(ids[200:300], x[200:300])
    ix.save()
    segs = ix.info()["files"]["refine"]
    assert segs[0] == first and len(segs) == 2 and ix.info()["refine"]["segments"] == 2
    assert (d / first).stat().st_mtime_ns == stat0.st_mtime_ns  # not rewritten
    code_size = ix.info()["refine"]["bytes_per_tile"]
    assert np.load(d / segs[1]).shape == (100, code_size)  # only the new rows
    # segments answer exactly as the same codes in one matrix
    again = OmegaIndex.open(settings, SHA)
    s1, f1 = again.search(x[:300:7], 10)
    seg = again._refine
    assert seg is not None and isinstance(seg.segments[0][0], np.memmap)
    whole = OmegaIndex.open(settings, SHA)
    whole._refine = RefineCodes(seg.quantizer, seg.ids, np.array(seg.codes), seg.norms)
    s2, f2 = whole.search(x[:300:7], 10)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    # removing rows of the second segment rewrites it alone
    again.remove(ids[250:260])
    again.save()
    segs2 = again.info()["files"]["refine"]
    assert segs2[0] == first and segs2[1] != segs[1]
    assert np.load(d / segs2[1]).shape == (90, code_size)
    assert sorted(p.name for p in d.iterdir()) == sorted(["meta.json", *again.data_files()])
    _, found = OmegaIndex.open(settings, SHA).search(x[250:260], 5)
    assert not np.isin(found, ids[250:260]).any()
    # past MAX_REFINE_SEGMENTS, neighbouring small segments are merged at a save
    monkeypatch.setattr(omega_format, "MAX_REFINE_SEGMENTS", 3)
    for s in range(300, 400, 25):
        again.add(ids[s : s + 25], x[s : s + 25])
        again.save()
    segs3 = again.info()["files"]["refine"]
    assert len(segs3) == 3 and segs3[0] == first
    final = OmegaIndex.open(settings, SHA)
    assert final.info()["refine"]["count"] == 390 == len(final)
    keep = np.setdiff1d(ids, ids[250:260])
    truth = ids[np.argsort(-(x[300:400:5] @ x.T), axis=1)[:, :10]]
    _, found = final.search(x[300:400:5], 10)
    assert np.isin(found, keep).all() and recall_at(found, truth) >= 0.85


def test_format_2_index_with_one_refine_file_loads(settings: Settings) -> None:
    rng = np.random.default_rng(7)
    x = walks(rng, 2, 100)
    ids = np.arange(200, dtype=np.int64)
    ix = build(settings, x, ids, refine_k=40)
    ix.save()
    before = ix.search(x[:6], 5)
    d = OmegaIndex.path_for(settings, SHA)
    meta = json.loads((d / "meta.json").read_text())
    (name,) = meta["files"]["refine"]
    meta["files"]["refine"] = name  # what format 2 wrote: one file name
    meta["format"] = 2
    (d / "meta.json").write_text(json.dumps(meta))
    old = OmegaIndex.open(settings, SHA)
    assert old.has_refine and old.info()["format"] == 2
    after = old.search(x[:6], 5)
    np.testing.assert_array_equal(before[1], after[1])
    old.add(np.arange(1000, 1010), x[:10] * 0.5 + x[10:20] * 0.5)
    old.save()
    assert old.info()["files"]["refine"][0] == name and old.info()["format"] == FORMAT_VERSION


def test_removing_every_tile_keeps_the_refine_quantizer(settings: Settings) -> None:
    """``ingest --force`` of the only raster empties the index first: the refine quantizer
    must survive a save and reload in between, or later tiles would get no refine codes."""
    rng = np.random.default_rng(8)
    x = walks(rng, 2, 100)
    ids = np.arange(200, dtype=np.int64)
    ix = build(settings, x, ids, refine_k=40)
    assert ix.has_refine
    assert ix.remove(ids) == 200
    ix.save()
    empty = OmegaIndex.open(settings, SHA)
    assert empty.has_refine and len(empty) == 0
    assert empty.info()["files"]["refine"] == []
    empty.add(ids + 500, x)
    empty.save()
    again = OmegaIndex.open(settings, SHA)
    assert again.has_refine and again.info()["refine"]["count"] == 200 == len(again)
    truth = (ids + 500)[np.argsort(-(x[:20] @ x.T), axis=1)[:, :10]]
    _, found = again.search(x[:20], 10)
    assert recall_at(found, truth) >= 0.9
