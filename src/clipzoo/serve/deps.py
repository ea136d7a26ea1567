"""The routes' dependencies: the service, the bearer token, an item by id, and the limits a request model
cannot state (texts, labels, templates: a 400 with the service's message, see :mod:`clipzoo.serve.limits`).

With ``token`` set, every API route, ``/thumb`` and ``/metrics`` need ``Authorization: Bearer <token>``
(401 otherwise); ``/health``, the web page and its static files, and the OpenAPI docs stay open.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ClipzooError, NotFoundError
from . import bodies
from .limits import check_labels, check_template, check_texts
from .middleware import bearer_problem
from .schemas import ClassifyRequest, EmbedRequest, RankRequest
from .state import Service

ITEM_ID = re.compile(r"^[0-9]{1,18}$")


async def get_service(request: Request) -> Service:
    """The app's :class:`~clipzoo.serve.state.Service`."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
Uploads = Annotated[dict[str, bytes], Depends(bodies.uploads)]

bearer = HTTPBearer(auto_error=False, description="Set when the server was started with --token.")


async def require_token(request: Request, service: ServiceDep,
                        _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """401 unless the request carries the server's bearer token (when it has one); ``bearer`` documents it in
    the OpenAPI schema. A request with a body met the same check earlier (:class:`.middleware.TokenGuard`)."""
    problem = None if service.token is None else bearer_problem(request.headers.get("authorization"), service.token)
    if problem is not None:
        raise StarletteHTTPException(401, problem[0], headers={"WWW-Authenticate": problem[1]})


async def indexed_item(item_id: str, service: ServiceDep) -> dict:
    """The item with the id in the URL: 404 for anything that is not an id of this index."""
    if not ITEM_ID.match(item_id):
        raise StarletteHTTPException(404, f"no item {item_id[:40]!r}: ids are whole numbers from search results")
    number = int(item_id)
    try:
        return dict(await service.on_model_thread("item", service.index.item, number))
    except NotFoundError:  # the library's message names the index's path on the server
        raise StarletteHTTPException(404, f"no item with id {number} in this index") from None


IndexedItem = Annotated[dict, Depends(indexed_item)]


@dataclass(frozen=True)
class Classification:
    """A /classify request with what it scores against: the labels, where they came from, the template."""

    body: ClassifyRequest
    labels: tuple[str, ...]
    source: str  # "request" or "server"
    template: str


async def classify_request(body: ClassifyRequest, service: ServiceDep) -> Classification:
    """The /classify body with the request's labels (checked: each once, as in a vocabulary file) or the server's
    vocabulary, and the checked template."""
    if body.labels is not None:
        labels, source = tuple(check_labels(body.labels)), "request"
    elif service.vocabulary:
        labels, source = tuple(service.vocabulary), "server"
    else:
        raise ClipzooError("no labels: send 'labels' in the request, or start the server with "
                           "--labels vocab.txt")
    return Classification(body, labels, source, check_template(body.template or service.template))


async def rank_request(body: RankRequest) -> RankRequest:
    """The /rank body, its texts checked."""
    check_texts(body.texts, "texts")
    return body


async def embed_request(body: EmbedRequest) -> EmbedRequest:
    """The /embed body, its texts (when it sends texts) checked."""
    if body.texts is not None:
        check_texts(body.texts, "texts")
    return body


ClassifyBody = Annotated[Classification, Depends(classify_request)]
RankBody = Annotated[RankRequest, Depends(rank_request)]
EmbedBody = Annotated[EmbedRequest, Depends(embed_request)]
