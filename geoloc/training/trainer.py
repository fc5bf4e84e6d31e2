"""The SGM-Net trainer: frozen pretrained backbone with cached features, hard negatives mined by the
current model every pass, validation recall@1 on a held-out spatial block, checkpoints each epoch.

Per epoch: draw ``samples_per_epoch`` fresh (tile, drone view) pairs from the source, run the
frozen backbone once over them (the cache), then make ``passes`` passes over the cached features:
each pass re-mines the hard negatives with the current head (for every anchor, one of the
``hard_pool`` most similar positives of *other* places) and takes Adam steps on the loss of
:class:`geoloc.training.losses.SGMLoss`. ``unfreeze=True`` trains the backbone too (no cache).

Checkpoints in ``out_dir``: ``last.safetensors`` + ``last.json`` (a ``geoloc.models`` checkpoint:
weights of the trained part, encoder config, SHA-256 hashes; epoch and history under
``training``) and ``optimizer.safetensors`` (for
``resume``); ``best.safetensors`` + ``best.json``: the epoch with the best validation recall@1
(mean of the Ω and Φ recall@1 on the held-out block; ties go to the later epoch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from geoloc.config import DEFAULT_ENCODER
from geoloc.errors import TrainError
from geoloc.metrics import recall_at_k
from geoloc.training.datasets import PairSet
from geoloc.training.losses import LossParts, SGMLoss

__all__ = [
    "PairSource",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "Trainer",
    "build_encoder",
    "retrieval_recall",
]


#: Negative mining: ``pool`` = for each anchor, one of the ``hard_pool`` most similar positives of
#: other places in the whole epoch cache (re-mined each pass); ``batch`` = the most similar
#: positive of another place in the same batch, with the weights of that step (batch-hard).
MINING: tuple[str, ...] = ("pool", "batch")


class PairSource(Protocol):
    """Anything that samples (anchor, positive) pair sets: RasterPairs, University1652."""

    @property
    def has_validation(self) -> bool:
        """Whether ``sample(..., split="val")`` works."""
        ...

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> PairSet:
        """``n`` pairs of the ``split`` part."""
        ...


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (all exposed by ``geoloc train``)."""

    epochs: int = 6
    beta: float = 0.5
    margin: float = 0.2
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    samples_per_epoch: int = 256
    passes: int = 3
    val_samples: int = 96
    hard_pool: int = 5
    mining: str = "pool"
    unfreeze: bool = False
    encoder: str = DEFAULT_ENCODER
    num_nodes: int = 4
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able representation."""
        return asdict(self)


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    epochs_run: int
    best_epoch: int
    best_val_recall1: float
    history: list[dict[str, float]] = field(default_factory=list)


def build_encoder(cfg: TrainConfig) -> Any:
    """A freshly initialised encoder (plugin ``cfg.encoder``, seeded) to train; the backbone is
    frozen unless ``cfg.unfreeze``."""
    from geoloc.errors import ConfigError
    from geoloc.models import build_encoder as build

    params: dict[str, Any] = {"freeze_backbone": not cfg.unfreeze}
    try:
        enc = build(cfg.encoder, num_nodes=cfg.num_nodes, **params)
    except ConfigError:  # plugins without a K parameter
        enc = build(cfg.encoder, **params)
    return enc


def retrieval_recall(
    q: torch.Tensor, db: torch.Tensor, relevant: list[set[int]], ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Recall@k of cosine retrieval of ``q`` (Q, D) among ``db`` (N, D)."""
    sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(db, dim=1).T
    k = min(max(ks), db.shape[0])
    top = sim.topk(k, dim=1).indices.tolist()
    return recall_at_k(top, relevant, ks)


