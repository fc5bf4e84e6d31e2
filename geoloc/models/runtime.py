"""Inference runtimes for an encoder's backbone: torch (always there), OpenVINO or ONNX Runtime
(optional).

:func:`use_runtime` runs the :meth:`~geoloc.models.base.Encoder.inference_trunk` of an encoder
already optimised for inference (:meth:`~geoloc.models.base.Encoder.optimize_for_inference`) on
an OpenVINO compiled model or an ONNX Runtime session: uint8 images in, the input normalisation
and the folded backbone (for SGM-Net also the reduction and the non-local block) in one graph,
so no float copy of the images is made in torch. Both runtimes read one ONNX graph, exported by
torch on first use, on this machine (nothing is downloaded), into a cache file named by the
weights' SHA-256, the input size and the torch and onnx versions, so later runs load it
directly. The rest (for SGM-Net Ω's normalisation and CSMG, :meth:`~geoloc.models.base.Encoder.
finish_trunk`) stays in torch, and so do the weights hash and every output shape; outputs match
torch within :data:`ONNX_TOLERANCE` (checked on a probe batch whenever a session is made; a
mismatch keeps torch). The cache is :func:`default_cache_dir`.

``runtime``: ``torch`` (the frozen trace), ``openvino`` / ``onnx`` (an error when not installed),
``auto`` (OpenVINO when importable, else ONNX Runtime, else torch: OpenVINO's CPU kernels run
the depthwise convolutions of the default backbone faster, see ``benchmarks/encoder_profile.py``).
``GEOLOC_ENCODER_RUNTIME`` sets the default of :func:`default_runtime`; :func:`runtime_of` says
which one an encoder runs on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoloc.errors import ConfigError

log = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("auto", "torch", "onnx", "openvino")
#: Largest |Δ| allowed between an exported and the torch backbone on the export probe.
ONNX_TOLERANCE = 1e-4
_ENV = "GEOLOC_ENCODER_RUNTIME"
#: Where an encoder keeps its exported backbone (a plain attribute: the state dict stays the same).
_ATTR = "_runtime_trunk"
_INSTALL = {"onnx": "geoloc[onnx]", "openvino": "geoloc[openvino]"}
#: Images per call of an exported graph: a batch is run that many images at a time. A few
#: images' activations stay in a core's own cache between layers, where a batch of 16 streams
#: every layer's activations through memory, and the depthwise convolutions of the default
#: backbone are bound by memory traffic. Not one image per call: each call gives up and
#: re-takes the GIL, which an ingest's reader and writer threads hold in between
#: (``benchmarks/encoder_profile.py`` and ``benchmarks/ingest.py`` measure both).
SUB_BATCH = 4


def onnx_available() -> bool:
    """True when ``onnxruntime`` and ``onnx`` (which torch's exporter needs) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def openvino_available() -> bool:
    """True when ``openvino`` and ``onnx`` (which torch's exporter needs) can be imported."""
    try:
        import onnx  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _available(runtime: str) -> bool:
    return openvino_available() if runtime == "openvino" else onnx_available()


def runtime_of(encoder: Any) -> str:
    """The runtime ``encoder``'s backbone runs on now: ``openvino``, ``onnx`` or ``torch``."""
    session = getattr(encoder, "__dict__", {}).get(_ATTR)
    return "torch" if session is None else str(session.runtime)


@contextlib.contextmanager
def throughput(encoder: Any, threads: int | None = None) -> Iterator[int]:
    """While encoding many batches (ingest, rebuild): yields how many ``encoder.encode`` calls
    to run at once, from as many threads.

    A backbone on its own runtime (OpenVINO, ONNX Runtime) runs with torch's intra-op pool on
    one thread: torch then only does the light post-processing, and an idle torch pool
    thread spinning for work takes a core from the backbone and the ingest's reader and writer.
    An OpenVINO backbone also switches to ``threads`` (default ``torch.get_num_threads()``)
    streams of one thread each: independent batches on separate cores keep them busier than
    one batch split across them (no barrier per layer), and the head then runs on every core
    too. Φ and the node arrays are bit-identical either way (Ω can differ in its last bits).
    A torch backbone keeps torch's threads and yields 1. Restores both on exit.
    """
    if runtime_of(encoder) == "torch":
        yield 1
        return
    before = torch.get_num_threads()
    session = encoder.__dict__[_ATTR]
    streams = max(1, int(threads or before)) if isinstance(session, OpenVinoBackbone) else 1
    torch.set_num_threads(1)
    try:
        if streams > 1:
            session.set_streams(streams)
        yield streams
    finally:
        if streams > 1:
            session.set_streams(1)
        torch.set_num_threads(before)


_BLAS_LOCK = threading.Lock()
_blas_limited = False


def limit_blas_threads() -> None:
    """Put numpy's BLAS (OpenBLAS, and any other ``threadpoolctl`` finds) on one thread for
    the rest of the process; later calls do nothing.

    Localization interleaves small matrix products (a few milliseconds each) with inference
    on OpenVINO / torch pools: after each product OpenBLAS's pool threads spin waiting for
    more work and take the cores the next inference needs, and one thread loses nothing on
    products that small. OpenBLAS has one pool for the whole process, so this cannot be
    scoped to a call: a localizer sets it when it opens. ``threadpoolctl`` is left without a
    controlling thread, so a caller can still change the limit from any thread afterwards.
    """
    global _blas_limited
    with _BLAS_LOCK:
        if _blas_limited:
            return
        from threadpoolctl import ThreadpoolController

        ctl = ThreadpoolController()
        ctl.limit(limits=1, user_api="blas")
        for lib in ctl.select(user_api="blas").lib_controllers:
            clear = getattr(type(lib), "clear_controlling_thread", None)
            if clear is not None:
                clear()
        _blas_limited = True


def default_runtime() -> str:
    """The runtime named by ``GEOLOC_ENCODER_RUNTIME`` (``auto`` when unset)."""
    return check_runtime(os.environ.get(_ENV, "auto") or "auto")


def check_runtime(runtime: str) -> str:
    """``runtime`` lower-cased, or a ConfigError naming the valid ones."""
    name = runtime.strip().lower()
    if name not in RUNTIMES:
        raise ConfigError(f"encoder runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    return name


def default_cache_dir() -> Path:
    """Where exported backbones are cached: ``$GEOLOC_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/geoloc/onnx`` (``~/.cache/geoloc/onnx``). Shared by every GEOLOC_HOME of
    the user: a file is named by the weights hash and the torch/onnxruntime versions."""
    env = os.environ.get("GEOLOC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "geoloc" / "onnx"


def _array(x: torch.Tensor) -> np.ndarray:
    """The input of an exported graph: uint8 images as they are (the trunk's input), anything
    else as contiguous float32."""
    arr = x.detach().cpu().numpy()
    return np.ascontiguousarray(arr, dtype=np.uint8 if arr.dtype == np.uint8 else np.float32)


def _in_sub_batches(
    run: Callable[[np.ndarray], Sequence[np.ndarray]], arr: np.ndarray, sub_batch: int
) -> list[torch.Tensor]:
    """Every output of ``run`` over ``arr``, called on ``sub_batch`` images at a time and joined
    along the batch axis (each part copied: a runtime may reuse its output buffers)."""
    step = max(1, int(sub_batch))
    parts = [
        [np.array(o, copy=True) for o in run(arr[start : start + step])]
        for start in range(0, max(len(arr), 1), step)
    ]
    if len(parts) == 1:
        return [torch.from_numpy(o) for o in parts[0]]
    return [torch.from_numpy(np.concatenate(outs)) for outs in zip(*parts, strict=True)]


class OnnxBackbone:
    """A callable ``(B, 3, S, S) float tensor -> feature tensor`` running an ONNX Runtime session.

    Intra-op threads follow ``torch.get_num_threads()`` at construction (the caller's thread
    budget); spinning is off so the session's idle threads leave the cores to the store's writer.
    """

    runtime = "onnx"

    def __init__(self, model_path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = model_path
        self.session = ort.InferenceSession(
            str(model_path), opts, providers=["CPUExecutionProvider"]
        )
        self._input = self.session.get_inputs()[0].name
        self.sub_batch = SUB_BATCH

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every output of the graph for input ``x``, run :attr:`sub_batch` images at a time."""
        return _in_sub_batches(
            lambda a: self.session.run(None, {self._input: a}), _array(x), self.sub_batch
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)[0]


class OpenVinoBackbone:
    """The same callable on an OpenVINO CPU compiled model of the exported graph (fp32, the
    latency hint, ``torch.get_num_threads()`` inference threads at construction).

    Calls are safe from several threads: each takes an infer request from a pool (one request
    in latency mode, so calls wait for each other; ``streams`` requests after
    :meth:`set_streams`, one per stream, so that many calls run at once).
    """

    runtime = "openvino"

    def __init__(self, model_path: Path, threads: int | None = None) -> None:
        import openvino as ov

        self.path = model_path
        self._core = ov.Core()
        self.compiled = self._compile(int(threads or torch.get_num_threads()), 1)
        self._latency = self.compiled
        self._by_streams: dict[int, Any] = {}
        self.streams = 1
        self.sub_batch = SUB_BATCH
        self._pool = self._requests(self.compiled, 1)

    def _compile(self, threads: int, streams: int) -> Any:
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            # never bf16/fp16 on CPUs that have them: outputs must match torch within 1e-4
            "INFERENCE_PRECISION_HINT": "f32",
            # OpenVINO pins its threads to the first cores by default: two processes on one
            # machine (Ray actors, an ingest beside a localizer) then share one core, and a
            # pinned thread cannot leave a core the reader or writer thread is using
            "ENABLE_CPU_PINNING": False,
        }
        if streams > 1:
            config["NUM_STREAMS"] = streams
        else:
            config["PERFORMANCE_HINT"] = "LATENCY"
        return self._core.compile_model(str(self.path), "CPU", config)

    @staticmethod
    def _requests(compiled: Any, n: int) -> queue.SimpleQueue[Any]:
        pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(n):
            pool.put(compiled.create_infer_request())
        return pool

    def set_streams(self, streams: int) -> None:
        """Run ``streams`` calls at once, each on one thread (a model compiled once per count,
        kept); 1 goes back to the latency model. Call it while no call is running."""
        streams = max(1, int(streams))
        if streams == self.streams:
            return
        if streams == 1:
            self.compiled = self._latency
        else:
            if streams not in self._by_streams:
                self._by_streams[streams] = self._compile(streams, streams)
            self.compiled = self._by_streams[streams]
        self._pool = self._requests(self.compiled, streams)
        self.streams = streams

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every output of the graph for input ``x``, run :attr:`sub_batch` images at a time
        (copies: the request reuses its buffers)."""
        arr = _array(x)
        pool = self._pool
        request = pool.get()
        try:

            def run(a: np.ndarray) -> list[np.ndarray]:
                res = request.infer({0: a})
                return [res[i] for i in range(len(res))]

            return _in_sub_batches(run, arr, self.sub_batch)
        finally:
            pool.put(request)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)[0]


Session = OnnxBackbone | OpenVinoBackbone


_SESSIONS: dict[str, type[Session]] = {
    "onnx": OnnxBackbone,
    "openvino": OpenVinoBackbone,
}


def _cache_path(encoder: Any, cache_dir: Path) -> Path:
    tag = graph_tag()
    size = int(encoder.input_size)
    return cache_dir / f"{encoder.weights_sha256[:32]}-{size}px-trunk-{tag}.onnx"


def use_runtime(encoder: Any, runtime: str = "auto", cache_dir: Path | None = None) -> str:
    """Run ``encoder``'s inference trunk on ``runtime``; return the runtime now in use.

    Only an :class:`~geoloc.models.base.Encoder` already optimised for inference on the CPU
    can switch (another plugin, or a GPU encoder, keeps torch and ``torch`` is returned).
    ``openvino`` / ``onnx`` without that runtime installed raise ConfigError; ``auto`` takes the
    first of OpenVINO, ONNX Runtime, torch that is installed and matches torch. Idempotent.
    """
    from geoloc.models.base import Encoder

    runtime = check_runtime(runtime)
    if not isinstance(encoder, Encoder):
        return "torch"
    if runtime == "torch":
        encoder.__dict__.pop(_ATTR, None)
        return "torch"
    current = runtime_of(encoder)
    if current != "torch" and runtime in ("auto", current):
        return current
    if runtime != "auto" and not _available(runtime):
        raise ConfigError(
            f"encoder runtime {runtime!r} needs {runtime} and onnx: "
            f"pip install '{_INSTALL[runtime]}'"
        )
    if not encoder.optimized or encoder.device.type != "cpu":
        return "torch"
    trunk = encoder.inference_trunk()
    if trunk is None:
        return "torch"
    size = int(encoder.input_size)
    gen = torch.Generator().manual_seed(0)  # a seeded probe: zeros would check little
    probe = torch.randint(0, 256, (3, 3, size, size), generator=gen, dtype=torch.uint8)
    names = list(trunk.output_names)
    session = export_net(
        trunk.eval(),
        probe,
        _cache_path(encoder, cache_dir or default_cache_dir()),
        outputs=names,
        dynamic_axes={n: {0: "batch"} for n in ["images", *names]},
        runtime=runtime,
        input_name="images",
        strict=runtime != "auto",
    )
    if session is None:
        encoder.__dict__.pop(_ATTR, None)
        return "torch"
    object.__setattr__(encoder, _ATTR, session)
    return str(session.runtime)


def export_net(
    net: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    outputs: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    runtime: str | None = None,
    input_name: str = "input",
    strict: bool = False,
) -> Session | None:
    """``net`` (eval, inference only) as a checked OpenVINO / ONNX Runtime session of its ONNX
    export at ``path`` (exported there, atomically, when missing; exported again when the file
    cannot be read), or None when ``runtime`` (None: :func:`default_runtime`) is ``torch``, no
    runtime is installed, the export fails, or an output differs from ``net``'s on ``example``
    by more than :data:`ONNX_TOLERANCE` on every runtime tried (``auto``: OpenVINO, then ONNX
    Runtime; the caller then keeps torch). ``strict``: a failed export raises ConfigError.
    The input is named ``input_name``; ``outputs`` names the outputs, ``dynamic_axes`` their
    variable axes."""
    runtime = default_runtime() if runtime is None else check_runtime(runtime)
    if runtime == "torch":
        return None
    names = [runtime] if runtime != "auto" else ["openvino", "onnx"]
    names = [r for r in names if _available(r)]
    if not names:
        if runtime != "auto":
            raise ConfigError(
                f"runtime {runtime!r} needs {runtime} and onnx: pip install '{_INSTALL[runtime]}'"
            )
        return None

    def export() -> None:
        _export_graph(net, example, path, [input_name, *outputs], dynamic_axes)

    fresh = not path.is_file()
    try:
        if fresh:
            export()
    except Exception as exc:  # noqa: BLE001 - an exporter gap: keep torch
        if strict:
            raise ConfigError(f"{path}: cannot export to ONNX: {exc}") from exc
        log.warning("%s: ONNX export failed (%s); keeping torch", path, exc)
        return None
    with torch.inference_mode():
        ref = net(example)
    ref_list = list(ref) if isinstance(ref, tuple | list) else [ref]
    for name in names:
        try:
            session = _SESSIONS[name](path)
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file: export again once
            if fresh:
                raise
            log.warning("%s: unreadable ONNX cache (%s), exporting again", path, exc)
            export()
            fresh = True
            session = _SESSIONS[name](path)
        got = session.outputs(example)
        diff = max(float((g - r).abs().max()) for g, r in zip(got, ref_list, strict=True))
        if diff <= ONNX_TOLERANCE:
            log.info("%s on %s (max |Δ| %.1e)", path.name, name, diff)
            return session
        log.warning("%s: %s differs from torch by %.2e", path, name, diff)
    return None


class ExportedNet(torch.nn.Module):
    """A module whose forward runs an exported :data:`Session` (its outputs as a tuple), and the
    torch module it was exported from where gradients are on (a session has none)."""

    def __init__(self, session: Session, torch_net: torch.nn.Module) -> None:
        super().__init__()
        self.session = session
        self.runtime = str(session.runtime)
        self.torch_net = torch_net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The session's outputs for ``x`` (the torch module's when gradients are on)."""
        if torch.is_grad_enabled():
            return tuple(self.torch_net(x))
        return tuple(self.session.outputs(x))


def _export_graph(
    net: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: shapes come from the input
            torch.onnx.export(
                net,
                (example,),
                tmp,
                input_names=names[:1],
                output_names=names[1:],
                dynamic_axes=dynamic_axes,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def graph_tag() -> str:
    """The torch / onnx versions an exported graph depends on (part of cache file names)."""
    import onnx

    return f"{torch.__version__.split('+')[0]}-onnx{onnx.__version__}"


def load_for_inference(
    name: str, checkpoint: str | Path | None = None, runtime: str | None = None
) -> Any:
    """Encoder ``name`` (head weights from ``checkpoint``) optimised for inference, its backbone
    on ``runtime`` (None: :func:`default_runtime`): what ingest and ``index rebuild`` encode with,
    so both produce Ω on the same runtime."""
    from geoloc.models import load_encoder

    runtime = default_runtime() if runtime is None else check_runtime(runtime)
    enc = load_encoder(name, checkpoint=checkpoint)
    if hasattr(enc, "optimize_for_inference"):
        enc.optimize_for_inference()
    used = use_runtime(enc, runtime)
    log.debug("encoder %s runtime: %s", name, used)
    return enc
