"""The one progress helper: a rich bar in a terminal, a plain line every few seconds otherwise.

>>> with progress(1000, "embedding", unit="images") as advance:
...     for batch in batches:
...         advance(len(batch))

``enabled=False`` gives a no-op ``advance``. Output goes to stderr, so stdout stays parseable. ``status``, a
function returning a short text (``"loss 2.3026 · 412.0 samples/s"``), is shown after the counts: in the bar,
and on each plain line — so a run piped to a file or CI log still says its step, loss, speed and time left.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

PLAIN_EVERY_S = float(os.environ.get("CLIPZOO_PROGRESS_EVERY_S") or 5.0)
"""Seconds between two plain progress lines when stderr is not a terminal ($CLIPZOO_PROGRESS_EVERY_S)."""


@contextlib.contextmanager
def progress(total: "int | None", description: str, *, enabled: bool = True, unit: str = "items",
             start: int = 0, stream: "TextIO | None" = None,
             status: "Callable[[], str] | None" = None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; show ``description`` with done/total, rate and time left (and ``status()``, when
    given) while it runs."""
    stream = stream or sys.stderr
    status = status or _no_status
    if not enabled:
        yield _nothing
    elif _is_terminal(stream):
        with _rich_bar(total, description, unit, start, stream, status) as advance:
            yield advance
    else:
        with _plain_lines(total, description, unit, start, stream, status) as advance:
            yield advance


def _no_status() -> str:
    return ""


def _nothing(n: int) -> None:
    return None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _rich_bar(total, description, unit, start, stream, status) -> Iterator[Callable[[int], None]]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.1f} {unit}/s")

    class Status(ProgressColumn):
        def render(self, task):
            return Text(status())

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), Status())
    with Progress(*columns, console=Console(file=stream)) as bar:
        task = bar.add_task(description, total=total, completed=start)
        try:
            yield lambda n: bar.advance(task, n)
        except BaseException:
            bar.update(task, visible=False)  # an error gets its own line, not a half-drawn bar
            raise


@contextlib.contextmanager
def _plain_lines(total, description, unit, start, stream, status) -> Iterator[Callable[[int], None]]:
    state = {"done": start, "last": time.monotonic(), "shown": None}
    t0 = state["last"]

    def line() -> str:
        done, elapsed = state["done"], time.monotonic() - t0
        rate = (done - start) / elapsed if elapsed > 0 else 0.0
        of = f"/{total}" if total else ""
        left = f", eta {(total - done) / rate:.0f} s" if total and rate > 0 else ""
        extra = status()
        return f"{description}: {done}{of} {unit} ({rate:,.1f} {unit}/s, {elapsed:.0f} s{left})" + (
            f" · {extra}" if extra else "")

    def advance(n: int) -> None:
        state["done"] += n
        now = time.monotonic()
        if now - state["last"] >= PLAIN_EVERY_S:
            state["last"], state["shown"] = now, state["done"]
            print(line(), file=stream, flush=True)

    yield advance
    if time.monotonic() - t0 >= PLAIN_EVERY_S and state["shown"] != state["done"]:  # the end, unless just shown
        print(line(), file=stream, flush=True)
