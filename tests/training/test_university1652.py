"""The University-1652 loader and evaluation on a tiny fake tree made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geoloc.training.datasets import DatasetError, University1652


def _img(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((40, 30, 3), np.uint8)
    a[:] = colour
    a[5:15, 5:15] = 255 - np.array(colour, np.uint8)
    Image.fromarray(a).save(path)


def make_tree(root: Path, n_train: int = 12, n_test: int = 3) -> Path:
    """train/{drone,satellite}/<id>/*, test/{query_drone,gallery_satellite}/<id>/*."""
    rng = np.random.default_rng(0)
    for i in range(n_train):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        bid = f"{i:04d}"
        _img(root / "train" / "satellite" / bid / f"{bid}.jpg", c)
        for k in range(3):
            _img(root / "train" / "drone" / bid / f"image-{k:02d}.jpeg", c)
    for i in range(n_test):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        bid = f"{1000 + i:04d}"
        _img(root / "test" / "gallery_satellite" / bid / f"{bid}.jpg", c)
        for k in range(2):
            _img(root / "test" / "query_drone" / bid / f"image-{k:02d}.jpeg", c)
    (root / "train" / "drone" / "0000" / "notes.txt").write_text("not an image")
    return root


def test_loader_reads_the_layout(tmp_path: Path) -> None:
    d = University1652(make_tree(tmp_path), size=32)
    assert len(d.train_ids) + len(d.val_ids) == 12
    assert d.val_ids == ["0009"]  # every 10th id held out
    assert not d.has_validation  # a single id cannot be validated on
    assert all(len(d.train_drone[i]) == 3 for i in d.train_ids)  # the .txt is ignored
    ps = d.sample(6, np.random.default_rng(0))
    assert ps.anchors.shape == (6, 3, 32, 32) and ps.positives.shape == (6, 3, 32, 32)
    for i in range(6):
        # anchor and positive show the same building (same colour in the fake tree)
        assert np.array_equal(ps.anchors[i, :, 0, 0], ps.positives[i, :, 0, 0])
        for j in range(6):
            assert ps.negative_ok[i, j] == (ps.groups[i] != ps.groups[j])
    q, qi, g, gi = d.evaluation_set()
    assert len(q) == 6 and len(g) == 3 and set(qi) == set(gi)


def test_missing_tree_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        University1652(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither"):
        University1652(tmp_path / "empty")


@pytest.mark.slow
def test_evaluation_on_fake_tree(tmp_path: Path) -> None:
    from geoloc.evaluation.university import evaluate_university1652
    from geoloc.models import build_encoder

    enc = build_encoder("sgmnet")
    res = evaluate_university1652({"untrained": enc}, make_tree(tmp_path, n_train=2))
    assert res["protocol"] == {"queries": 6, "gallery": 3, "root": str(tmp_path)}
    r = res["results"]["untrained"]["omega"]
    # identical images per building: the pretrained features retrieve them exactly
    assert r["R@1"] == 1.0 and r["AP"] == 1.0 and r["R@top1%"] == 1.0
