"""Where the default encoder's CPU time goes, and what the usual levers change (measurements only).

``python -m benchmarks.encoder_profile [--full] [--no-compile] [--threads 1,2]`` measures, in one
run and on one machine state:

1. the fp32 matmul peak at each torch thread count (best of repeated 1024³ products, the better
   of torch's BLAS and OpenVINO's oneDNN);
2. a per-layer-kind split of one batch-16 forward pass of ``sgmnet`` with BatchNorm folded and
   channels_last (the optimised encoder without its frozen trace, so that layers stay visible), at
   one thread: CPU time, FLOPs, bytes moved (inputs + outputs + weights, fp32) and so GFLOP/s and
   arithmetic intensity per kind (depthwise conv, 1x1 conv, dense kxk conv, activations, head
   layers), plus the time outside any leaf module (functional ops: padding, adds, the head's
   matmuls);
3. whole-encoder images/s at batch 16 at each thread count for: eager, the shipped
   ``optimize_for_inference()`` (frozen trace), the folded model untraced, ``torch.compile`` of the
   folded model, ONNX Runtime and OpenVINO when importable (the whole folded model's Ω, and the
   shipped path: ``encode`` of uint8 images with the inference trunk on that runtime, Ω's
   normalisation and CSMG in torch); each with its largest |Ω - Ω_eager|.

Every timing is taken twice: wall clock, and process CPU time divided by the thread count. On a
machine shared with other work the CPU-time figure is the one that approximates an idle run
(it omits time spent waiting for a core); the peak is taken the same two ways, so both shares of
peak compare like with like. A kind is memory-bound when its arithmetic intensity (FLOP/byte) is
below the machine balance peak / copy bandwidth. Results go to
``benchmarks/results/encoder_profile.json``; nothing in ``geoloc`` is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    """Per-kind CPU time/FLOPs/bytes of ``enc(x)`` at one thread (median of ``repeats`` passes).

    At one intra-op thread every op runs on the calling thread, so its thread CPU time is the
    op's own work, whatever else the machine runs.
    """
    import torch

    leaves = [m for m in enc.modules() if next(m.children(), None) is None]
    starts: dict[int, float] = {}
    passes: list[dict[str, list[float]]] = []
    current: dict[str, list[float]] = {}
    clock = time.thread_time

    def pre(module: Any, _inp: Any) -> None:
        starts[id(module)] = clock()

    def post(module: Any, inp: Any, out: Any) -> None:
        dt = clock() - starts.pop(id(module))
        row = current.setdefault(_kind(module), [0.0, 0.0, 0.0, 0.0])
        row[0] += dt
        row[1] += _flops(module, inp, out)
        row[2] += _bytes(module, inp, out)
        row[3] += 1

    handles = [m.register_forward_pre_hook(pre) for m in leaves]
    handles += [m.register_forward_hook(post) for m in leaves]
    totals: list[float] = []
    try:
        with threads(1), torch.inference_mode():
            for i in range(repeats + 2):
                current = {}
                t0 = clock()
                enc(x)
                if i >= 2:  # two warm-up passes
                    totals.append(clock() - t0)
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
            "cpu_ms": round(1e3 * t, 2),
            "share_of_forward": round(t / total, 4),
            "calls": int(calls),
            "gflop": round(fl / 1e9, 3),
            "gflop_s": round(fl / 1e9 / t, 1) if t > 0 else 0.0,
            "flop_per_byte": round(fl / by, 2) if by > 0 else 0.0,
        }
    inside = sum(v["cpu_ms"] for v in kinds.values()) / 1e3
    return {
        "threads": 1,
        "forward_cpu_ms": round(1e3 * total, 2),
        "outside_leaf_modules_cpu_ms": round(1e3 * max(total - inside, 0.0), 2),
        "outside_leaf_modules_share": round(max(total - inside, 0.0) / total, 4),
        "kinds": kinds,
    }


@contextmanager
def threads(n: int) -> Iterator[None]:
    """torch intra-op threads set to ``n`` for the block."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timed(fn: Callable[[], Any], n_threads: int, seconds: float) -> tuple[float, float]:
    """(wall, CPU / threads) median seconds of one call of ``fn`` over about ``seconds``."""
    for _ in range(3):  # a frozen trace / compiled graph specialises on its first calls
        fn()
    wall: list[float] = []
    cpu: list[float] = []
    end = time.perf_counter() + seconds
    while len(wall) < 3 or time.perf_counter() < end:
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append((time.process_time() - c) / n_threads)
    return statistics.median(wall), statistics.median(cpu)


