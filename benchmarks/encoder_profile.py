"""Where the default encoder's CPU time goes, and what the usual levers change (measurements only).

``python -m benchmarks.encoder_profile [--full] [--no-compile]`` measures, in one run and on one
machine state:

1. the fp32 matmul peak and copy bandwidth (``benchmarks.roofline``);
2. a per-layer-kind split of one batch-16 forward pass of ``sgmnet`` with BatchNorm folded and
   channels_last (the optimised encoder without its frozen trace, so that layers stay visible):
   wall time, FLOPs, bytes moved (inputs + outputs + weights, fp32) and so GFLOP/s and arithmetic
   intensity per kind (depthwise conv, 1x1 conv, dense kxk conv, activations, pooling, head
   layers), plus the time outside any leaf module (functional ops: the head's matmuls, adds);
3. whole-encoder images/s at batch 16 for: eager, the shipped ``optimize_for_inference()`` (frozen
   trace), that at 1 and 2 intra-op threads, ``torch.compile`` of the folded model, and ONNX
   Runtime when it is importable; each with its largest output difference from eager.

A kind is memory-bound when its arithmetic intensity (FLOP/byte) is below the machine balance
peak_gflops / copy_gbs: it cannot reach the matmul peak whatever the schedule. Results go to
``benchmarks/results/encoder_profile.json``; the module changes nothing in ``geoloc``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 16
ENCODER = "sgmnet"


def _kind(module: Any) -> str:
    """The layer kind a leaf module is accounted under."""
    from torch import nn

    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "conv depthwise"
        if module.kernel_size == (1, 1):
            return "conv 1x1"
        return "conv dense kxk"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Sigmoid, nn.Hardswish, nn.GELU)):
        return "activation"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d)):
        return "pooling"
    if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
        return "normalisation"
    return f"other ({type(module).__name__})"


def _flops(module: Any, inp: Any, out: Any) -> float:
    """2 x multiply-adds of one call of a conv or linear layer (0 for the rest)."""
    from torch import nn

    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_out = (module.in_channels // module.groups) * kh * kw
        return 2.0 * out.numel() * per_out
    if isinstance(module, nn.Linear):
        return 2.0 * out.numel() * module.in_features
    return 0.0


def _bytes(module: Any, inp: tuple[Any, ...], out: Any) -> float:
    """fp32 bytes a call must at least touch: its tensor inputs, outputs and parameters."""
    import torch

    n = sum(t.numel() for t in inp if isinstance(t, torch.Tensor))
    n += out.numel() if isinstance(out, torch.Tensor) else 0
    n += sum(p.numel() for p in module.parameters(recurse=False))
    return 4.0 * n


def layer_split(enc: Any, x: Any, repeats: int) -> dict[str, Any]:
    """Per-kind time/FLOPs/bytes of ``enc(x)`` (median over ``repeats`` passes) via hooks."""
    import torch

    leaves = [m for m in enc.modules() if next(m.children(), None) is None]
    starts: dict[int, float] = {}
    passes: list[dict[str, list[float]]] = []
    current: dict[str, list[float]] = {}

    def pre(module: Any, _inp: Any) -> None:
        starts[id(module)] = time.perf_counter()

    def post(module: Any, inp: Any, out: Any) -> None:
        dt = time.perf_counter() - starts.pop(id(module))
        row = current.setdefault(_kind(module), [0.0, 0.0, 0.0, 0.0])
        row[0] += dt
        row[1] += _flops(module, inp, out)
        row[2] += _bytes(module, inp, out)
        row[3] += 1

    handles = [m.register_forward_pre_hook(pre) for m in leaves]
    handles += [m.register_forward_hook(post) for m in leaves]
    totals: list[float] = []
    try:
        with torch.inference_mode():
            for i in range(repeats + 2):
                current = {}
                t0 = time.perf_counter()
                enc(x)
                if i >= 2:  # two warm-up passes
                    totals.append(time.perf_counter() - t0)
                    passes.append(current)
    finally:
        for h in handles:
            h.remove()
    total = statistics.median(totals)
    kinds: dict[str, dict[str, float]] = {}
    for kind in sorted({k for p in passes for k in p}):
        t = statistics.median(p.get(kind, [0.0])[0] for p in passes)
        _, fl, by, calls = passes[0].get(kind, [0.0, 0.0, 0.0, 0.0])
        kinds[kind] = {
            "ms": round(1e3 * t, 2),
            "share_of_forward": round(t / total, 4),
            "calls": int(calls),
            "gflop": round(fl / 1e9, 3),
            "gflop_s": round(fl / 1e9 / t, 1) if t > 0 else 0.0,
            "flop_per_byte": round(fl / by, 2) if by > 0 else 0.0,
        }
    inside = sum(v["ms"] for v in kinds.values()) / 1e3
    return {
        "forward_ms": round(1e3 * total, 2),
        "outside_leaf_modules_ms": round(1e3 * max(total - inside, 0.0), 2),
        "outside_leaf_modules_share": round(max(total - inside, 0.0) / total, 4),
        "kinds": kinds,
    }


def _median_img_s(fn: Callable[[], Any], seconds: float) -> float:
    """images/s of ``fn`` (one batch of ``BATCH``) as the median over ``seconds`` of calls."""
    for _ in range(3):  # a frozen trace / compiled graph specialises on its first calls
        fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return BATCH / statistics.median(times)


def _omega(out: Any) -> Any:
    """The global descriptor of an encoder output (the field every consumer compares)."""
    return out.omega if hasattr(out, "omega") else out[0]


def variants(x: Any, seconds: float, compile_: bool) -> list[dict[str, Any]]:
    """images/s of each way of running the encoder, with max |Ω - Ω_eager|."""
    import torch

    from geoloc.models import build_encoder

    rows: list[dict[str, Any]] = []
    eager = build_encoder(ENCODER).eval()
    with torch.inference_mode():
        ref = _omega(eager(x)).float()

    def add(name: str, fn: Callable[[], Any], **extra: Any) -> None:
        with torch.inference_mode():
            diff = float((_omega(fn()).float() - ref).abs().max())
            ips = _median_img_s(fn, seconds)
        rows.append({"variant": name, "img_s": round(ips, 2), "max_abs_diff": diff, **extra})
        print(f"   {name}: {ips:.1f} img/s (max diff {diff:.1e})", file=sys.stderr, flush=True)

    add("eager", lambda: eager(x))
    opt = build_encoder(ENCODER).eval().optimize_for_inference()
    xc = x.contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    for n in sorted({1, 2, threads}):
        torch.set_num_threads(n)
        try:
            add(f"optimize_for_inference, {n} thread(s)", lambda: opt(xc), threads=n)
        finally:
            torch.set_num_threads(threads)
    folded = build_encoder(ENCODER).eval().optimize_for_inference(jit=False)
    add("folded + channels_last, no trace", lambda: folded(xc))
    if compile_:
        try:
            t0 = time.perf_counter()
            compiled = torch.compile(folded)
            with torch.inference_mode():
                compiled(xc)
            compile_s = time.perf_counter() - t0
            add("torch.compile (inductor)", lambda: compiled(xc), compile_s=round(compile_s, 1))
        except Exception as exc:  # noqa: BLE001 - a lever that does not run here is a result
            rows.append({"variant": "torch.compile (inductor)", "error": str(exc)[:200]})
    rows.append(_onnxruntime(folded, xc, ref, seconds))
    return rows


def _onnxruntime(folded: Any, xc: Any, ref: Any, seconds: float) -> dict[str, Any]:
    """ONNX Runtime on the exported folded encoder, if ``onnx`` and ``onnxruntime`` import."""
    name = "onnxruntime (CPU EP)"
    try:
        import onnxruntime as ort
    except ImportError:
        return {"variant": name, "error": "onnxruntime is not installed"}
    import tempfile

    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "enc.onnx")

        class OmegaOnly(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, t: torch.Tensor) -> torch.Tensor:
                return _omega(self.inner(t))

        try:
            with warnings.catch_warnings():  # tracer warnings: the input shape is fixed by design
                warnings.simplefilter("ignore")
                torch.onnx.export(OmegaOnly(folded), (xc,), path, dynamo=False)
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - an exporter gap is a result too
            return {"variant": name, "error": str(exc)[:200]}
        feed = {sess.get_inputs()[0].name: xc.numpy()}
        out = sess.run(None, feed)[0]
        diff = float(np.abs(out - ref.numpy()).max())
        ips = _median_img_s(lambda: sess.run(None, feed), seconds)
    return {"variant": name, "img_s": round(ips, 2), "max_abs_diff": diff}


def run(full: bool = False, compile_: bool = True) -> dict[str, Any]:
    """Measure; save ``results/encoder_profile.json``; return the result."""
    import numpy as np
    import torch

    from benchmarks import roofline
    from geoloc.models import build_encoder

    load_before = os.getloadavg()[0]
    peak = roofline.measure(full)
    seconds = 4.0 if full else 1.5
    enc = build_encoder(ENCODER).eval()
    gflops = enc.gflops()
    rng = np.random.default_rng(0)
    x = enc.preprocess(rng.integers(0, 256, (BATCH, 3, 224, 224), dtype=np.uint8))
    folded = build_encoder(ENCODER).eval().optimize_for_inference(jit=False)
    xc = x.contiguous(memory_format=torch.channels_last)
    print("   layer split (folded, channels_last, hooks)", file=sys.stderr, flush=True)
    split = layer_split(folded, xc, repeats=7 if full else 3)
    print("   variants", file=sys.stderr, flush=True)
    rows = variants(x, seconds, compile_)
    for r in rows:
        if "img_s" in r:
            r["gflop_s"] = round(r["img_s"] * gflops, 1)
            r["peak_share"] = round(r["img_s"] * gflops / peak["fp32_matmul_gflops"], 4)
    balance = peak["fp32_matmul_gflops"] / peak["copy_gbs"]
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "peak": peak,
        "machine_balance_flop_per_byte": round(balance, 2),
        "encoder": ENCODER,
        "batch": BATCH,
        "gflops_per_image": round(gflops, 3),
        "layer_split": split,
        "variants": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "encoder_profile.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _table(result: dict[str, Any]) -> str:
    split = result["layer_split"]
    lines = [
        f"{result['encoder']} batch {result['batch']}: forward {split['forward_ms']} ms "
        f"(folded, channels_last, eager); machine balance "
        f"{result['machine_balance_flop_per_byte']} FLOP/B "
        f"(peak {result['peak']['fp32_matmul_gflops']} GFLOP/s"
        f" / {result['peak']['copy_gbs']} GB/s)",
        f"{'kind':<22}{'ms':>9}{'share':>8}{'calls':>7}{'GFLOP':>8}{'GFLOP/s':>9}{'FLOP/B':>8}",
    ]
    for kind, v in sorted(split["kinds"].items(), key=lambda kv: -kv[1]["ms"]):
        lines.append(
            f"{kind:<22}{v['ms']:>9.1f}{100 * v['share_of_forward']:>7.1f}%{v['calls']:>7}"
            f"{v['gflop']:>8.2f}{v['gflop_s']:>9.1f}{v['flop_per_byte']:>8.1f}"
        )
    lines.append(
        f"{'outside leaf modules':<22}{split['outside_leaf_modules_ms']:>9.1f}"
        f"{100 * split['outside_leaf_modules_share']:>7.1f}%"
    )
    lines.append("")
    for r in result["variants"]:
        if "img_s" in r:
            lines.append(
                f"{r['variant']:<40}{r['img_s']:>8.1f} img/s"
                f"  {100 * r['peak_share']:>5.1f}% of peak  max|dΩ| {r['max_abs_diff']:.1e}"
            )
        else:
            lines.append(f"{r['variant']:<40} n/a: {r['error']}")
    return "\n".join(lines)


def main() -> None:
    """Command-line entry: run and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="longer timings (4 s per variant)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = ap.parse_args()
    print(_table(run(full=args.full, compile_=not args.no_compile)))


if __name__ == "__main__":
    main()
