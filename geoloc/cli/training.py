"""``geoloc train`` and ``geoloc eval``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from geoloc.errors import ConfigError


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``eval`` to ``app``."""

    @app.command("train")
    def train(
        raster: list[Path] = typer.Option(
            None, "--raster", help="Orthomosaic(s) to cut self-supervised pairs from (repeatable)."
        ),
        from_db: bool = typer.Option(
            False, "--from-db", help="Train on the rasters of every complete orthomosaic."
        ),
        university1652: Path | None = typer.Option(
            None, "--university1652", help="Root of a University-1652 folder tree."
        ),
        out: Path = typer.Option(Path("runs/train"), "--out", help="Checkpoint directory."),
        epochs: int = typer.Option(6, "--epochs", min=1),
        beta: float = typer.Option(0.5, "--beta", min=0.0, max=1.0, help="Weight of the Ω term."),
        margin: float = typer.Option(0.2, "--margin", min=0.0, help="Triplet margin on Φ."),
        lr: float = typer.Option(1e-3, "--lr", min=0.0),
        batch_size: int = typer.Option(32, "--batch-size", min=2),
        samples: int = typer.Option(256, "--samples", min=8, help="Fresh pairs per epoch."),
        passes: int = typer.Option(3, "--passes", min=1, help="Passes over each epoch's cache."),
        val_samples: int = typer.Option(96, "--val-samples", min=0),
        seed: int = typer.Option(0, "--seed"),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
        unfreeze: bool = typer.Option(False, "--unfreeze", help="Train the backbone too (GPU)."),
        encoder: str = typer.Option("sgmnet", "--encoder"),
        num_nodes: int = typer.Option(4, "--nodes", min=2, max=8, help="CSMG nodes K."),
        gsd_min: float = typer.Option(0.14, "--gsd-min", help="Smallest tile GSD (m/px)."),
        gsd_max: float = typer.Option(0.5, "--gsd-max", help="Largest tile GSD (m/px)."),
        headings: int = typer.Option(
            8, "--heading-hypotheses", min=1, help="Rotation search of the localizer."
        ),
        mining: str = typer.Option(
            "pool",
            "--mining",
            help="Hard negatives: 'pool' (one of the 5 most similar in the epoch, re-mined each "
            "pass) or 'batch' (the most similar in the batch, batch-hard).",
        ),
        device: str | None = typer.Option(None, "--device", help="Default: cuda if available."),
    ) -> None:
        """Train an encoder head: self-supervised on orthomosaics, or on University-1652.

        Prints the run summary as JSON on stdout; progress and per-epoch lines on stderr.
        """
        import torch

        from geoloc.training.datasets import RasterPairs, University1652
        from geoloc.training.trainer import PairSource, TrainConfig, Trainer

        sources = sum([bool(raster), from_db, university1652 is not None])
        if sources != 1:
            raise ConfigError("give exactly one of --raster, --from-db, --university1652")
        if gsd_min <= 0 or gsd_max < gsd_min:
            raise ConfigError(f"bad GSD range {gsd_min}..{gsd_max}")
        if device is None and not torch.cuda.is_available():
            torch.set_num_threads(max(1, torch.get_num_threads()))
        src: PairSource
        if university1652 is not None:
            src = University1652(university1652)
        else:
            paths = list(raster) if raster else _rasters_from_db()
            for p in paths:
                if not Path(p).is_file():
                    raise ConfigError("raster not found", path=str(p))
            src = RasterPairs(paths, gsd_range=(gsd_min, gsd_max), heading_hypotheses=headings)
        cfg = TrainConfig(
            epochs=epochs,
            beta=beta,
            margin=margin,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            samples_per_epoch=samples,
            passes=passes,
            val_samples=val_samples,
            unfreeze=unfreeze,
            encoder=encoder,
            num_nodes=num_nodes,
            mining=mining,
            device=device,
        )
        trainer = Trainer(cfg, src, out, log=_err, progress=sys.stderr.isatty())
        _err(f"training {encoder} on {trainer.device} -> {out}")
        res = trainer.fit(resume=resume)
        typer.echo(
            json.dumps(
                {
                    "out": str(res.out_dir),
                    "best_checkpoint": str(res.out_dir / "best"),
                    "best_epoch": res.best_epoch,
                    "best_val_r1": res.best_val_recall1,
                    "epochs_run": res.epochs_run,
                    "history": res.history,
                },
                indent=2,
            )
        )

    @app.command("eval")
    def evaluate(
        raster: Path | None = typer.Option(None, "--raster", help="Raster for --synthetic."),
        synthetic: int = typer.Option(0, "--synthetic", min=0, help="N synthetic drone views."),
        checkpoint: list[str] = typer.Option(
            None,
            "--checkpoint",
            help="NAME=PATH of a checkpoint to compare (repeatable); 'untrained' and 'shipped' "
            "are built in.",
        ),
        gsd: float | None = typer.Option(None, "--gsd", help="Tile GSD (default: native)."),
        tile_size: int = typer.Option(224, "--tile-size"),
        stride: int | None = typer.Option(None, "--stride", help="Default: half a tile."),
        headings: int = typer.Option(8, "--heading-hypotheses", min=1),
        seed: int = typer.Option(0, "--seed"),
        encoder: str = typer.Option("sgmnet", "--encoder"),
        university1652: Path | None = typer.Option(None, "--university1652"),
        max_queries: int | None = typer.Option(None, "--max-queries"),
        max_tilt: float = typer.Option(
            30.0, "--max-tilt", min=0.0, max=60.0, help="Largest off-nadir tilt of --synthetic."
        ),
        cache_dir: Path | None = typer.Option(
            None, "--cache-dir", help="Keep frozen-backbone features here between runs."
        ),
        queries: Path | None = typer.Option(
            None, "--queries", help="Folder of frames (with --truth): run the localizer."
        ),
        truth: Path | None = typer.Option(None, "--truth", help="truth.csv: name,lat,lon[,gsd_m]"),
        preset: list[str] = typer.Option(None, "--preset", help="Localizer preset (repeatable)."),
        ablation: bool = typer.Option(
            False,
            "--ablation",
            help="Frames: Ω only / + Φ rerank / + node consistency. Synthetic views always "
            "report Ω, Φ, Ω+Φ and Ω>Φ (Φ rerank of the Ω top 50); compare K = 4/5/6 by "
            "passing their checkpoints (the table shows each encoder's K).",
        ),
        use_gsd: bool = typer.Option(
            True, "--use-gsd/--no-gsd", help="Pass the truth table's gsd_m to the localizer."
        ),
        plot: Path | None = typer.Option(None, "--plot", help="Write error CDF + answer map."),
    ) -> None:
        """Evaluate encoders: retrieval of synthetic views of a raster (``--synthetic N --raster``)
        or University-1652 drone->satellite retrieval. JSON on stdout, a table on stderr."""
        import torch

        from geoloc.models import build_encoder, load_encoder

        if queries is not None or truth is not None:
            if queries is None or truth is None:
                raise ConfigError("--queries and --truth go together")
            from geoloc.evaluation.frames import ablation_configs, evaluate_frames, plot_results
            from geoloc.localize.pipeline import preset as get_preset

            configs: dict[str, Any] = {p: get_preset(p) for p in (preset or [])}
            if ablation:
                configs.update(ablation_configs())
            if not configs:
                configs = {"accurate": get_preset("accurate")}
            ckpt = None
            for item in checkpoint or []:
                ckpt = item.partition("=")[2] or item
            result = evaluate_frames(
                configs, queries, truth, checkpoint=ckpt, encoder=encoder, use_gsd=use_gsd, log=_err
            )
            _print_frames_table(result)
            if plot is not None:
                for pth in plot_results(result, plot, raster):
                    _err(f"wrote {pth}")
            typer.echo(json.dumps(result, indent=2))
            return
        if university1652 is None and synthetic == 0:
            raise ConfigError(
                "give --synthetic N --raster PATH, --queries/--truth or --university1652"
            )
        if university1652 is None and raster is None:
            raise ConfigError("--synthetic needs --raster")
        names = list(checkpoint or ["untrained", "shipped"])
        encoders: dict[str, Any] = {}
        for item in names:
            name, _, path = item.partition("=")
            if name == "untrained" and not path:
                encoders[name] = build_encoder(encoder)
            elif name == "shipped" and not path:
                encoders[name] = load_encoder(encoder)
            elif path:
                encoders[name] = load_encoder(encoder, checkpoint=path)
            else:
                raise ConfigError(f"--checkpoint {item!r}: expected NAME=PATH")
        torch.manual_seed(seed)
        if university1652 is not None:
            from geoloc.evaluation.university import evaluate_university1652

            result = evaluate_university1652(encoders, university1652, max_queries=max_queries)
        elif synthetic > 0:
            if raster is None:
                raise ConfigError("--synthetic needs --raster")
            from geoloc.evaluation.retrieval import evaluate_retrieval, make_queries, make_tiles

            db = make_tiles(raster, tile_size, stride, gsd)
            q = make_queries(raster, synthetic, db, seed=seed, max_tilt_deg=max_tilt)
            _err(f"{len(db.pixels)} tiles at {db.gsd_m:.3f} m/px, {synthetic} views (seed {seed})")
            result = evaluate_retrieval(
                encoders, db, q, headings=headings, log=_err, cache_dir=cache_dir
            )
            result["raster"] = str(raster)
        else:
            raise ConfigError("give --synthetic N --raster PATH or --university1652 DIR")
        _print_table(result)
        typer.echo(json.dumps(result, indent=2))


