"""Request bodies sent as JSON or as a form, validated by FastAPI against one pydantic model.

The body routes (/search, /classify, /rank, /embed) declare their body as a request model
(:mod:`clipzoo.serve.schemas`), so FastAPI validates it and documents it as ``application/json``.
Clients may send the same fields as a multipart form instead (an urlencoded or text/plain body is a 415:
:class:`~clipzoo.serve.middleware.ContentTypeGuard`), with the image as a file rather than base64:
routes of class :class:`JsonOrFormRoute` turn such a form into that JSON object before FastAPI reads it.
A file's bytes go aside (the route reads them with :func:`uploads`; the model
sees a placeholder), and a list field may be sent repeated, as a JSON list, or one item per line (or
comma). :func:`form_doc` documents the form on the route (``openapi_extra``).

The route keeps the service's own answers for a body that is empty or not JSON (400), holds more than
:data:`~clipzoo.constants.MAX_JSON_VALUES` values (413), and for a file in a field that takes none (422); like
FastAPI's validation errors they are answered after the token check (the dependency :func:`body_problem`).
A body over :data:`~clipzoo.constants.JSON_INLINE_BYTES` is parsed in a worker thread (at most
:data:`~clipzoo.constants.BODY_PARSE_SLOTS` at once), and every check of it is linear and runs in C (regular
expressions, ``str.count``), so a large body never holds up the event loop.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from anyio import CapacityLimiter, to_thread
from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope

from ..constants import BODY_PARSE_SLOTS, JSON_INLINE_BYTES, MAX_JSON_VALUES
from ..errors import one_line

UPLOAD = "\0upload"
"""What a request model sees in a field sent as a file (its bytes are in :func:`uploads`)."""
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
UPLOADS_KEY = "clipzoo.uploads"
PROBLEM_KEY = "clipzoo.body_problem"
MAX_FORM_FILES = 8
MAX_FORM_FIELDS = 256
PARSE_LIMITER = CapacityLimiter(BODY_PARSE_SLOTS)
"""The worker threads large JSON bodies are parsed in (their own: the default pool decodes images)."""
_ANY_ESCAPE = re.compile(r"\\.", re.DOTALL)
_PLAIN_STRING = re.compile(r'"[^"]*"')  # a string once its escapes are gone: no quote or backslash inside
_ESCAPED_BACKSLASH = re.compile(r"\\\\")
_SURROGATE_PAIR = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


async def uploads(request: Request) -> dict[str, bytes]:
    """Dependency: the files of a form body, by field (empty for a JSON body)."""
    return request.scope.get(UPLOADS_KEY, {})


async def body_problem(request: Request) -> None:
    """Dependency (added to every :class:`JsonOrFormRoute`): raise what reading the body found wrong."""
    problem = request.scope.get(PROBLEM_KEY)
    if problem is not None:
        raise problem


class ParsedRequest(Request):
    """A request whose body was read and parsed already: FastAPI gets the parsed value, not a second parse.

    Its body reads as ``raw``; after that it receives from ``receive`` (the client's disconnect)."""

    def __init__(self, scope: Scope, raw: bytes, data: Any, receive: Receive):
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}

        super().__init__(scope, replay)
        self.parsed = data

    async def json(self) -> Any:
        return self.parsed


