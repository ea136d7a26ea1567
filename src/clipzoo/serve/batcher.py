"""Dynamic batching of text and image encoding (issue 17 §5).

Requests that need texts or images encoded join a queue (one per kind and options); a drainer on the
event loop takes up to ``max_batch`` waiting requests — or what has come when the oldest has waited
``max_wait_ms`` — and runs **one** model call for all their rows on the model thread
(:meth:`~clipzoo.serve.state.Service.on_model_thread`). Each request gets its own rows, and its
follow-up (``then``: e.g. the index search with its row) runs on the model thread in the same job, so a
batch costs one trip to the model thread. The next batch is formed when the model is free again, so
requests that arrived during a model call are batched together instead of queueing one by one.

A batch whose model call fails on a request's input (a :class:`~clipzoo.errors.ClipzooError`: a text too long
for the context, …) is encoded again one request at a time in the same job: the request that caused it gets its
own error, the others their rows — one client's input never fails, or shows up in, another's answer. Any other
failure (the model's, not an input's) fails every request of the batch.

Rows are what one-at-a-time encoding gives: towers embed each input independently (texts padded to
the model's fixed context, images preprocessed one by one), so only float rounding differs (≤ 1e-6,
``tests/test_serve_batching.py``). ``max_batch=1`` is unbatched: each request is its own model job.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ClipzooError
from .limits import DEFAULT_MAX_BATCH, DEFAULT_MAX_PENDING, DEFAULT_MAX_WAIT_MS, MAX_EMBED_TEXTS

RunOnModelThread = Callable[[str, Callable[[], Any]], Awaitable[Any]]


@dataclass
class _Waiting:
    inputs: Sequence[Any]
    then: "Callable[[Any], Any] | None"
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class _Queue:
    op: str
    encode: Callable[[list], Any]
    items: "deque[_Waiting]" = field(default_factory=deque)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    drainer: "asyncio.Task | None" = None


@dataclass
class BatchStats:
    """Counts for tests and benchmarks: model calls, requests and rows they encoded, the largest batch."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    largest: int = 0