def _best_gflops(
    fn: Callable[[], Any], flop: float, n_threads: int, seconds: float
) -> dict[str, float]:
    """Best GFLOP/s of ``fn`` (``flop`` per call) over ``seconds``, by wall clock and CPU time."""
    best_wall = best_cpu = 0.0
    fn()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t, p = time.perf_counter(), time.process_time()
        fn()
        dw, dc = time.perf_counter() - t, (time.process_time() - p) / n_threads
        best_wall = max(best_wall, flop / dw / 1e9)
        if dc > 0:
            best_cpu = max(best_cpu, flop / dc / 1e9)
    return {"wall_gflops": round(best_wall, 2), "cpu_gflops": round(best_cpu, 2)}


def _openvino_matmul(n_threads: int, n: int) -> Callable[[], Any] | None:
    """One ``n×n @ n×n`` fp32 product on OpenVINO's CPU plugin (oneDNN), or None without it."""
    try:
        import numpy as np
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32)
    b = ops.constant(rng.standard_normal((n, n), dtype=np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a])
    config = {
        "INFERENCE_NUM_THREADS": n_threads,
        "INFERENCE_PRECISION_HINT": "f32",
        "ENABLE_CPU_PINNING": False,
        "PERFORMANCE_HINT": "LATENCY",
    }
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    x = rng.standard_normal((n, n), dtype=np.float32)
    return lambda: request.infer({0: x})


def matmul_peak(n_threads: int, seconds: float, n: int = 1024) -> dict[str, Any]:
    """Best fp32 GFLOP/s of ``n×n @ n×n`` at ``n_threads``, by wall clock and by CPU time: the
    better of torch's BLAS and OpenVINO's oneDNN (when installed), each also reported. One
    library is not the machine's peak: torch's BLAS (MKL) may not use every vector unit of a
    CPU it was not tuned for (AMD's AVX-512)."""
    import torch

    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    with threads(n_threads):
        by: dict[str, dict[str, float]] = {
            "torch": _best_gflops(lambda: torch.mm(a, b, out=c), 2 * n**3, n_threads, seconds)
        }
    ov_mm = _openvino_matmul(n_threads, n)
    if ov_mm is not None:
        by["openvino"] = _best_gflops(ov_mm, 2 * n**3, n_threads, seconds)
    return {
        "wall_gflops": max(v["wall_gflops"] for v in by.values()),
        "cpu_gflops": max(v["cpu_gflops"] for v in by.values()),
        **by,
    }


def _omega(out: Any) -> Any:
    """The global descriptor Ω of an encoder output, an ONNX Runtime array or a tensor."""
    import numpy as np
    import torch

    if isinstance(out, np.ndarray):
        return torch.from_numpy(out)
    return out.omega if hasattr(out, "omega") else out


