"""Issue 17 §7 in real headless Chromium (Debian's ``chromium``, driven by Playwright, as in
tests/test_serve_browser.py) with the network off — every request that is not to the server on 127.0.0.1
is aborted:

- /docs and /redoc are blank offline (assets from a CDN): they now load Swagger UI and ReDoc from the
  package (``clipzoo.serve.docs_assets``) and list the operations;
- the page has no horizontal overflow at 360 px wide: screenshots at 360×740 and 1280×800.
"""
from __future__ import annotations

import re

import pytest

pytest.importorskip("fastapi")

from _serve_common import NEEDS_CHROMIUM, browser, built, server  # noqa: E402,F401  (fixtures)

pytestmark = NEEDS_CHROMIUM


@pytest.fixture
def offline_page(browser, server):
    """A page whose every request off the server is aborted (and recorded)."""
    def open_page(width=1280, height=800):
        context = browser.new_context(viewport={"width": width, "height": height})
        blocked: list[str] = []

        def route(r):
            if r.request.url.startswith(server + "/"):
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.blocked, page.js_errors = blocked, errors
        contexts.append(context)
        return page

    contexts: list = []
    yield open_page
    for c in contexts:
        c.close()


def _operations(server) -> list[tuple[str, str]]:
    """(method, path) of every operation in the server's OpenAPI document."""
    import httpx

    spec = httpx.get(server + "/openapi.json").json()
    return [(method, path) for path, ops in spec["paths"].items() for method in ops]


def test_docs_offline_lists_the_operations(offline_page, server, tmp_path):
    import httpx

    html = httpx.get(server + "/docs").text
    assert not re.search(r"https?://", html), "a URL off the server is left in /docs"
    page = offline_page()
    page.goto(server + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=15000)
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    for path in ("/search", "/classify", "/embed", "/health", "/info"):
        assert path in {p.replace("\u200b", "") for p in paths}, (path, paths)
    n_ops = page.locator(".opblock").count()
    assert n_ops == len(_operations(server))
    assert page.blocked == [] and page.js_errors == [], (page.blocked, page.js_errors)
    page.screenshot(path=str(tmp_path / "docs-offline.png"))


def test_redoc_offline_lists_the_operations(offline_page, server, tmp_path):
    import httpx

    html = httpx.get(server + "/redoc").text
    assert not re.search(r"https?://", html), "a URL off the server is left in /redoc"
    page = offline_page()
    page.goto(server + "/redoc")
    page.wait_for_selector("[data-section-id^='operation/']", state="attached", timeout=15000)
    sections = page.locator("[data-section-id^='operation/']").evaluate_all(
        "els => [...new Set(els.map(e => e.getAttribute('data-section-id')))]")
    assert len(sections) == len(_operations(server)), sections
    assert page.blocked == [] and page.js_errors == [], (page.blocked, page.js_errors)
    page.screenshot(path=str(tmp_path / "redoc-offline.png"))


def test_docs_assets_are_only_the_listed_files(server):
    import httpx

    assert httpx.get(server + "/docs-assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert httpx.get(server + "/docs-assets/core.py").status_code == 404
    assert httpx.get(server + "/docs-assets/..%2F__init__.py").status_code == 404


@pytest.mark.parametrize("width,height", [(360, 740), (1280, 800)])
def test_page_has_no_horizontal_overflow(offline_page, server, tmp_path, width, height):
    page = offline_page(width, height)
    page.goto(server + "/")
    page.wait_for_selector("#info:has-text('42 items')")
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    page.wait_for_selector("#results .result")
    page.set_input_files("#file", {"name": "a-long-file-name-that-could-push-the-layout-wider.png",
                                   "mimeType": "image/png", "buffer": _png()})
    page.wait_for_selector("#classes li.class")
    page.screenshot(path=str(tmp_path / f"page-{width}x{height}.png"), full_page=True)
    sizes = page.evaluate("() => [document.documentElement.scrollWidth, document.body.scrollWidth, "
                          "window.innerWidth]")
    wide = page.evaluate("() => [...document.querySelectorAll('body *')].filter(e => "
                         "e.getBoundingClientRect().right > window.innerWidth + 0.5).map(e => e.id || e.tagName)")
    assert wide == [], wide
    assert sizes[0] <= sizes[2] and sizes[1] <= sizes[2], sizes
    assert page.blocked == [] and page.js_errors == [], (page.blocked, page.js_errors)


def _png() -> bytes:
    from _serve_common import png_bytes

    return png_bytes((48, 48))
