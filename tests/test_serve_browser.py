"""The web page in real headless Chromium (Debian's ``chromium``, driven by Playwright).

Never runs ``playwright install``: it uses the system's Chromium (``.ci/run`` installs it) and skips
when there is none. Screenshots go to $CLIPZOO_ARTIFACTS or tests/artifacts/ (gitignored).
"""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from _serve_common import (  # noqa: E402,F401  (browser, built, server: fixtures)
    NEEDS_CHROMIUM,
    PAGE_LABELS,
    artifacts_dir,
    browser,
    built,
    png_bytes,
    server,
)

pytestmark = NEEDS_CHROMIUM
LABELS = PAGE_LABELS


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.js_errors = errors
    yield page
    context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return artifacts_dir(tmp_path_factory)


def test_type_a_query_and_see_results(page, server, shots):
    page.goto(server + "/")
    page.wait_for_selector("#info:has-text('42 items')")
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    page.wait_for_selector("#results .result")
    cards = page.locator("#results .result")
    assert cards.count() == 24  # the default k
    first = cards.first
    assert first.locator(".caption").inner_text().strip()  # captions from the indexed .txt files
    float(first.locator(".score").inner_text())
    # thumbnails load (naturalWidth > 0 once decoded)
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].slice(0, 6)"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert "for “a red circle”" in page.inner_text("#status")
    page.screenshot(path=str(shots / "browser-text-search.png"), full_page=True)

    # clicking a result searches by it: it comes back first, with similarity 1
    clicked = first.get_attribute("data-id")
    first.click()
    page.wait_for_selector(f"#status:has-text('item {clicked}')")
    assert page.locator("#results .result").first.get_attribute("data-id") == clicked
    assert float(page.locator("#results .result .score").first.inner_text()) == pytest.approx(1.0, abs=1e-3)
    page.screenshot(path=str(shots / "browser-more-like-this.png"), full_page=True)

    # a partition filter keeps results in that folder
    page.select_option("#partition", "star")
    page.wait_for_function("() => [...document.querySelectorAll('#results .where')].length > 0 && "
                           "[...document.querySelectorAll('#results .where')]"
                           ".every(e => e.textContent.startsWith('star'))")
    assert not page.js_errors, page.js_errors


def test_upload_an_image_and_see_its_classification(page, server, shots, built):
    image = sorted(built.images.glob("square/*.png"))[0]
    page.goto(server + "/")
    page.wait_for_selector("#info:has-text('7 labels')")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#classes li.class")
    rows = page.locator("#classes li.class")
    assert rows.count() == 5
    labels = [rows.nth(i).locator(".label").inner_text() for i in range(5)]
    assert set(labels) <= set(LABELS)
    percents = [float(rows.nth(i).locator(".prob").inner_text().strip().rstrip("%")) for i in range(5)]
    assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.01
    # the same upload searched the index: the image finds itself first
    page.wait_for_selector(f"#status:has-text('{image.name}')")
    first = page.locator("#results .result").first
    assert first.locator(".where").inner_text().endswith(image.name)
    assert page.is_visible("#preview")
    page.screenshot(path=str(shots / "browser-upload-classify.png"), full_page=True)

    # labels typed in the page are used instead of the server's vocabulary
    page.fill("#labels", "red thing, blue thing")
    page.set_input_files("#file", {"name": "dot.png", "mimeType": "image/png", "buffer": png_bytes((40, 40))})
    page.wait_for_function("() => document.querySelectorAll('#classes li.class').length === 2")
    got = sorted(page.locator("#classes .label").all_inner_texts())
    assert got == ["blue thing", "red thing"]
    assert not page.js_errors, page.js_errors


def test_a_bad_upload_shows_the_servers_message(page, server, shots):
    page.goto(server + "/")
    page.wait_for_selector("#info:has-text('items')")
    page.set_input_files("#file", {"name": "broken.png", "mimeType": "image/png", "buffer": b"not an image at all"})
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.inner_text("#error")
    page.screenshot(path=str(shots / "browser-bad-upload.png"), full_page=True)
    # and the page still works
    page.fill("#query", "a blue square")
    page.press("#query", "Enter")
    page.wait_for_selector("#results .result")
    page.wait_for_selector("#error", state="hidden")


def test_token_protected_server_asks_for_the_token(browser, built, shots):
    from clipzoo.serve import create_app, running

    app = create_app(built.index, labels=LABELS, token="s3cret", model=built.model)
    with running(app) as url:
        context = browser.new_context()
        page = context.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#token-form:not([hidden])")
        page.fill("#token", "s3cret")
        page.click("#token-form button")
        page.wait_for_selector("#info:has-text('42 items')")
        page.fill("#query", "a green star")
        page.press("#query", "Enter")
        page.wait_for_selector("#results .result")
        # thumbnails are fetched with the token (an <img> alone could not send it)
        page.wait_for_function("() => [...document.querySelectorAll('#results img')].slice(0, 4)"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(shots / "browser-token.png"), full_page=True)
        context.close()
