"""Fetching a query image from a URL (``/knn-service``'s ``image_url``), only on a server started with
``--allow-url``, and then bounded.

- only ``http`` and ``https`` URLs (no ``file:``, ``ftp:``, …), at most :data:`MAX_URL_CHARS` long;
- only public addresses: the host is resolved once and every address it resolves to must be global
  (no loopback, private, link-local — the cloud metadata address —, shared, multicast or reserved
  address, IPv4-mapped ones included); the connection goes to that vetted address, so a DNS answer that
  changes between the check and the connection (rebinding) cannot reach an inner one;
- at most :data:`MAX_REDIRECTS` redirects, each target checked the same way;
- at most ``max_bytes`` (the server's body limit: what an upload may be) — refused on
  ``Content-Length`` and counted as it streams (413);
- at most ``timeout`` seconds for the whole fetch — the host's name resolved, the connection, the status line
  and headers, redirects and the body, however slowly a host drips its bytes: a wall-clock deadline
  (:class:`Deadline`) shuts the connection down when it passes, which ends any read blocked on it;
- at most :data:`~clipzoo.constants.URL_FETCH_SLOTS` fetches at once in the server (:meth:`UrlFetcher.fetch_async`:
  their own worker threads, and a 503 past them), so slow hosts never take the threads that decode uploads.

A refused URL is a :class:`UrlRefusedError` (the service's 422), a fetch that fails a
:class:`UrlFetchError` (400); both name the URL's host, never the server's network.
"""
from __future__ import annotations

import concurrent.futures
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from urllib.parse import urljoin, urlsplit

from anyio import CapacityLimiter, to_thread
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..constants import URL_FETCH_SLOTS
from ..errors import ClipzooError
from ..image_bytes import ImageTooLargeError

FETCH_TIMEOUT_S = 10.0
"""Longest a whole URL fetch may take (connect, redirects, body), in seconds."""
MAX_REDIRECTS = 3
MAX_URL_CHARS = 2048
CHUNK = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)


class UrlRefusedError(ClipzooError):
    """A URL the server will not fetch: not http(s), or a private or local address."""


class UrlFetchError(ClipzooError):
    """A URL that could not be fetched: no answer in time, a connection error, an HTTP error status."""


_RESOLVERS = concurrent.futures.ThreadPoolExecutor(URL_FETCH_SLOTS, thread_name_prefix="clipzoo-resolve")
"""Name lookups run here, so a fetch waits for one only until its deadline (``getaddrinfo`` takes no timeout)."""


class Deadline:
    """A fetch's wall-clock deadline: the sockets it watches are shut down when it passes (a read blocked on one
    then ends at once), whatever each read's own timeout. ``cancel()`` when the fetch is done."""

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds
        self.passed = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        return self.at - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            passed = self.passed
        if passed:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            socks, self._socks = self._socks, []
        for sock in socks:
            _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed already
        pass


class PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to ``host`` made to one already-vetted ``address`` (TLS still checks ``host``),
    shut down when ``deadline`` passes."""

    def __init__(self, host: str, port: int, address: tuple, timeout: float, tls: bool,
                 deadline: "Deadline | None" = None):
        super().__init__(host, port, timeout=timeout)
        self.address, self.tls, self.deadline = address, tls, deadline

    def connect(self) -> None:
        sock = socket.create_connection(self.address[:2], self.timeout)
        if self.deadline is not None:
            self.deadline.watch(sock)
        if self.tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self.sock = sock


class UrlFetcher:
    """``fetch(url) -> bytes`` under the rules of the module docstring. ``allow_private`` lifts only the
    address rule (for tests against a server on 127.0.0.1); the CLI never sets it."""

    def __init__(self, max_bytes: int, timeout: float = FETCH_TIMEOUT_S, max_redirects: int = MAX_REDIRECTS,
                 allow_private: bool = False, slots: int = URL_FETCH_SLOTS):
        self.max_bytes, self.timeout = int(max_bytes), float(timeout)
        self.max_redirects, self.allow_private = int(max_redirects), bool(allow_private)
        self.slots, self.fetching = int(slots), 0  # fetches running (counted on the event loop)
        self._threads = CapacityLimiter(self.slots)

    async def fetch_async(self, url: str) -> bytes:
        """:meth:`fetch` in a worker thread of the fetcher's own; a 503 when ``slots`` fetches run already."""
        if self.fetching >= self.slots:
            raise StarletteHTTPException(503, f"the server is fetching {self.fetching} image URLs already, its "
                                              "limit; retry shortly", headers={"Retry-After": "1"})
        self.fetching += 1
        try:
            return await to_thread.run_sync(self.fetch, url, limiter=self._threads)
        finally:
            self.fetching -= 1

    def fetch(self, url: str) -> bytes:
        deadline = Deadline(self.timeout)
        try:
            for _ in range(self.max_redirects + 1):
                tls, host, port, target = self.check_url(url)
                address = self.resolve(host, port, deadline)
                status, location, body = self._get(tls, host, port, target, address, deadline)
                if status in REDIRECTS and location:
                    url = urljoin(url, location)
                    continue
                if status != 200:
                    raise UrlFetchError(f"image_url: {host} answered HTTP {status}; give a URL that serves the image")
                return body
        finally:
            deadline.cancel()
        raise UrlFetchError(f"image_url: {host} redirected more than {self.max_redirects} times; give the "
                            "image's own URL")

    def _late(self, host: str) -> UrlFetchError:
        return UrlFetchError(f"image_url: {host} did not answer within {self.timeout:g} s")

    @staticmethod
    def check_url(url: str) -> tuple[bool, str, int, str]:
        """``(tls, host, port, path?query)`` of an http(s) URL; UrlRefusedError for anything else."""
        if len(url) > MAX_URL_CHARS:
            raise UrlRefusedError(f"image_url is {len(url)} characters, more than {MAX_URL_CHARS}")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise UrlRefusedError("image_url is not a valid URL; give an http(s) URL of an image") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise UrlRefusedError(f"image_url must be an http or https URL, not {scheme or 'a relative'!r} one")
        if not parts.hostname:
            raise UrlRefusedError("image_url has no host; give an http(s) URL of an image")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return scheme == "https", parts.hostname, port or (443 if scheme == "https" else 80), target

    def resolve(self, host: str, port: int, deadline: "Deadline | None" = None) -> tuple:
        """The address to connect to: ``host`` resolved (before ``deadline``), every address it has checked to be
        public."""
        lookup = _RESOLVERS.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            infos = lookup.result(None if deadline is None else max(deadline.left(), 0.0))
        except concurrent.futures.TimeoutError:
            raise self._late(host) from None
        except (OSError, UnicodeError):
            raise UrlFetchError(f"image_url: cannot resolve the host {host!r}") from None
        for *_, address in infos:
            if not self.allow_private and not is_public(address[0]):
                raise UrlRefusedError(f"image_url: the host {host!r} is a private or local address ({address[0]}); "
                                      "only public addresses are fetched")
        return infos[0][4]

    def _get(self, tls: bool, host: str, port: int, target: str, address: tuple,
             deadline: Deadline) -> tuple[int, str | None, bytes]:
        if deadline.left() <= 0:
            raise self._late(host)
        conn = PinnedConnection(host, port, address, max(deadline.left(), 0.01), tls, deadline)
        try:
            conn.request("GET", target, headers={"User-Agent": "clipzoo", "Accept": "image/*"})
            if conn.sock is not None:
                conn.sock.settimeout(max(deadline.left(), 0.01))
            resp = conn.getresponse()  # a drip of header bytes ends when the deadline shuts the socket down
            if resp.status in REDIRECTS or resp.status != 200:
                return resp.status, resp.getheader("Location"), b""
            declared = resp.getheader("Content-Length")
            if declared and declared.strip().isdigit() and int(declared) > self.max_bytes:
                raise self._too_large(host, int(declared))
            return resp.status, None, self._read(conn, resp, host, deadline)
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            if isinstance(exc, TimeoutError) or deadline.passed or deadline.left() <= 0:
                raise self._late(host) from None
            raise UrlFetchError(f"image_url: fetching from {host} failed ({type(exc).__name__})") from None
        finally:
            conn.close()

    def _read(self, conn: PinnedConnection, resp: http.client.HTTPResponse, host: str, deadline: Deadline) -> bytes:
        chunks, seen = [], 0
        while True:
            left = deadline.left()
            if left <= 0:
                raise TimeoutError
            if conn.sock is not None:
                conn.sock.settimeout(left)
            chunk = resp.read1(CHUNK) if hasattr(resp, "read1") else resp.read(CHUNK)
            if deadline.passed:  # the socket was shut down: what was read is not the whole file
                raise TimeoutError
            if not chunk:
                return b"".join(chunks)
            seen += len(chunk)
            if seen > self.max_bytes:
                raise self._too_large(host, None)
            chunks.append(chunk)

    def _too_large(self, host: str, size: int | None) -> ImageTooLargeError:
        said = f" ({size:,} bytes)" if size is not None else ""
        return ImageTooLargeError(f"image_url: the file at {host} is larger than the limit of {self.max_bytes:,} "
                                  f"bytes{said}; give a smaller image")


def is_public(address: str) -> bool:
    """Whether an IP address (IPv4-mapped IPv6 looked through) is a global, public one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return bool(ip.is_global) and not ip.is_multicast
