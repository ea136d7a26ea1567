"""The search page probed as an attacker, second round (findings of the "web" probe), mostly in real headless
Chromium (Debian's ``chromium`` via Playwright; skipped without either): a video plays on a token-protected server
and is fetched only when played; a token that no browser can send (from a link or typed) is refused in one line
and the token form comes back; the server refuses such a token at start; a ``?token=`` never reaches the access
log; a slower earlier search never replaces a later one; a 60,000-character caption takes a few lines; every
HTML answer refuses to be framed; bidi controls and invisible characters in names and captions are shown."""
from __future__ import annotations

import importlib.util
import io
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from _serve_common import NEEDS_CHROMIUM, browser, png_bytes  # noqa: E402,F401  (browser: a fixture)
from clipzoo.errors import ClipzooError  # noqa: E402

TOKEN = "s3cretTOKEN"
MODEL = "clipzoo/tiny-shapes"
HAS_AV = importlib.util.find_spec("av") is not None
RTL_NAME = "rtl\u202egnp.exe.png"
RTL_CAPTION = "caption with \u202eRTL override\u202c and zero\u200bwidth"
LONG_CAPTION = "word " * 12_000  # 60,000 characters: a build takes captions up to 64 KB
UNSENDABLE = ("the token holds {!r} (U+{:04X}), which an HTTP client cannot send as it is: use visible ASCII only "
              "(letters, digits, punctuation; no spaces), e.g. "
              "python -c 'import secrets; print(secrets.token_urlsafe(24))'")
STEP_MS = 5_000  # the longest any one step of a browser test waits


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    """Two images (one named with a right-to-left override and captioned with one, one with a 60,000-character
    caption) and, with PyAV, a small video; built with the embedded model."""
    from PIL import Image

    from clipzoo.index import build_index

    root = tmp_path_factory.mktemp("web2")
    plain = root / "images" / "plain"
    plain.mkdir(parents=True)
    Image.new("RGB", (32, 32), (230, 30, 30)).save(plain / RTL_NAME)
    (plain / RTL_NAME).with_suffix(".txt").write_text(RTL_CAPTION, encoding="utf-8")
    Image.new("RGB", (32, 32), (30, 30, 230)).save(plain / "long.png")
    (plain / "long.txt").write_text(LONG_CAPTION, encoding="utf-8")
    if HAS_AV:
        from _video_common import make_video

        (root / "images" / "clips").mkdir()
        make_video(root / "images" / "clips" / "red.webm", count=16, size=48)
    build_index(root / "images", root / "index", model=MODEL, workers=0)
    return root / "index"


def _serve(index: Path, **options):
    from clipzoo.serve import create_app, running

    return running(create_app(index, **options))


@pytest.fixture(scope="module")
def open_server(index):
    with _serve(index) as url:
        yield url


@pytest.fixture(scope="module")
def token_server(index):
    with _serve(index, token=TOKEN) as url:
        yield url


