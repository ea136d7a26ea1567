"""The indices one server holds, by name (``clipzoo serve main=INDEX other=INDEX2``).

Each named index is its own :class:`~clipzoo.serve.state.Service` — its index, its model, its model
thread, caches and metrics — built with the same options. The first is ``app.state.service``, the one our
own routes use; :class:`IndexRegistry` (``app.state.indices``) holds them all for clip-retrieval's routes
(:mod:`clipzoo.serve.routers.clip_retrieval`), with the URL fetcher when ``--allow-url`` was given.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import NotFoundError
from .state import Service
from .url_fetch import UrlFetcher


class IndexRegistry:
    """Named services, the first one the main index; ``fetcher`` is None unless URL fetching is allowed."""

    def __init__(self, services: "dict[str, Service]", fetcher: UrlFetcher | None = None):
        if not services:
            raise ValueError("an IndexRegistry needs at least one index")
        self.services = dict(services)
        self.fetcher = fetcher

    @classmethod
    def build(cls, named: Sequence[tuple[str, Any]], first: Service, make: Callable[[Any], Service], *,
              fetcher: UrlFetcher | None = None) -> "IndexRegistry":
        """The registry of ``named`` indices: the first is ``first`` (already open), the others are opened
        with ``make(index)``; when one cannot be opened, every one (``first`` too) is closed again."""
        services = {named[0][0]: first}
        try:
            for name, index in named[1:]:
                services[name] = make(index)
        except BaseException:
            for service in services.values():
                service.close()
            raise
        return cls(services, fetcher)

    @property
    def names(self) -> list[str]:
        return list(self.services)

    @property
    def default(self) -> str:
        """The main index's name."""
        return next(iter(self.services))

    def get(self, name: str | None) -> tuple[str, Service]:
        """``(name, service)`` of the index called ``name`` (None: the main index); NotFoundError (404)
        naming the indices there are."""
        if name is None:
            name = self.default
        service = self.services.get(name)
        if service is None:
            raise NotFoundError(f"unknown indice_name {name[:80]!r}; this server's indices: {', '.join(self.names)} "
                                "(GET /indices-list)")
        return name, service

    def describe(self) -> str:
        """``main (42 items), other (12 items)``."""
        return ", ".join(f"{name} ({service.count} items)" for name, service in self.services.items())

    def close(self) -> None:
        """Close every index's service (the main one included)."""
        for service in self.services.values():
            service.close()
