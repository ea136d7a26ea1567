"""Prometheus text-format metrics, written by hand.

Why not ``prometheus_client``: the service needs three metric kinds and one text format; the client
library's process-wide default registry refuses a second metric of the same name, which bites as soon as
two apps are created in one process (tests, notebooks), and it would be one more dependency. This module
keeps its metrics per app, is thread-safe, and renders the exposition format version 0.0.4.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: Labels = ()) -> str:
    items = (*labels, *extra)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()):
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple((k, str(labels[k])) for k in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [*self.header(), *(f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in items)]


class Gauge(_Metric):
    """A value read when scraped (``fn``) or set by hand."""

    kind = "gauge"

    def __init__(self, name: str, help: str, fn: Callable[[], float] | None = None):
        super().__init__(name, help)
        self._fn, self._value = fn, 0.0

    def set(self, value: float) -> None:
        self._value = float(value)

    def add(self, amount: float) -> None:
        with self._lock:
            self._value += amount

    def value(self) -> float:
        return float(self._fn()) if self._fn is not None else self._value

    def render(self) -> list[str]:
        return [*self.header(), f"{self.name} {_fmt_value(self.value())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = (),
                 buckets: Iterable[float] = LATENCY_BUCKETS):
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._data: dict[Labels, list] = {}  # key -> [bucket counts..., sum, count]

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            row = self._data.setdefault(key, [0] * len(self.buckets) + [0.0, 0])
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    row[i] += 1
            row[-2] += value
            row[-1] += 1

    def count(self, **labels: str) -> int:
        with self._lock:
            row = self._data.get(self._key(labels))
            return 0 if row is None else row[-1]

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._data.items())
        lines = self.header()
        for key, row in items:
            for bound, n in zip(self.buckets, row):
                lines.append(f"{self.name}_bucket{_fmt_labels(key, (('le', _fmt_value(bound)),))} {n}")
            lines.append(f"{self.name}_bucket{_fmt_labels(key, (('le', '+Inf'),))} {row[-1]}")
            lines.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt_value(row[-2])}")
            lines.append(f"{self.name}_count{_fmt_labels(key)} {row[-1]}")
        return lines


class ServiceMetrics:
    """The service's metrics: requests by route and status, request and inference latency, in-flight
    requests, and the index size."""

    def __init__(self, items: Callable[[], float] = lambda: 0):
        self.requests = Counter("clipzoo_http_requests_total", "HTTP requests by method, route and status.",
                                ("method", "route", "status"))
        self.latency = Histogram("clipzoo_http_request_duration_seconds",
                                 "HTTP request latency by route (seconds).", ("route",))
        self.inference = Histogram("clipzoo_inference_seconds",
                                   "Model and index work per request, waiting for the model lock included.",
                                   ("op",))
        self.rejected = Counter("clipzoo_rejected_inputs_total",
                                "Requests refused for bad input (bad image, too large, invalid), by reason.",
                                ("reason",))
        self.in_flight = Gauge("clipzoo_http_requests_in_flight", "HTTP requests being served now.")
        self.items = Gauge("clipzoo_index_items", "Items in the served index.", items)

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.latency, self.inference, self.rejected, self.in_flight, self.items):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
