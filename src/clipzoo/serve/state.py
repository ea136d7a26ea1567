"""What the routes share: :class:`Service` holds the index, its model, the vocabulary, caches, the model
thread and the metrics; ``create_app`` builds one and keeps it on ``app.state.service``.

Every model and index call runs on one worker thread (:meth:`Service.on_model_thread`), so the event loop
never blocks, the model is never called from two threads at once, and the index's SQLite connection is
used from one thread only. Decoding uploads runs in anyio's thread pool.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anyio import to_thread
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..api import load
from ..cards import IMAGE, parse_alias
from ..embed import draft_size_for
from ..embed.decode import decode_upload
from ..errors import BadImageError, ClipzooError
from ..image_bytes import ImageTooLargeError, image_size
from ..index import load_vocabulary, open_index
from .batcher import Batcher
from .images import ThumbnailCache, decode_base64, release_freed_memory
from .limits import DECODE_SLOTS, DEFAULT_MAX_BATCH, DEFAULT_MAX_REQUEST_PIXELS, DEFAULT_MAX_WAIT_MS, TRIM_AFTER_PIXELS
from .live import LiveIndex
from .metrics import ServiceMetrics


class Service:
    """The index (opened once, with its model, on the model thread), the vocabulary, caches and metrics."""

    def __init__(self, index: Any, *, labels: "Sequence[str] | str | os.PathLike | None", token: str | None,
                 max_body_bytes: int, thumb_size: int, max_image_pixels: int, template: str,
                 model: Any = None, thumb_cache_items: int = 2048, max_pending: int = 256,
                 max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS, max_batch: int = DEFAULT_MAX_BATCH,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS):
        self.token = token or None
        self.max_request_pixels = int(max_request_pixels)
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)  # full decodes at once, server-wide
        self.max_body_bytes = int(max_body_bytes)
        self.thumb_size = int(thumb_size)
        self.max_image_pixels = int(max_image_pixels)
        self.template = template
        self.started = time.time()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clipzoo-model")
        self._weights: "OrderedDict[tuple, Any]" = OrderedDict()
        self.max_pending = int(max_pending)
        self._pending = 0  # model-thread jobs queued or running (touched on the event loop only)
        try:
            # open the index (and load its model) once, on the model thread that will use it
            self.index = self._executor.submit(self._open, index, model).result()
            self.model = self._executor.submit(lambda: self.index.model).result()
            self.draft_size = draft_size_for(self.model)  # JPEGs decode at the size the model needs
            root = getattr(self.index, "root", None)  # thumbnails are read only from inside it
            self.thumbnails = ThumbnailCache(self.thumb_size, self.max_image_pixels, thumb_cache_items,
                                             roots=[root] if root else [])
            self.metrics = ServiceMetrics(items=lambda: self.count)
            self.live = LiveIndex(self)  # follows the published generation; applies POST/DELETE /items
            self.batcher = Batcher(self.on_model_thread, self.model, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                   max_pending=self.max_pending, pending=lambda: self._pending,
                                   on_busy=lambda: self.metrics.rejected.inc(reason="busy"))  # text/image encoding
            self.vocabulary: list[str] = self._executor.submit(self._load_labels, labels).result()
            if self.vocabulary:  # embed the server's vocabulary at start-up, not on the first request
                self._executor.submit(self._classifier, tuple(self.vocabulary), self.template).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    # --- start-up (model thread)
    @staticmethod
    def _open(index: Any, model: Any):
        if isinstance(index, (str, os.PathLike)):
            path = Path(index)
            if not path.exists():
                raise ClipzooError(f"index {str(path)!r} does not exist; build one with "
                                   f"`clipzoo index build FOLDER --model MODEL --out {path}`")
            if isinstance(model, (str, os.PathLike)):
                model = load(os.fspath(model))
            return open_index(path, model=model)
        for attr in ("search_text", "search_embedding", "item", "model"):
            if not hasattr(index, attr):
                raise TypeError(f"create_app needs an index path or a SearchIndex, got {type(index).__name__}")
        return index

    @staticmethod
    def _load_labels(labels: Any) -> list[str]:
        if labels is None:
            return []
        if isinstance(labels, (str, os.PathLike)):
            return list(load_vocabulary(labels))
        out = [str(x) for x in labels]
        if not out:
            raise ClipzooError("the label vocabulary is empty; pass at least one label")
        return out

    # --- properties
    @property
    def count(self) -> int:
        return int(self.index.count)

    @property
    def partitions(self) -> list[str]:
        return list(self.index.partitions)

    @property
    def model_name(self) -> str:
        spec = str(getattr(self.index, "model_spec", None) or "")
        card = getattr(self.model, "card", None)
        if spec and os.path.exists(spec):  # never the server's path (or a cache folder's hash)
            # a catalogue model unpacked to a cache: named by the loaded card, or by the card the index recorded
            # (the model loaded again from that folder has a local card: `clipzoo demo`'s index)
            recorded = parse_alias(str(getattr(self.index, "model_alias", None) or ""))
            for publisher, card_id in ((getattr(card, "publisher", None), getattr(card, "id", None)),
                                       recorded[1:] if recorded else (None, None)):
                if publisher and card_id and publisher != "local":
                    return f"{publisher}/{card_id}"
            return Path(spec).name  # a local model: its file or folder name
        return spec or str(getattr(card, "alias", "model"))

    # --- running work off the event loop
    async def on_model_thread(self, op: str, fn: Callable, *args: Any) -> Any:
        """Run ``fn(*args)`` on the model thread; the event loop awaits it without blocking."""
        if self._pending >= self.max_pending:  # shed load instead of queueing without bound
            self.metrics.rejected.inc(reason="busy")
            raise StarletteHTTPException(503, f"the server is busy ({self._pending} requests waiting for the "
                                              "model); retry shortly", headers={"Retry-After": "1"})
        self._pending += 1
        t0 = time.perf_counter()
        try:
            return await asyncio.wrap_future(self._executor.submit(fn, *args))
        finally:
            self._pending -= 1
            self.metrics.inference.observe(time.perf_counter() - t0, op=op)

    async def decode(self, data: "bytes | str", name: str = "image"):
        """Upload bytes or base64 -> RGB PIL image (see :meth:`decode_many`)."""
        return (await self.decode_many([(data, name)]))[0]

    async def decode_many(self, items: "Sequence[tuple[bytes | str, str]]") -> list:
        """``[(bytes or base64, name)]`` -> RGB PIL images, decoded in a worker thread.

        Every image's header is read first: one over ``max_image_pixels``, or all of them together over
        ``max_request_pixels``, is refused (413) before any pixel is decoded; then each is decoded as an index
        build decodes its files (:mod:`clipzoo.embed.decode`), at most :data:`DECODE_SLOTS` full decodes at once
        in the whole server. BadImageError (400) for what cannot be decoded."""

        def work():
            raws = [decode_base64(data, name) if isinstance(data, str) else data for data, name in items]
            sizes = [image_size(raw, max_pixels=self.max_image_pixels, name=name)
                     for raw, (_, name) in zip(raws, items)]
            total = sum(w * h for w, h in sizes)
            if total > self.max_request_pixels:
                raise ImageTooLargeError(
                    f"the request's {len(sizes)} images declare {total:,} pixels together, more than the limit "
                    f"of {self.max_request_pixels:,} per request; send fewer or smaller images")
            out = []
            try:
                for raw, (_, name) in zip(raws, items):
                    with self._decode_slots:
                        out.append(decode_upload(raw, self.draft_size, max_pixels=self.max_image_pixels,
                                                 name=name))  # embed.decode: as the index build decodes
            finally:
                if total >= TRIM_AFTER_PIXELS:
                    release_freed_memory()
            return out

        try:
            return await to_thread.run_sync(work)
        except BadImageError:
            self.metrics.rejected.inc(reason="bad_image")
            raise

    async def thumbnail(self, item: dict) -> bytes:
        """JPEG thumbnail of an index item, made in a worker thread (404 when its file is not the indexed one)."""
        return await to_thread.run_sync(self.thumbnails.get, item)

    # --- model-thread work
    def _classifier(self, labels: tuple, template: str):
        policy = getattr(self.index, "long_text", None)  # a too-long prompt follows it, as a text query does
        key = (labels, template, policy)
        weights = self._weights.get(key)
        if weights is None:
            weights = self.model.classifier(list(labels), [template], long_text=policy)
            self._weights[key] = weights
            while len(self._weights) > 16:
                self._weights.popitem(last=False)
        else:
            self._weights.move_to_end(key)
        return weights

    def classify(self, image, labels: tuple, template: str, k: int) -> list[tuple[str, float]]:
        weights = self._classifier(labels, template)
        probs = self.model.probabilities(self.model.score([image], weights, IMAGE))[0]
        top = probs.topk(min(k, len(labels)))
        return [(labels[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]

    def rank(self, image, texts: list[str], truncate: bool):
        logits = self.model.score([image], self.model.encode_text(texts, truncate=truncate), IMAGE)
        probs = self.model.probabilities(logits)[0]
        return logits[0].tolist(), probs.tolist()

    def scrub(self, message: str) -> str:
        """A message for a client: the server's folders (index, indexed root) shown by name only."""
        for attr in ("path", "root"):
            where = getattr(self.index, attr, None)
            if where and Path(where).name:  # not "", "." or "/" (an import whose files share no folder)
                message = message.replace(str(where), Path(where).name)
        return message

    def close(self) -> None:
        self.live.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