class Batcher:
    """Encodes texts and images for many waiting requests in one model call (module docstring)."""

    def __init__(self, run: RunOnModelThread, model: Any, *, max_batch: int = DEFAULT_MAX_BATCH,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS, max_pending: int = DEFAULT_MAX_PENDING,
                 max_rows: "int | None" = None, on_busy: Callable[[], None] = lambda: None,
                 pending: Callable[[], int] = lambda: 0):
        if int(max_batch) < 1:
            raise ClipzooError(f"max_batch must be at least 1 (1: no batching), got {max_batch}")
        if not 0 <= float(max_wait_ms) <= 1000:
            raise ClipzooError(f"max_wait_ms must be between 0 and 1000, got {max_wait_ms}")
        self.run, self.model = run, model
        self.max_batch, self.max_wait = int(max_batch), float(max_wait_ms) / 1000
        self.max_rows = int(max_rows or max(self.max_batch, MAX_EMBED_TEXTS))
        self.max_pending, self.on_busy, self.pending = int(max_pending), on_busy, pending
        self.waiting = 0  # batched requests admitted and not yet answered
        self.running = 0  # batch jobs on (or queued for) the model thread: counted in pending() too
        self.queues: dict[tuple, _Queue] = {}
        self.stats = BatchStats()

    # --- what the routes call
    async def encode_text(self, texts: Sequence[str], *, normalize: bool = True, truncate: bool = False,
                          then: "Callable[[Any], Any] | None" = None, op: str = "embed_text") -> Any:
        """``model.encode_text(texts, ...)`` (its rows), or ``then(rows)`` run on the model thread; ``op``
        names the job in the metrics (requests of one op and the same options share batches)."""
        def encode(batch: list) -> Any:
            return self.model.encode_text(batch, normalize=normalize, truncate=truncate)
        return await self._submit((op, bool(normalize), bool(truncate)), op, encode, texts, then)

    async def encode_image(self, images: Sequence[Any], *, normalize: bool = True,
                           then: "Callable[[Any], Any] | None" = None, op: str = "embed_image") -> Any:
        """``model.encode_image(images, ...)`` (its rows), or ``then(rows)`` run on the model thread."""
        def encode(batch: list) -> Any:
            return self.model.encode_image(batch, normalize=normalize)
        return await self._submit((op, bool(normalize)), op, encode, images, then)

    def load(self) -> int:
        """Requests waiting for (or on) the model: batched ones, and the other model-thread jobs."""
        return self.waiting + self.pending() - self.running

    # --- the queue
    async def _submit(self, key: tuple, op: str, encode: Callable[[list], Any], inputs: Sequence[Any],
                      then: "Callable[[Any], Any] | None") -> Any:
        if self.max_batch == 1:  # unbatched: one model job per request
            result = await self.run(op, lambda: _finish(encode(list(inputs)), then))
            self._count(1, len(inputs))
            return result
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = _Queue(op, encode)
        waiting = self.load()
        if waiting >= self.max_pending:  # shed load instead of queueing without bound
            self.on_busy()
            raise StarletteHTTPException(503, f"the server is busy ({waiting} requests waiting for the model); "
                                              "retry shortly", headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            return await self._enqueue(queue, inputs, then)
        finally:
            self.waiting -= 1

    async def _enqueue(self, queue: _Queue, inputs: Sequence[Any], then: "Callable[[Any], Any] | None") -> Any:
        item = _Waiting(list(inputs), then, asyncio.get_running_loop().create_future())
        queue.items.append(item)
        if len(queue.items) >= self.max_batch:
            queue.full.set()
        if queue.drainer is None or queue.drainer.done():
            queue.full = asyncio.Event()  # bound to this event loop (a TestClient may run several)
            if len(queue.items) >= self.max_batch:
                queue.full.set()
            queue.drainer = asyncio.create_task(self._drain(queue))
        return await item.future

    async def _drain(self, queue: _Queue) -> None:
        while queue.items:
            wait = queue.items[0].arrived + self.max_wait - time.monotonic()
            if len(queue.items) < self.max_batch and wait > 0:
                queue.full.clear()
                try:
                    await asyncio.wait_for(queue.full.wait(), wait)
                except TimeoutError:
                    pass
            batch = self._take(queue)
            if batch:
                await self._run_batch(queue, batch)

    def _take(self, queue: _Queue) -> list[_Waiting]:
        batch: list[_Waiting] = []
        rows = 0
        while queue.items and len(batch) < self.max_batch:
            item = queue.items[0]
            if item.future.done():  # its client went away
                queue.items.popleft()
                continue
            if batch and rows + len(item.inputs) > self.max_rows:
                break
            batch.append(queue.items.popleft())
            rows += len(item.inputs)
        return batch

    async def _run_batch(self, queue: _Queue, batch: list[_Waiting]) -> None:
        sizes = [len(item.inputs) for item in batch]
        flat = [x for item in batch for x in item.inputs]
        thens = [item.then for item in batch]

        def job() -> list[tuple[bool, Any]]:
            try:
                feats = queue.encode(flat)
            except ClipzooError:  # one request's input (a text too long, …): each request alone, so it fails alone
                if len(batch) == 1:
                    raise
                return [_alone(queue.encode, item.inputs, item.then) for item in batch]
            out, start = [], 0
            for n, then in zip(sizes, thens):
                try:
                    out.append((True, _finish(feats[start:start + n], then)))
                except Exception as exc:  # one request's follow-up failing fails that request only
                    out.append((False, exc))
                start += n
            return out

        self.running += 1
        try:
            results = await self.run(queue.op, job)
        except BaseException as exc:  # the model failed (not a request's input), or the job was shed: all get it
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            self.running -= 1
        self._count(len(batch), len(flat))
        for item, (ok, value) in zip(batch, results):
            if item.future.done():
                continue
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)

    def _count(self, requests: int, rows: int) -> None:
        self.stats.batches += 1
        self.stats.requests += requests
        self.stats.rows += rows
        self.stats.largest = max(self.stats.largest, requests)


def _finish(rows: Any, then: "Callable[[Any], Any] | None") -> Any:
    return rows if then is None else then(rows)


def _alone(encode: Callable[[list], Any], inputs: Sequence[Any],
           then: "Callable[[Any], Any] | None") -> tuple[bool, Any]:
    """One request of a batch that failed on a request's input, encoded by itself: ``(True, its result)``, or
    ``(False, its own error)`` — so another request's bad input never reaches it."""
    try:
        return True, _finish(encode(list(inputs)), then)
    except Exception as exc:
        return False, exc