class Trainer:
    """Trains an encoder's head (and the backbone with ``unfreeze``) on a :class:`PairSource`."""

    def __init__(
        self,
        cfg: TrainConfig,
        source: PairSource | None,
        out_dir: str | Path,
        *,
        encoder: Any = None,
        log: Callable[[str], None] | None = None,
        progress: bool = False,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.out_dir = Path(out_dir)
        self.log = log or (lambda _msg: None)
        self.progress = progress
        if cfg.device:
            self.device = torch.device(cfg.device)
        else:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(cfg.seed)
        self.encoder: Any = encoder if encoder is not None else build_encoder(cfg)
        self.encoder.to(self.device)
        if cfg.mining not in MINING:
            raise TrainError(f"mining {cfg.mining!r}; valid: {', '.join(MINING)}")
        self.params = [p for p in self.encoder.trainable_parameters() if p.requires_grad]
        if not self.params:
            raise TrainError("the encoder has no trainable parameters")
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr)
        self.loss_fn = SGMLoss(beta=cfg.beta, margin=cfg.margin)
        self.start_epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_recall = float("-inf")
        self.best_epoch = -1

    # -- features -------------------------------------------------------------------------------
    def features(self, images: np.ndarray, batch: int = 32) -> torch.Tensor:
        """Frozen backbone features of uint8 images (N, 3, S, S), no gradient, on the device."""
        enc = self.encoder
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch):
                out.append(enc.backbone_features(enc.preprocess(images[i : i + batch])))
        return torch.cat(out)

    def _head_no_grad(self, feats: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, ...]:
        enc = self.encoder
        omegas, phis = [], []
        was = enc.training
        enc.eval()
        with torch.no_grad():
            for i in range(0, len(feats), batch):
                o = enc.forward_head(feats[i : i + batch])
                omegas.append(o.omega)
                phis.append(o.phi)
        enc.train(was)
        return torch.cat(omegas), torch.cat(phis)

    def mine_negatives(
        self, fa: torch.Tensor, fp: torch.Tensor, negative_ok: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """For each anchor, one of the ``hard_pool`` positives of other places that the current
        model finds most similar to it (Ω + Φ cosine)."""
        oa, pa = self._head_no_grad(fa)
        op, pp = self._head_no_grad(fp)
        pa_n = torch.nn.functional.normalize(pa, dim=1)
        pp_n = torch.nn.functional.normalize(pp, dim=1)
        sim = (oa @ op.T + pa_n @ pp_n.T).cpu().numpy()
        sim[~negative_ok] = -np.inf
        neg = np.empty(len(sim), dtype=np.int64)
        for i, row in enumerate(sim):
            ok = np.isfinite(row)
            if not ok.any():
                raise TrainError("an anchor has no negative: sample more places per epoch")
            k = min(self.cfg.hard_pool, int(ok.sum()))
            top = np.argpartition(-row, k - 1)[:k]
            neg[i] = int(top[int(rng.integers(k))])
        return neg

    # -- steps ----------------------------------------------------------------------------------
    def step_batch_hard(
        self, fa: torch.Tensor, fp: torch.Tensor, negative_ok: np.ndarray
    ) -> LossParts:
        """One Adam step where each anchor's negative is the positive of another place in the
        batch that the current model finds most similar to it (Ω + Φ cosine, batch-hard);
        ``negative_ok`` (B, B) says which pairs are far enough apart to be negatives."""
        n = fa.shape[0]
        out = self._forward_train(torch.cat([fa, fp]))
        om, ph = out.omega, out.phi
        with torch.no_grad():
            pn = torch.nn.functional.normalize(ph, dim=1)
            sim = om[:n] @ om[n:].T + pn[:n] @ pn[n:].T
            ok = torch.as_tensor(negative_ok, device=sim.device)
            sim = sim.masked_fill(~ok, float("-inf"))
            neg = sim.argmax(dim=1)
        if not bool(ok.any(dim=1).all()):
            raise TrainError("an anchor has no negative in its batch: use a larger --batch-size")
        return self._descend(self.loss_fn(om[:n], om[n:], om[n:][neg], ph[:n], ph[n:], ph[n:][neg]))

    def step(
        self,
        fa: torch.Tensor,
        fp: torch.Tensor,
        fn: torch.Tensor,
    ) -> LossParts:
        """One Adam step on a batch of anchor/positive/negative backbone features (or, with
        ``unfreeze``, normalised images)."""
        n = fa.shape[0]
        out = self._forward_train(torch.cat([fa, fp, fn]))
        om, ph = out.omega, out.phi
        return self._descend(
            self.loss_fn(om[:n], om[n : 2 * n], om[2 * n :], ph[:n], ph[n : 2 * n], ph[2 * n :])
        )

    def _forward_train(self, x: torch.Tensor) -> Any:
        """Encoder output in training mode: the head only, or the whole encoder (``unfreeze``)."""
        self.encoder.train()
        return (self.encoder.forward if self.cfg.unfreeze else self.encoder.forward_head)(x)

    def _descend(self, loss: LossParts) -> LossParts:
        """One Adam step on ``loss.total``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        self.optimizer.step()
        return loss

    def _inputs(self, images: np.ndarray) -> torch.Tensor:
        if self.cfg.unfreeze:
            with torch.no_grad():
                return self.encoder.preprocess(images)
        return self.features(images)

    # -- validation -----------------------------------------------------------------------------
    def validate(self, val: PairSet, fa: torch.Tensor, fp: torch.Tensor) -> dict[str, float]:
        """Recall@1/5 of the validation positives among the validation anchors, by Ω and by Φ."""
        if self.cfg.unfreeze:
            fa, fp = self.features(val.anchors), self.features(val.positives)
        oa, pa = self._head_no_grad(fa)
        op, pp = self._head_no_grad(fp)
        rel = val.relevant()
        r_o = retrieval_recall(op, oa, rel)
        r_p = retrieval_recall(pp, pa, rel)
        return {"val_r1": r_o[1], "val_r5": r_o[5], "val_phi_r1": r_p[1], "val_phi_r5": r_p[5]}

    # -- checkpoints ------------------------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        """The weights this run trains (head only when the backbone is frozen)."""
        state = self.encoder.state_dict()
        if not self.cfg.unfreeze:
            state = {k: v for k, v in state.items() if k.startswith("head.")}
        return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}

    def save(self, stem: str, epoch: int, metrics: dict[str, float]) -> Path:
        """Write ``<stem>.safetensors`` + ``<stem>.json`` with ``geoloc.models.save_checkpoint``
        (loadable by ``load_encoder(name, checkpoint=...)``), plus the training state under the
        JSON's ``training`` key. Returns the JSON path."""
        from geoloc.models import save_checkpoint

        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp_stem = self.out_dir / f".{stem}.tmp"
        json_tmp = save_checkpoint(self.encoder, tmp_stem, head_only=not self.cfg.unfreeze)
        meta = json.loads(json_tmp.read_text())
        weights_tmp = json_tmp.with_suffix(".safetensors")
        meta["weights_file"] = f"{stem}.safetensors"
        meta["training"] = {
            "epoch": epoch,
            "metrics": metrics,
            "best_epoch": self.best_epoch,
            "best_val_r1": self.best_recall,
            "history": self.history,
            "config": self.cfg.to_dict(),
        }
        json_tmp.write_text(json.dumps(meta, indent=2) + "\n")
        weights_tmp.replace(self.out_dir / f"{stem}.safetensors")
        final = self.out_dir / f"{stem}.json"
        json_tmp.replace(final)
        return final

    def _save_optimizer(self) -> None:
        from safetensors.torch import save_file

        sd = self.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        for idx, st in sd["state"].items():
            for name, val in st.items():
                t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
                tensors[f"{idx}.{name}"] = t.detach().cpu().contiguous().clone()
        tmp = self.out_dir / "optimizer.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"param_groups": json.dumps(sd["param_groups"])})
        tmp.replace(self.out_dir / "optimizer.safetensors")

    def resume(self) -> int:
        """Load ``last`` weights, optimizer and history from ``out_dir``; returns the next epoch."""
        from safetensors import safe_open

        from geoloc.models import load_checkpoint

        j = self.out_dir / "last.json"
        o = self.out_dir / "optimizer.safetensors"
        if not (j.is_file() and o.is_file()):
            raise TrainError(
                "nothing to resume (no last.json + optimizer.safetensors)", path=str(self.out_dir)
            )
        loaded = load_checkpoint(self.out_dir / "last")  # verifies both hashes
        if loaded.config() != self.encoder.config():
            raise TrainError("the checkpoint's encoder config differs from this run's", path=str(j))
        self.encoder.load_state_dict(loaded.state_dict())
        meta = json.loads(j.read_text())["training"]
        with safe_open(str(o), framework="pt") as fh:
            groups = json.loads(fh.metadata()["param_groups"])
            flat = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, t in flat.items():
            idx, name = key.split(".", 1)
            opt_state.setdefault(int(idx), {})[name] = t.to(self.device) if name != "step" else t
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        self.history = list(meta.get("history", []))
        self.best_recall = float(meta.get("best_val_r1", float("-inf")))
        self.best_epoch = int(meta.get("best_epoch", -1))
        self.start_epoch = int(meta["epoch"]) + 1
        return self.start_epoch

    # -- the loop -------------------------------------------------------------------------------
    def _batches(self, n: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        order = rng.permutation(n)
        bs = self.cfg.batch_size
        for i in range(0, n - bs + 1 if n >= bs else 1, bs):
            yield order[i : i + bs]

    def fit(self, resume: bool = False) -> TrainResult:
        """Run (or continue) training for ``cfg.epochs`` epochs; returns the summary."""
        if self.source is None:
            raise TrainError("no training data source")
        cfg = self.cfg
        if resume:
            self.resume()
            self.log(f"resuming at epoch {self.start_epoch + 1}/{cfg.epochs}")
        val: PairSet | None = None
        vfa = vfp = None
        if self.source.has_validation and cfg.val_samples > 0:
            val = self.source.sample(
                cfg.val_samples, np.random.default_rng([cfg.seed, 10**6]), "val"
            )
            vfa, vfp = self.features(val.anchors), self.features(val.positives)
        steps_per_pass = max(1, cfg.samples_per_epoch // cfg.batch_size)
        total_steps = steps_per_pass * cfg.passes
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            rng = np.random.default_rng([cfg.seed, epoch])
            torch.manual_seed(cfg.seed * 1000 + epoch)
            data = self.source.sample(cfg.samples_per_epoch, rng, "train")
            fa, fp = self._inputs(data.anchors), self._inputs(data.positives)
            if cfg.mining == "pool" and cfg.unfreeze:  # pool mining scores the whole epoch
                ma, mp = self.features(data.anchors), self.features(data.positives)
            else:
                ma, mp = fa, fp
            t_feat = time.perf_counter() - t0
            losses: list[float] = []
            bar = _Bar(total_steps, f"epoch {epoch + 1}/{cfg.epochs}", self.progress)
            for _ in range(cfg.passes):
                if cfg.mining == "pool":
                    neg = self.mine_negatives(ma, mp, data.negative_ok, rng)
                for b in self._batches(len(data), rng):
                    idx = torch.as_tensor(b, device=fa.device)
                    if cfg.mining == "batch":
                        ok = data.negative_ok[np.ix_(b, b)]
                        loss = self.step_batch_hard(fa[idx], fp[idx], ok)
                    else:
                        nidx = torch.as_tensor(neg[b], device=fa.device)
                        loss = self.step(fa[idx], fp[idx], fp[nidx])
                    losses.append(float(loss.total.detach()))
                    bar.advance(f"loss {np.mean(losses[-steps_per_pass:]):.4f}")
            metrics: dict[str, float] = {
                "epoch": float(epoch + 1),
                "loss": float(np.mean(losses)),
                "loss_last_pass": float(np.mean(losses[-steps_per_pass:])),
                "seconds": 0.0,
                "feature_seconds": t_feat,
            }
            if val is not None and vfa is not None and vfp is not None:
                metrics.update(self.validate(val, vfa, vfp))
            metrics["seconds"] = time.perf_counter() - t0
            bar.close(
                f"loss {metrics['loss']:.4f}"
                + (f" val R@1 {metrics['val_r1']:.3f}" if "val_r1" in metrics else "")
            )
            self.history.append(metrics)
            # selection: validation R@1 of Ω and of Φ together; a tie goes to the later epoch
            # (a small validation block saturates early). Without validation: the lowest loss.
            if "val_r1" in metrics:
                score = 0.5 * (metrics["val_r1"] + metrics["val_phi_r1"])
            else:
                score = -metrics["loss"]
            metrics["selection_score"] = score
            improved = score >= self.best_recall
            if improved:
                self.best_recall, self.best_epoch = score, epoch
            self.save("last", epoch, metrics)
            self._save_optimizer()
            if improved:
                self.save("best", epoch, metrics)
            self.log(
                f"epoch {epoch + 1}/{cfg.epochs}: loss {metrics['loss']:.4f}"
                + (
                    f", val R@1 {metrics['val_r1']:.3f} (Phi {metrics['val_phi_r1']:.3f})"
                    if "val_r1" in metrics
                    else ""
                )
                + f", {metrics['seconds']:.0f} s"
                + (" (best)" if improved else "")
            )
        return TrainResult(
            out_dir=self.out_dir,
            epochs_run=max(0, cfg.epochs - self.start_epoch),
            best_epoch=self.best_epoch + 1,
            best_val_recall1=self.best_recall,
            history=self.history,
        )


class _Bar:
    """A rich progress bar on stderr (no-op when disabled)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.p = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.p.start()
        self.task = self.p.add_task(desc, total=total, info="")

    def advance(self, info: str) -> None:
        if self.enabled:
            self.p.update(self.task, advance=1, info=info)

    def close(self, info: str) -> None:
        if self.enabled:
            self.p.update(self.task, info=info)
            self.p.stop()