def variants(
    x: Any, thread_counts: list[int], seconds: float, compile_: bool, images: Any = None
) -> list[dict[str, Any]]:
    """images/s of each way of running the encoder at each thread count, with max |dΩ|: from
    the normalised batch ``x``, except the shipped runtime paths, which encode the uint8
    ``images`` ``x`` was made from (``encode``: their input normalisation is in the graph)."""
    import torch

    from geoloc.models import build_encoder

    eager = build_encoder(ENCODER).eval()
    with torch.inference_mode():
        ref = _omega(eager(x)).float()
    xc = x.contiguous(memory_format=torch.channels_last)
    opt = build_encoder(ENCODER).eval().optimize_for_inference()
    folded = build_encoder(ENCODER).eval().optimize_for_inference(jit=False)
    runners: dict[str, Callable[[], Any] | str] = {
        "eager": lambda: eager(x),
        "optimize_for_inference (frozen trace)": lambda: opt(xc),
        "folded + channels_last, no trace": lambda: folded(xc),
    }
    extra: dict[str, dict[str, Any]] = {}
    if compile_:
        name = "torch.compile (inductor) of the folded model"
        try:
            t0 = time.perf_counter()
            compiled = torch.compile(folded)
            with torch.inference_mode():
                compiled(xc)
            runners[name] = lambda: compiled(xc)
            extra[name] = {"compile_s": round(time.perf_counter() - t0, 1)}
        except Exception as exc:  # noqa: BLE001 - a lever that does not run here is a result
            runners[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    ort_model = _onnx_export(folded, xc)
    hybrid = _hybrid("onnx")
    hybrid_ov = _hybrid("openvino")
    rows: list[dict[str, Any]] = []
    for n in thread_counts:
        local = dict(runners)
        local["onnxruntime (CPU EP) of the folded model"] = _ort_runner(ort_model, xc, n)
        local["openvino (CPU, latency hint, f32) of the folded model"] = _ov_runner(
            ort_model, xc, n
        )
        local["geoloc runtime onnx (trunk on ONNX Runtime, Ω norm + CSMG torch)"] = hybrid(
            n, images
        )
        local["geoloc runtime openvino (trunk on OpenVINO, Ω norm + CSMG torch)"] = hybrid_ov(
            n, images
        )
        local[f"geoloc runtime openvino, the batch of {BATCH} in one call"] = hybrid_ov(
            n, images, BATCH
        )
        for name, fn in local.items():
            row: dict[str, Any] = {"variant": name, "threads": n, **extra.get(name, {})}
            if isinstance(fn, str):
                row["error"] = fn
            else:
                with threads(n), torch.inference_mode():
                    row["max_abs_diff"] = float((_omega(fn()).float() - ref).abs().max())
                    wall, cpu = timed(fn, n, seconds)
                row["img_s_wall"] = round(BATCH / wall, 2)
                row["img_s_cpu"] = round(BATCH / cpu, 2)
                print(
                    f"   {n} thread(s) {name}: {BATCH / wall:.1f} img/s wall, "
                    f"{BATCH / cpu:.1f} by CPU time",
                    file=sys.stderr,
                    flush=True,
                )
            rows.append(row)
    return rows


def _hybrid(runtime: str) -> Callable[..., Callable[[], Any] | str]:
    """Per thread count, ``encode`` of uint8 images by the shipped encoder after
    ``use_runtime(enc, runtime)``: the path ``geoloc ingest`` takes (one batch at a time; the
    session's threads are fixed when it is made; its graph runs ``sub_batch`` images per call,
    :data:`geoloc.models.runtime.SUB_BATCH` unless given)."""
    from geoloc.models.runtime import onnx_available, openvino_available

    if not (openvino_available() if runtime == "openvino" else onnx_available()):
        return lambda n, xc, sub_batch=None: f"{runtime} is not installed"
    import tempfile

    from geoloc.models import build_encoder
    from geoloc.models.runtime import use_runtime

    cache = Path(tempfile.mkdtemp(prefix="geoloc-onnx-"))

    def make(n: int, images: Any, sub_batch: int | None = None) -> Callable[[], Any] | str:
        with threads(n):
            enc = build_encoder(ENCODER).eval().optimize_for_inference()
            if use_runtime(enc, runtime, cache_dir=cache) != runtime:
                return "the exported trunk did not match torch"
        if sub_batch is not None:
            enc.__dict__["_runtime_trunk"].sub_batch = sub_batch
        return lambda: enc.encode(images)

    return make


def _onnx_export(folded: Any, xc: Any) -> bytes | str:
    """The folded encoder's Ω as an ONNX model (bytes), or why it could not be made."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed"
    import tempfile

    import torch

    class OmegaOnly(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return _omega(self.inner(t))

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "encoder.onnx"
        try:
            with warnings.catch_warnings():  # tracer warnings: the input shape is fixed by design
                warnings.simplefilter("ignore")
                torch.onnx.export(OmegaOnly(folded), (xc,), str(path), dynamo=False)
        except Exception as exc:  # noqa: BLE001 - an exporter gap is a result too
            return f"{type(exc).__name__}: {str(exc)[:200]}"
        return path.read_bytes()


def _ort_runner(model: bytes | str, xc: Any, n_threads: int) -> Callable[[], Any] | str:
    """A call of an ONNX Runtime session on ``xc`` with ``n_threads`` intra-op threads."""
    if isinstance(model, str):
        return model
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n_threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(xc.numpy())}
    return lambda: sess.run(None, feed)[0]


def _ov_runner(model: bytes | str, xc: Any, n_threads: int) -> Callable[[], Any] | str:
    """A call of an OpenVINO CPU compiled model (as geoloc configures it) on ``xc``."""
    if isinstance(model, str):
        return model
    try:
        import openvino as ov
    except ImportError:
        return "openvino is not installed"
    import tempfile

    import numpy as np

    core = ov.Core()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "encoder.onnx"
        path.write_bytes(model)
        graph = core.read_model(str(path))
    compiled = core.compile_model(
        graph,
        "CPU",
        {
            "INFERENCE_NUM_THREADS": n_threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        },
    )
    request = compiled.create_infer_request()
    arr = np.ascontiguousarray(xc.numpy())
    return lambda: request.infer({0: arr})[0]


def run(
    full: bool = False, compile_: bool = True, thread_counts: tuple[int, ...] = (1, 2)
) -> dict[str, Any]:
    """Measure; save ``results/encoder_profile.json``; return the result."""
    import numpy as np
    import torch

    from benchmarks import roofline
    from geoloc.models import build_encoder

    load_before = os.getloadavg()[0]
    seconds = 4.0 if full else 1.5
    peaks = {n: matmul_peak(n, seconds) for n in thread_counts}
    with threads(1):
        copy = roofline.copy_gbs(256, seconds)
    enc = build_encoder(ENCODER).eval()
    gflops = enc.gflops()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH, 3, 224, 224), dtype=np.uint8)
    x = enc.preprocess(images)
    folded = build_encoder(ENCODER).eval().optimize_for_inference(jit=False)
    xc = x.contiguous(memory_format=torch.channels_last)
    print("   layer split (folded, channels_last, 1 thread)", file=sys.stderr, flush=True)
    split = layer_split(folded, xc, repeats=7 if full else 3)
    print("   variants", file=sys.stderr, flush=True)
    rows = variants(x, list(thread_counts), seconds, compile_, images)
    for r in rows:
        if "img_s_wall" in r:
            p = peaks[r["threads"]]
            r["peak_share_wall"] = round(r["img_s_wall"] * gflops / p["wall_gflops"], 4)
            r["peak_share_cpu"] = round(r["img_s_cpu"] * gflops / p["cpu_gflops"], 4)
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "cores": os.cpu_count(),
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "matmul_peak_by_threads": {str(n): v for n, v in peaks.items()},
        "copy_gbs_1thread": round(copy, 2),
        "machine_balance_1thread_flop_per_byte": round(
            peaks[thread_counts[0]]["cpu_gflops"] / copy, 2
        ),
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
    peaks = result["matmul_peak_by_threads"]
    lines = [
        f"{result['encoder']} batch {result['batch']}, {result['gflops_per_image']} GFLOP/image; "
        f"load {result['load_average_1min']}",
        "matmul peak GFLOP/s (wall / CPU; the best of "
        + ", ".join(k for k, w in next(iter(peaks.values())).items() if isinstance(w, dict))
        + "): "
        + ", ".join(
            f"{n} thr {v['wall_gflops']} / {v['cpu_gflops']}"
            + "".join(
                f" ({k} {w['wall_gflops']} / {w['cpu_gflops']})"
                for k, w in v.items()
                if isinstance(w, dict)
            )
            for n, v in peaks.items()
        )
        + f"; copy {result['copy_gbs_1thread']} GB/s at 1 thread; balance "
        f"{result['machine_balance_1thread_flop_per_byte']} FLOP/B",
        f"layer split, 1 thread: forward {split['forward_cpu_ms']} ms CPU",
        f"{'kind':<22}{'ms':>9}{'share':>8}{'calls':>7}{'GFLOP':>8}{'GFLOP/s':>9}{'FLOP/B':>8}",
    ]
    for kind, v in sorted(split["kinds"].items(), key=lambda kv: -kv[1]["cpu_ms"]):
        lines.append(
            f"{kind:<22}{v['cpu_ms']:>9.1f}{100 * v['share_of_forward']:>7.1f}%{v['calls']:>7}"
            f"{v['gflop']:>8.2f}{v['gflop_s']:>9.1f}{v['flop_per_byte']:>8.1f}"
        )
    lines.append(
        f"{'outside leaf modules':<22}{split['outside_leaf_modules_cpu_ms']:>9.1f}"
        f"{100 * split['outside_leaf_modules_share']:>7.1f}%"
    )
    lines.append("")
    lines.append(
        f"{'variant':<46}{'thr':>4}{'img/s wall':>11}{'by CPU':>8}{'peak% CPU':>10}  max|dΩ|"
    )
    for r in result["variants"]:
        if "img_s_wall" in r:
            lines.append(
                f"{r['variant']:<46}{r['threads']:>4}{r['img_s_wall']:>11.1f}{r['img_s_cpu']:>8.1f}"
                f"{100 * r['peak_share_cpu']:>9.1f}%  {r['max_abs_diff']:.1e}"
            )
        else:
            lines.append(f"{r['variant']:<46}{r['threads']:>4}  n/a: {r['error']}")
    return "\n".join(lines)


def main() -> None:
    """Command-line entry: run and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="longer timings (4 s per measurement)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--threads", default="1,2", help="torch thread counts to measure (1,2)")
    args = ap.parse_args()
    counts = tuple(int(t) for t in args.threads.split(","))
    print(_table(run(full=args.full, compile_=not args.no_compile, thread_counts=counts)))


if __name__ == "__main__":
    main()
