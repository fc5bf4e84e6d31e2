"""Threads that overlap the stages of an ingest: read/decode (tiler) | encode | write (DB + FAISS).

The main thread encodes (so Ctrl-C lands there, between torch calls); a reader thread produces
batches of tiles through a bounded queue, and a writer thread consumes encoded batches through
another bounded queue. Queues are bounded, so memory stays constant whatever the raster size.
An exception in a background thread is re-raised in the main thread at the next hand-off.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher(Generic[T]):
    """Iterate ``source`` in a daemon thread, ``maxsize`` items ahead of the consumer.

    Use as a context manager and iterate it; leaving the block early (error, Ctrl-C) stops the
    thread at its next hand-off. ``busy_s`` is the time the thread spent producing items
    (excluding time blocked on a full queue), ``cpu_s`` the CPU time of the thread.
    """

    def __init__(self, source: Iterable[T], maxsize: int = 4, name: str = "geoloc-reader") -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, maxsize))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.busy_s = 0.0
        self.cpu_s = 0.0

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            it = iter(self._source)
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    break
                finally:
                    self.busy_s += time.perf_counter() - t0
                    self.cpu_s = time.thread_time()
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            self._put(_Failure(exc))
            return
        self._put(_DONE)

    def __enter__(self) -> Prefetcher[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread and wait for it (briefly: it is a daemon)."""
        self._stop.set()
        self._thread.join(timeout=5.0)

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("reader thread died without a result") from None
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]


class BackgroundWorker(Generic[T]):
    """Apply ``fn`` to submitted items, in order, in one daemon thread.

    ``submit`` blocks when ``maxsize`` items are pending and re-raises the first error of the
    thread; ``join`` waits for every pending item and re-raises that error too. ``busy_s`` is
    the time spent inside ``fn``, ``cpu_s`` the CPU time of the thread.
    """

    def __init__(
        self, fn: Callable[[T], None], maxsize: int = 2, name: str = "geoloc-writer"
    ) -> None:
        self._fn = fn
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, maxsize))
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.busy_s = 0.0
        self.cpu_s = 0.0

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _DONE:
                    return
                if self._error is not None or self._abort.is_set():
                    continue  # drain without working after a failure or an abort
                t0 = time.perf_counter()
                try:
                    self._fn(item)  # type: ignore[arg-type]
                except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                    self._error = exc
                finally:
                    self.busy_s += time.perf_counter() - t0
                    self.cpu_s = time.thread_time()
            finally:
                self._queue.task_done()

    def __enter__(self) -> BackgroundWorker[T]:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, item: T) -> None:
        """Queue ``item`` (blocks while the queue is full); raises the worker's first error."""
        self._raise()
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                break
            except queue.Full:
                self._raise()
                if not self._thread.is_alive():
                    raise RuntimeError("writer thread died") from None

    def join(self) -> None:
        """Wait until every submitted item is processed; raise the worker's first error."""
        self._queue.put(_DONE)
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Drop pending items and stop; waits for the item in progress (it may hold the DB)."""
        self._abort.set()
        deadline = time.monotonic() + 30.0
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                self._queue.put(_DONE, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
