"""The API docs served from the package, not from a CDN: ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) work
offline. FastAPI's own pages load their JavaScript and CSS from cdn.jsdelivr.net (and ReDoc its fonts from
Google), so on a machine without internet they are blank; here the same pages point at
``/docs-assets/…``, the files of the ``fastapi-offline`` package (in the ``search`` extra: Swagger UI's
``swagger-ui-bundle.js`` and ``swagger-ui.css``, ReDoc's ``redoc.standalone.js``, a favicon).

``create_app`` builds its FastAPI with ``docs_url=None, redoc_url=None`` and includes :data:`router`.
"""
from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..extras import require

ASSETS_URL = "/docs-assets"
ASSETS = {  # file name -> media type: exactly the files served, nothing else of the package's folder
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
# the one URL off the server that ReDoc's bundle fetches at run time (its sidebar's logo; hidden when it fails):
# pointed at our favicon, so that an offline browser makes no request that cannot succeed
PATCHES = {"redoc.standalone.js": ((b'"https://cdn.redoc.ly/redoc/logo-mini.svg"',
                                    f'"{ASSETS_URL}/favicon.png"'.encode()),)}
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
ASSET_HEADERS = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


def assets_dir() -> Path:
    """The folder holding the Swagger UI and ReDoc files (``fastapi-offline``'s ``static/``)."""
    require("fastapi_offline", "the offline API docs (/docs, /redoc)")
    return Path(str(files("fastapi_offline") / "static"))


def _prefix(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


@router.get("/docs")
async def swagger_ui(request: Request):
    base = _prefix(request)
    return get_swagger_ui_html(
        openapi_url=f"{base}{request.app.openapi_url}", title=f"{request.app.title} — API docs",
        swagger_js_url=f"{base}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{base}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
        oauth2_redirect_url=f"{base}{OAUTH2_REDIRECT}",
        swagger_ui_parameters={"validatorUrl": None})  # never asks validator.swagger.io


@router.get(OAUTH2_REDIRECT)
async def swagger_ui_redirect():
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request):
    base = _prefix(request)
    return get_redoc_html(openapi_url=f"{base}{request.app.openapi_url}", title=f"{request.app.title} — API reference",
                          redoc_js_url=f"{base}{ASSETS_URL}/redoc.standalone.js",
                          redoc_favicon_url=f"{base}{ASSETS_URL}/favicon.png", with_google_fonts=False)


@router.get(ASSETS_URL + "/{name}")
async def asset(name: str):
    media_type = ASSETS.get(name)
    if media_type is None:
        raise StarletteHTTPException(404, f"no docs asset {name!r}")
    if name in PATCHES:
        return Response(patched(name), media_type=media_type, headers=ASSET_HEADERS)
    return FileResponse(assets_dir() / name, media_type=media_type, headers=ASSET_HEADERS)


@functools.lru_cache(maxsize=len(PATCHES))
def patched(name: str) -> bytes:
    """The asset ``name`` with its URLs off the server replaced (:data:`PATCHES`), read once."""
    data = (assets_dir() / name).read_bytes()
    for old, new in PATCHES[name]:
        data = data.replace(old, new)
    return data