@pytest.fixture
def page(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(STEP_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.js_errors = errors
    yield page
    context.close()


def _search(page, text: str) -> None:
    page.fill("#query", text)
    page.press("#query", "Enter")
    page.wait_for_selector(f"#status:has-text('for “{text}”')")


# ------------------------------------------------------------------ 1. videos on a token-protected server
@NEEDS_CHROMIUM
@pytest.mark.skipif(not HAS_AV, reason="PyAV (the video extra) is not installed: no video to index")
def test_video_plays_under_the_token_and_is_fetched_only_when_played(page, token_server):
    """The page's CSP refused the blob: it made of a video fetched with the token (no video ever played on a
    token-protected server), and every video result was downloaded whole as soon as it was shown."""
    videos: list[dict] = []
    page.on("request", lambda r: videos.append(r.headers) if "/video/" in r.url else None)
    page.goto(token_server + f"/#token={TOKEN}")
    page.wait_for_selector("#info:has-text('3 items')")
    _search(page, "a red square")
    card = page.locator("#results .result.video")
    page.wait_for_timeout(300)
    assert videos == [] and card.locator("video").get_attribute("src") is None  # shown, not downloaded
    card.locator("button.play").click()
    page.wait_for_function("() => document.querySelector('#results video').currentTime > 0.2")
    assert card.locator("video").evaluate("v => v.src.startsWith('blob:') && v.error === null && v.controls")
    assert len(videos) == 1 and videos[0]["authorization"] == f"Bearer {TOKEN}"
    assert not page.js_errors, page.js_errors  # no "violates the following Content Security Policy"


# ------------------------------------------------------------------ 2. a token no browser can send
@NEEDS_CHROMIUM
@pytest.mark.parametrize("link, shown", [("%E2%9C%93", "\\u2713"), ("a%0Ab", "\\u000A")])
def test_a_link_token_that_cannot_be_sent_is_refused_and_the_page_keeps_working(page, open_server, link, shown):
    """``/?token=✓`` stored a token every later fetch threw on ("String contains non ISO-8859-1 code point"),
    before any request: the token form stayed hidden, and a reload did not help."""
    page.goto(open_server + f"/?token={link}")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == (f"the token in the link holds {shown}: a token is visible ASCII only "
                                         "(letters, digits, punctuation, no spaces); enter it again")
    assert page.is_visible("#token-form") and "token" not in page.url
    assert page.evaluate("sessionStorage.getItem('clipzoo-token')") is None
    _search(page, "a red square")
    assert page.locator("#results .result").count() == 2 + HAS_AV and page.is_hidden("#error")
    page.reload()
    page.wait_for_selector("#info:has-text('items')")
    _search(page, "a blue square")
    assert page.is_hidden("#error") and not page.js_errors, page.js_errors


@NEEDS_CHROMIUM
def test_a_typed_token_that_cannot_be_sent_is_refused_and_the_form_stays(page, token_server):
    """A token pasted with a typographic apostrophe hid the form for good: every fetch threw before sending."""
    page.goto(token_server + "/")
    page.wait_for_selector("#token-form:not([hidden])")
    page.fill("#token", TOKEN + "\u2019")
    page.click("#token-form button")
    page.wait_for_selector("#error:has-text('U+2019'), #error:has-text('\\\\u2019')")
    assert page.inner_text("#error") == ("the token holds \\u2019: a token is visible ASCII only (letters, digits, "
                                         "punctuation, no spaces); enter it again")
    assert page.is_visible("#token-form") and page.evaluate("sessionStorage.getItem('clipzoo-token')") is None
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector("#info:has-text('items')")
    _search(page, "a red square")
    assert page.is_hidden("#error") and page.is_hidden("#token-form")


# ------------------------------------------------------------------ 3. the server refuses such a token at start
@pytest.mark.parametrize("token", ["пароль", "pässwörd", "two words", "tab\there", TOKEN + "\u2019"])
def test_the_server_refuses_a_token_no_client_can_send(index, token):
    """``CLIPZOO_TOKEN=пароль`` started a server every client was refused by; ``pässwörd`` let Python's requests
    (Latin-1) in and refused curl (UTF-8)."""
    from clipzoo.serve import create_app

    bad = next(c for c in token if not "!" <= c <= "~")
    with pytest.raises(ClipzooError) as err:
        create_app(index, token=token)
    assert str(err.value) == UNSENDABLE.format(bad, ord(bad))


def test_clipzoo_serve_says_so_in_one_line(index, monkeypatch):
    from typer.testing import CliRunner

    import clipzoo.cli.serve as serve_cli
    import clipzoo.serve
    from clipzoo.cli import app as cli_app

    started, loaded = [], []
    monkeypatch.setattr(clipzoo.serve, "run", lambda *a, **k: started.append(a))
    monkeypatch.setattr(serve_cli, "query_model", lambda *a, **k: loaded.append(a))
    res = CliRunner().invoke(cli_app, ["serve", str(index), "--port", "5999"], env={"CLIPZOO_TOKEN": "пароль"})
    assert res.exit_code == 2 and not started and not loaded, res.output  # refused before the model loads
    assert res.output.strip().splitlines()[-1] == "error: " + UNSENDABLE.format("п", ord("п"))


def test_the_token_is_compared_as_the_bytes_sent(index):
    """Any bytes in the header are a 401 (never a 500); the token's own bytes let the request in."""
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    with TestClient(create_app(index, token=TOKEN)) as client:
        for sent in (f"Bearer {TOKEN}\u2019".encode(), f"Bearer {TOKEN}\u2019".encode("latin-1", "replace"),
                     b"Bearer " + "пароль".encode(), f"Bearer {TOKEN[:-1]}".encode()):
            r = client.get("/info", headers={"Authorization": sent})
            assert (r.status_code, r.json()["detail"]) == (401, "wrong bearer token")
        assert client.get("/info", headers={"Authorization": f"Bearer {TOKEN}".encode()}).status_code == 200


# ------------------------------------------------------------------ 4. ?token= never reaches the access log
def test_a_token_in_the_link_never_reaches_the_access_log(index):
    from clipzoo.serve import create_app, running

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    levels = {name: logging.getLogger(name).level for name in ("uvicorn", "uvicorn.access", "uvicorn.error")}
    with running(create_app(index, token=TOKEN), log_level="info") as url:
        logging.getLogger("uvicorn.access").addHandler(handler)  # after uvicorn configured its loggers
        try:
            for path in (f"/?token={TOKEN}", f"/?q=a&TOKEN={TOKEN}&x=1", f"/info?token={TOKEN}"):
                try:
                    urllib.request.urlopen(url + path, timeout=10).close()
                except urllib.error.HTTPError as exc:  # /info without the header: 401
                    assert exc.code == 401
            with urllib.request.urlopen(url + "/", timeout=10) as r:
                policy = r.headers["Referrer-Policy"]
        finally:
            logging.getLogger("uvicorn.access").removeHandler(handler)
    for name, level in levels.items():  # the other servers of this process log as quietly as before
        logging.getLogger(name).setLevel(level)
    log = stream.getvalue()
    assert TOKEN not in log, log
    assert '"GET /?token=[redacted] HTTP/1.1" 200' in log and '"GET /?q=a&TOKEN=[redacted]&x=1 HTTP/1.1" 200' in log
    assert '"GET /info?token=[redacted] HTTP/1.1" 401' in log
    assert policy == "no-referrer"  # nor in the Referer of the page's own requests


# ------------------------------------------------------------------ 5. the newest search wins
DELAY_IMAGE_SEARCH = """(() => {
  const fetch0 = window.fetch;
  window.fetch = async (input, init) => {
    if (init && init.body instanceof FormData && String(input).endsWith("search")) {
      await new Promise((r) => setTimeout(r, 1200));  // a large upload, or a busy server
    }
    return fetch0(input, init);
  };
})();"""


@NEEDS_CHROMIUM
def test_a_slower_earlier_search_never_replaces_a_later_one(page, open_server):
    """An image search answered after a later text search replaced its results: the box said one query, the
    grid and the status showed another."""
    page.add_init_script(DELAY_IMAGE_SEARCH)
    page.goto(open_server + "/")
    page.wait_for_selector("#info:has-text('items')")
    page.set_input_files("#file", files=[{"name": "blue.png", "mimeType": "image/png",
                                          "buffer": png_bytes(color=(30, 30, 230))}])
    _search(page, "a red square")
    text_results = page.locator("#results .result .where").all_inner_texts()
    page.wait_for_timeout(1800)  # the image search's answer would have come by now
    assert page.inner_text("#status").startswith(f"{2 + HAS_AV} results for “a red square”")
    assert page.locator("#results .result .where").all_inner_texts() == text_results
    assert page.is_hidden("#error") and not page.js_errors, page.js_errors


# ------------------------------------------------------------------ 6. a long caption takes a few lines
@NEEDS_CHROMIUM
def test_a_60000_character_caption_takes_a_few_lines(page, open_server):
    """One 60,000-character caption made every card of its row about 74,000 px tall."""
    page.goto(open_server + "/")
    _search(page, "a blue square")
    heights = page.eval_on_selector_all("#results .result", "cs => cs.map(c => c.getBoundingClientRect().height)")
    assert max(heights) < 400, heights
    assert page.evaluate("document.documentElement.scrollHeight") < 1500
    titles = page.eval_on_selector_all("#results .caption", "cs => cs.map(c => c.title.length)")
    assert len(LONG_CAPTION.strip()) in titles  # the whole caption, on hover


# ------------------------------------------------------------------ 7. nothing can be framed
def test_every_html_answer_refuses_to_be_framed(index):
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    with TestClient(create_app(index)) as client:
        page = client.get("/")
        csp = page.headers["content-security-policy"]
        for part in ("frame-ancestors 'none'", "media-src 'self' blob:", "base-uri 'none'", "form-action 'self'",
                     "script-src 'self'"):
            assert part in csp, csp
        for path in ("/", "/docs", "/redoc", "/static/app.js", "/health", "/nothing"):
            r = client.get(path)
            assert (r.headers["x-frame-options"], r.headers["x-content-type-options"]) == ("DENY", "nosniff"), path
        for path in ("/docs", "/redoc"):
            assert "frame-ancestors 'none'" in client.get(path).headers["content-security-policy"], path
        r = client.get("/static/index.html")  # the page without its headers: not served
        assert r.status_code == 404 and r.json() == {"detail": "no page file 'index.html'"}


@NEEDS_CHROMIUM
def test_another_site_cannot_frame_the_page_and_docs_still_work(page, open_server):
    page.set_content(f'<iframe src="{open_server}/"></iframe><iframe src="{open_server}/docs"></iframe>')
    page.wait_for_timeout(500)
    framed = [f for f in page.frames if f is not page.main_frame]
    assert len(framed) == 2
    for f in framed:
        assert f.evaluate("document.getElementById('info') || document.querySelector('.swagger-ui')") is None
    page.js_errors.clear()  # the refusals themselves are console errors
    page.goto(open_server + "/docs")
    page.wait_for_selector(".swagger-ui .info .title:has-text('clipzoo')")
    assert not page.js_errors, page.js_errors


# ------------------------------------------------------------------ 8. bidi controls and invisible characters
@NEEDS_CHROMIUM
def test_bidi_controls_and_invisible_characters_are_shown(page, open_server):
    """``rtl\\u202egnp.exe.png`` was drawn as ``rtlexe.png``…: a name could pose as another."""
    page.goto(open_server + "/")
    _search(page, "a red square")
    card = page.locator("#results .result", has_text="rtl")
    assert card.locator(".where").inner_text() == "plain · plain/rtl\\u202Egnp.exe.png"
    assert card.locator(".caption").inner_text() == "caption with \\u202ERTL override\\u202C and zero\\u200Bwidth"
    assert card.locator(".caption").evaluate("c => getComputedStyle(c).unicodeBidi") == "isolate"
    assert not page.js_errors, page.js_errors
