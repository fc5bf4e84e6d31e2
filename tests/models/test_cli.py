"""CLI: ``geoloc encoders list|info``, ``geoloc explain``, ``geoloc demo netvlad``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from geoloc.cli.main import app, main


def _invoke(*args: str) -> Any:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_encoders_list_json() -> None:
    rows = _invoke("encoders", "list", "--format", "json")
    assert isinstance(rows, list)
    by_name = {r["name"]: r for r in rows}
    assert {"sgmnet", "sgmnet-vgg16", "sgmnet-resnet50", "netvlad"} <= set(by_name)
    assert by_name["sgmnet"]["default"] is True
    assert by_name["sgmnet"]["value"] == "geoloc.models.sgmnet:SGMNetEncoder"


@pytest.mark.parametrize(("name", "phi_dim"), [("sgmnet", 1024), ("netvlad", 256)])
def test_encoders_info(name: str, phi_dim: int) -> None:
    info = _invoke("encoders", "info", name, "--format", "json")
    assert isinstance(info, dict)
    for key in ("name", "backbone", "omega_dim", "phi_dim", "params", "gflops_224", "pretrained"):
        assert key in info
    assert info["name"] == name and info["backbone"] == "efficientnet_lite0"
    assert info["omega_dim"] == 50176 and info["phi_dim"] == phi_dim
    assert info["pretrained"] is True
    # counted, not typed in: the Lite0 cut is ~0.49 GFLOPs, the heads add a little
    assert 0.45 < info["gflops_224"] < 0.8
    assert 500_000 < info["params"] < 5_000_000


def test_explain_writes_png_and_node_summary(tmp_path: Path, tiles: np.ndarray) -> None:
    img = tmp_path / "tile.jpg"
    Image.fromarray(tiles[0].transpose(1, 2, 0)).save(img)
    out = tmp_path / "nodes.png"
    summary = _invoke("explain", str(img), "--out", str(out))
    assert isinstance(summary, dict)
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 600
    nodes = summary["nodes"]
    assert len(nodes) == 4
    areas = [n["area"] for n in nodes]
    assert areas == sorted(areas, reverse=True)
    assert abs(sum(n["share"] for n in nodes) - 1) < 1e-3
    assert all(0 <= v <= 1 for n in nodes for v in n["centroid_xy"])


def test_explain_missing_image_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["explain", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "x.png")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("geoloc: error: ") and "nope.jpg: image not found" in err
    assert "\n" not in err
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(SystemExit):
        main(["explain", str(tmp_path / "bad.jpg")])
    assert "not a readable image" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_netvlad(tmp_path: Path) -> None:
    summary = _invoke("demo", "netvlad", "--out", str(tmp_path))
    assert isinstance(summary, dict)
    for f in ("netvlad_assignment.png", "netvlad_descriptor.png", "netvlad_variants.png"):
        with Image.open(tmp_path / f) as png:
            assert png.format == "PNG"
    sims = summary["scene_vs_noise_vs_different"]
    assert sims["noise"] > sims["different"]
    dims = {v["variant"]: v["dim"] for v in summary["variants"]}
    assert dims == {"NetVLAD": 16 * 112, "NetVLAD-Loupe": 256, "fused": 256}
    for v in summary["variants"]:
        assert v["cos_noise_mean"] > v["cos_different_mean"]


def test_info_with_backbone_weights(tmp_path: Path) -> None:
    import torch
    from torchvision.models import resnet50

    path = tmp_path / "r50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    info = _invoke("encoders", "info", "sgmnet-resnet50", "--backbone-weights", str(path))
    assert info["pretrained"] is True and info["backbone"] == "resnet50"
    assert 6.0 < info["gflops_224"] < 8.0
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    res = CliRunner().invoke(
        app, ["encoders", "info", "sgmnet-resnet50", "--backbone-weights", str(bad)]
    )
    assert res.exit_code != 0 and "cannot read weights" in str(res.exception)


def test_explain_reads_a_geotiff(tmp_path: Path, sample_raster: Path) -> None:
    from geoloc.models.explain import read_rgb

    rgb = read_rgb(sample_raster, max_side=512)
    assert rgb.dtype == np.uint8 and rgb.shape[0] == 3 and max(rgb.shape[1:]) == 512
    assert rgb.shape[1] == round(1186 * 512 / 2106)
    out = tmp_path / "ortho.png"
    summary = _invoke("explain", str(sample_raster), "--out", str(out))
    assert out.is_file() and len(summary["nodes"]) == 4
