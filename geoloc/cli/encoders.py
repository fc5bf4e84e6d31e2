"""CLI: ``geoloc encoders list|info``, ``geoloc explain``, ``geoloc demo netvlad``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from geoloc.config import DEFAULT_ENCODER
from geoloc.errors import ConfigError

encoders_app = typer.Typer(help="Encoder plugins: list them, describe one.", no_args_is_help=True)
demo_app = typer.Typer(help="Figures that show how the models behave.", no_args_is_help=True)


def _emit(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def encoder_info(
    name: str, checkpoint: Path | None = None, backbone_weights: Path | None = None
) -> dict[str, Any]:
    """The ``encoders info`` record of encoder ``name`` (FLOPs counted, not typed in)."""
    from geoloc.models import load_encoder
    from geoloc.models.registry import shipped_checkpoint

    overrides: dict[str, Any] = {}
    if backbone_weights is not None:
        overrides["backbone_weights"] = str(backbone_weights)
    enc = load_encoder(name, checkpoint=checkpoint, **overrides)
    return {
        "name": enc.name,
        "backbone": enc.backbone_name,
        "omega_dim": int(enc.omega_dim),
        "phi_dim": int(enc.phi_dim),
        "num_nodes": int(enc.num_nodes),
        "params": int(sum(p.numel() for p in enc.parameters())),
        "gflops_224": round(float(enc.gflops()), 4),
        "pretrained": bool(enc.pretrained),
        "trained_head": checkpoint is not None
        or (not overrides and shipped_checkpoint(name) is not None),
        "weights_sha256": enc.weights_sha256,
    }


def register(app: typer.Typer) -> None:
    """Add ``encoders``, ``explain`` and ``demo`` to ``app``."""
    app.add_typer(encoders_app, name="encoders")
    app.add_typer(demo_app, name="demo")

    @encoders_app.command("list")
    def list_cmd(
        fmt: str = typer.Option("table", "--format", help="table or json"),
    ) -> None:
        """List the installed encoder plugins (entry-point group geoloc.encoders)."""
        from geoloc import plugins
        from geoloc.models.registry import GROUP

        infos = plugins.available(GROUP)
        rows = [
            {
                "name": i.name,
                "value": i.value,
                "package": i.package,
                "version": i.version,
                "default": i.name == DEFAULT_ENCODER,
            }
            for i in infos.values()
        ]
        if fmt == "json":
            _emit(rows)
        elif fmt == "table":
            for r in rows:
                star = "*" if r["default"] else " "
                typer.echo(f"{star} {r['name']:<18} {r['value']}  ({r['package'] or 'runtime'})")
        else:
            raise ConfigError(f"--format {fmt!r}; valid: table, json")

    @encoders_app.command("info")
    def info_cmd(
        name: str = typer.Argument(..., help="Encoder plugin name, e.g. sgmnet."),
        fmt: str = typer.Option("json", "--format", help="json or text"),
        checkpoint: Path | None = typer.Option(None, help="Checkpoint (PATH.json) to describe."),
        backbone_weights: Path | None = typer.Option(
            None,
            "--backbone-weights",
            help="Backbone state dict (.safetensors, or .pth read with weights_only=True).",
        ),
    ) -> None:
        """Describe one encoder: dims, parameters, GFLOPs at 224 px, pretrained backbone."""
        if fmt not in ("json", "text"):
            raise ConfigError(f"--format {fmt!r}; valid: json, text")
        info = encoder_info(name, checkpoint, backbone_weights)
        if fmt == "json":
            _emit(info)
        else:
            for key, value in info.items():
                typer.echo(f"{key:<14} {value}")

    @app.command("explain")
    def explain_cmd(
        image: Path = typer.Argument(..., help="Image (JPEG/PNG/GeoTIFF) to explain."),
        out: Path = typer.Option(Path("nodes.png"), "--out", "-o", help="PNG to write."),
        encoder: str = typer.Option(DEFAULT_ENCODER, help="Encoder plugin name."),
        checkpoint: Path | None = typer.Option(None, help="Encoder checkpoint (PATH.json)."),
    ) -> None:
        """Draw the image with its CSMG node maps, centroids and areas; node summary to stdout."""
        from geoloc.models import load_encoder
        from geoloc.models.explain import explain_figure, read_rgb

        rgb = read_rgb(image)
        enc = load_encoder(encoder, checkpoint=checkpoint)
        summary = explain_figure(enc, rgb, out, title=f"{image.name}: {enc.name} nodes")
        _emit({"image": str(image), **summary})

    @demo_app.command("netvlad")
    def demo_netvlad_cmd(
        out: Path = typer.Option(Path("netvlad-demo"), "--out", "-o", help="Output directory."),
        raster: Path | None = typer.Option(
            None, help="RGB GeoTIFF to take tiles from (default: the bundled Turku sample)."
        ),
    ) -> None:
        """The three NetVLAD-study figures on real tiles; a JSON summary to stdout."""
        from geoloc.models.demo_netvlad import run_demo

        _emit(run_demo(out, raster))