class JsonOrFormRoute(APIRoute):
    """A route whose body is its request model as JSON, or the same fields as a form (module docstring)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any):
        dependencies = list(kwargs.pop("dependencies", None) or ())
        if not any(d.dependency is body_problem for d in dependencies):
            dependencies.append(Depends(body_problem))
        super().__init__(path, endpoint, dependencies=dependencies, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        model = self.body_field.field_info.annotation if self.body_field is not None else None

        async def json_or_form(request: Request) -> Response:
            return await handler(await as_json(request, model))

        return json_or_form


async def as_json(request: Request, model: "type[BaseModel] | None") -> ParsedRequest:
    """``request`` with its body (JSON or a form) parsed; a problem is kept for :func:`body_problem`."""
    uploaded: dict[str, bytes] = {}
    try:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() in FORM_TYPES:
            data = await read_form(request, getattr(model, "form_files", ()), getattr(model, "form_lists", ()),
                                   uploaded)
            raw = json.dumps(data).encode()
        else:
            raw = await request.body()
            name = getattr(model, "__name__", "an object")
            if len(raw) <= JSON_INLINE_BYTES:
                data = read_json(raw, name)
            else:  # off the event loop: other requests are answered meanwhile
                data = await to_thread.run_sync(read_json, raw, name, limiter=PARSE_LIMITER)
    except StarletteHTTPException as exc:  # answered after the token check
        return ParsedRequest({**request.scope, PROBLEM_KEY: exc}, b"", None, request.receive)
    headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"content-type", b"content-length")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    return ParsedRequest({**request.scope, "headers": headers, UPLOADS_KEY: uploaded}, raw, data, request.receive)


def read_json(raw: bytes, model_name: str) -> Any:
    """A body parsed as JSON, whatever its content type (400 when it is empty or not JSON)."""
    if not raw:
        raise StarletteHTTPException(400, f"empty request body: send JSON ({model_name}) or a "
                                          "multipart form with an image file")
    try:
        text = raw.decode("utf-8-sig")  # a leading BOM is accepted, as json.loads(bytes) did
    except UnicodeDecodeError as exc:
        raise StarletteHTTPException(422, f"the request body is not valid UTF-8 (byte {exc.start}); send JSON "
                                          "encoded as UTF-8") from None
    values = json_values(text)
    if values > MAX_JSON_VALUES:
        raise StarletteHTTPException(413, f"the request body holds more than {MAX_JSON_VALUES:,} JSON values; "
                                          "no route takes that many")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise StarletteHTTPException(400, f"the request body is not valid JSON ({one_line(exc)})") from None
    where = lone_surrogate(data) if has_lone_surrogate(text) else None
    if where is not None:
        raise StarletteHTTPException(422, f"invalid request: {where}: a string holds a lone surrogate "
                                          "(\\ud800-\\udfff escape without its pair); send valid Unicode")
    return data


def json_values(text: str) -> int:
    """About how many values JSON ``text`` holds: its commas outside strings, plus one (an upper bound on the
    values of valid JSON but for nesting, which the parser bounds). Linear, in C: ``str.count``, and only when
    that count is over the limit, two regular expressions that never go back (escapes out, then strings)."""
    commas = text.count(",")
    if commas > MAX_JSON_VALUES:
        commas = _PLAIN_STRING.sub("", _ANY_ESCAPE.sub("_", text)).count(",")
    return commas + 1


def has_lone_surrogate(text: str) -> bool:
    """Whether JSON ``text`` (valid, and valid UTF-8: any surrogate in it is an escape) escapes a lone UTF-16
    surrogate. Linear, in C: escaped backslashes, then the surrogate pairs, are replaced left to right — as
    ``json.loads`` reads them — and any surrogate escape left is a lone one."""
    if _SURROGATE_ESCAPE.search(text) is None:
        return False
    text = _SURROGATE_PAIR.sub("_", _ESCAPED_BACKSLASH.sub("_", text))
    return _SURROGATE_ESCAPE.search(text) is not None


def lone_surrogate(data: Any) -> str | None:
    """Where in parsed JSON a string (value or key) holds a lone UTF-16 surrogate, or None. A list's numbers are
    skipped and an element's place written only once found, so a body of millions of values costs no string each."""
    stack: list[tuple[str, Any]] = [("body", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if _lone(value):
                return where
        elif isinstance(value, dict):
            for key, item in value.items():
                if _lone(key):
                    return f"{where} (a key)"
                if isinstance(item, (str, dict, list)):
                    stack.append((f"{where}.{key}" if key.isascii() else where, item))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    if _lone(item):
                        return f"{where}[{i}]"
                elif isinstance(item, (dict, list)):
                    stack.append((f"{where}[{i}]", item))
    return None


def _lone(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


async def read_form(request: Request, files: tuple[str, ...], lists: tuple[str, ...],
                    uploaded: dict[str, bytes]) -> dict[str, Any]:
    """A form -> the fields as the request model takes them; file bytes go into ``uploaded``."""
    part_size = max(request.app.state.service.max_body_bytes, 1 << 20)
    form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=part_size)
    try:
        return await _form_fields(form, files, lists, uploaded)
    finally:
        await form.close()


async def _form_fields(form: FormData, files: tuple[str, ...], lists: tuple[str, ...],
                       uploaded: dict[str, bytes]) -> dict[str, Any]:
    grouped: dict[str, list] = {}
    for key, value in form.multi_items():
        grouped.setdefault(key, []).append(value)
    data: dict[str, Any] = {}
    for key, values in grouped.items():
        sent = [v for v in values if isinstance(v, UploadFile)]
        if sent:
            if key not in files:
                why = (f"files are accepted only in {', '.join(files)}" if files else
                       "this route takes no file uploads; send the images base64-encoded in JSON")
                raise StarletteHTTPException(422, f"invalid request: {key[:100]}: {why}")
            uploaded[key] = await sent[0].read()
            data[key] = UPLOAD
        elif key in lists:
            data[key] = form_list([str(v) for v in values])
        else:
            data[key] = values[0]
    return data


def form_list(values: list[str]) -> Any:
    """A list field sent as form data: repeated fields, a JSON list, or one item per line (or comma)."""
    if len(values) > 1:
        return values
    text = values[0].strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    if len(lines) == 1 and "," in lines[0]:
        lines = [x.strip() for x in lines[0].split(",") if x.strip()]
    return lines


def form_doc(model: type[BaseModel]) -> dict:
    """``openapi_extra`` for a route whose body may also be a multipart form (files as binary fields)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    fields = {k: dict(v) for k, v in schema.get("properties", {}).items()}
    for name in getattr(model, "form_files", ()):
        if name in fields:
            fields[name] = {"type": "string", "format": "binary", "description": "The image file."}
    return {"requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": fields}}}}}