def _print_table(result: dict[str, Any]) -> None:
    rows = result.get("results", {})
    if not rows:
        return
    first = next(iter(rows.values()))
    cols = [k for k in next(iter(first.values())) if k.startswith(("loc@", "R@", "AP"))]
    nodes = {n: e.get("num_nodes") for n, e in result.get("encoders", {}).items()}
    _err(
        f"{'encoder':<14}{'K':>3} {'score':<11}"
        + "".join(f"{c:>8}" for c in cols)
        + f"{'median m':>10}"
    )
    for name, per in rows.items():
        k = str(nodes.get(name) or "-")
        for sname, m in per.items():
            med = m.get("top1_error", {}).get("median_m", float("nan"))
            _err(
                f"{name:<14}{k:>3} {sname:<11}"
                + "".join(f"{m[c]:>8.3f}" for c in cols)
                + f"{med:>10.1f}"
            )


def _print_frames_table(result: dict[str, Any]) -> None:
    _err(
        f"{'pipeline':<24}{'R@1':>6}{'R@5':>6}{'median m':>10}{'p90 m':>8}{'<=25m':>7}"
        f"{'neg rej':>8}{'pos rej':>8}{'p50 ms':>8}"
    )
    for name, r in result["results"].items():
        e, rej, lat = r["errors"], r["rejection"], r["latency"]
        _err(
            f"{name:<24}{r.get('R@1', float('nan')):>6.2f}{r.get('R@5', float('nan')):>6.2f}"
            f"{e['median_m']:>10.1f}{e['p90_m']:>8.1f}{e['within_25m']:>7.2f}"
            f"{rej['negatives_rejected']:>8.2f}{rej['positives_rejected']:>8.2f}"
            f"{lat['p50_ms']:>8.0f}"
        )


def _rasters_from_db() -> list[Path]:
    """Paths of every complete orthomosaic in the database."""
    from geoloc.config import Settings
    from geoloc.store import open_database
    from geoloc.store.repository import complete_raster_paths

    db = open_database(Settings.from_env())
    try:
        paths = [Path(p) for p in complete_raster_paths(db)]
    finally:
        db.dispose()
    if not paths:
        raise ConfigError("no complete orthomosaic in the database: run geoloc ingest first")
    return paths
