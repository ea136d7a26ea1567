"""clip-retrieval's back-end API beside ours, so its users (``ClipClient``, its web front end) can switch.

- ``POST /knn-service``: the fields of clip-retrieval's ``KnnService`` — ``text``, ``image`` (base64),
  ``image_url`` (422 "URL fetching is disabled" unless the server runs with ``--allow-url``; then fetched
  within bounds, :mod:`clipzoo.serve.url_fetch`), ``embedding_input``, ``modality``, ``num_images``,
  ``num_result_ids``, ``indice_name``, ``deduplicate``; ``use_mclip``, the aesthetic, safety and violence
  fields are accepted and change nothing (as on a clip-retrieval back end without those models). The
  answer is a JSON list of ``{"id", "similarity"}``, the first ``num_images`` with their metadata
  (``url`` of the thumbnail, ``caption``, ``relpath``, ``partition``) merged in, as clip-retrieval does.
- ``POST /metadata``: ``{"ids", "indice_name"}`` -> ``[{"id", "metadata"}]`` (``metadata`` null for an
  id the index does not hold).
- ``GET /indices-list``: the names of the server's indices, the main one first.
- ``GET /indices/{name}/thumb/{id}``: the thumbnails the results' ``url`` points to.

The results are those of our ``/search`` on the same index (``deduplicate`` is its ``dedup`` at
clip-retrieval's threshold, :data:`DEDUP_THRESHOLD`, filled up to ``num_result_ids``). Bodies are read as
JSON whatever their Content-Type, since ``ClipClient`` sends none and clip-retrieval's front end sends
``text/plain`` (a form works too, with the image as a file); uploads go through the same decoder as our
routes; every route is behind the token when the server has one.
"""
from __future__ import annotations

import functools

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...errors import ClipzooError, NotFoundError
from ..bodies import JsonOrFormRoute
from ..deps import ITEM_ID, Uploads, require_token
from ..indices import IndexRegistry
from ..limits import query_vector
from ..schemas import KnnRequest, KnnResult, MetadataEntry, MetadataRequest
from ..state import Service
from ..url_fetch import UrlRefusedError

DEDUP_THRESHOLD = 0.94
"""clip-retrieval's near-duplicate threshold (cosine similarity), used for ``deduplicate``."""
URL_DISABLED = ("URL fetching is disabled on this server; send the image as base64 in 'image' (or start the "
                "server with --allow-url)")

router = APIRouter(tags=["clip-retrieval"], dependencies=[Depends(require_token)])  # the GET routes
# clip-retrieval's front end posts its JSON as text/plain; these read-only routes take it (middleware.ContentTypeGuard)
PLAIN_TEXT_JSON_PATHS = frozenset({"/knn-service", "/metadata"})
body_routes = APIRouter(tags=["clip-retrieval"], route_class=JsonOrFormRoute)  # the token: from `router`


def registry(request: Request) -> IndexRegistry:
    return request.app.state.indices


@router.get("/indices-list", response_model=list[str])
async def indices_list(request: Request):
    """clip-retrieval's index list: the names ``indice_name`` takes, the main index first."""
    return registry(request).names


@body_routes.post("/knn-service", response_model=list[KnnResult], response_model_exclude_none=True)
async def knn_service(body: KnnRequest, uploads: Uploads, request: Request):
    """clip-retrieval's nearest-neighbour query (its ``ClipClient`` and front end call it)."""
    indices = registry(request)
    name, service = indices.get(body.indice_name)
    if body.modality != "image":
        raise StarletteHTTPException(422, f"modality {body.modality[:20]!r} is not served: clipzoo indices hold "
                                          "image embeddings only; use modality 'image'")
    k = body.num_result_ids or body.num_images
    search = functools.partial(_search, service, k=k, dedup=DEDUP_THRESHOLD if body.deduplicate else None)
    if body.text:
        hits = await search("text", body.text)
    elif body.image is not None or "image" in uploads:
        hits = await search("image", await service.decode(uploads.get("image", body.image), "image"))
    elif body.image_url is not None:
        hits = await search("image", await service.decode(await _fetch(indices, body.image_url), "image_url"))
    elif body.embedding_input is not None:
        hits = await search("embedding", body.embedding_input)
    else:
        raise ClipzooError("nothing to search: give text, image (base64), image_url or embedding_input")
    base = _thumb_base(request, name)
    return [{"id": int(h.id), "similarity": float(h.score),
             **(_metadata(base, h.id, h.caption, h.relpath, h.partition) if rank < body.num_images else {})}
            for rank, h in enumerate(hits)]


@body_routes.post("/metadata", response_model=list[MetadataEntry])
async def metadata(body: MetadataRequest, request: Request):
    """clip-retrieval's metadata of result ids (its front end fetches the results past ``num_images``)."""
    if not body.ids:
        return []
    name, service = registry(request).get(body.indice_name)
    base = _thumb_base(request, name)

    def lookup():
        out = []
        for item_id in body.ids:
            try:
                m = service.index.item(item_id)
            except NotFoundError:
                out.append({"id": item_id, "metadata": None})
                continue
            out.append({"id": item_id, "metadata": _metadata(base, item_id, m["caption"], m["relpath"],
                                                             m["partition"])})
        return out

    return await service.on_model_thread("metadata", lookup)


@router.get("/indices/{indice_name}/thumb/{item_id}", responses={200: {"content": {"image/jpeg": {}}}})
async def indexed_thumb(indice_name: str, item_id: str, request: Request):
    """A JPEG thumbnail of an item of a named index (the ``url`` of ``/knn-service`` results)."""
    _, service = registry(request).get(indice_name)
    if not ITEM_ID.match(item_id):
        raise StarletteHTTPException(404, f"no item {item_id[:40]!r}: ids are whole numbers from search results")
    try:
        item = dict(await service.on_model_thread("item", service.index.item, int(item_id)))
    except NotFoundError:
        raise StarletteHTTPException(404, f"no item with id {int(item_id)} in index {indice_name!r}") from None
    return Response(await service.thumbnail(item), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


router.include_router(body_routes)


async def _search(service: Service, kind: str, query, *, k: int, dedup: float | None) -> list:
    """The hits of ``/search`` for the same query: texts and images encoded in batches with other requests'
    (:mod:`clipzoo.serve.batcher`), the index searched on ``service``'s model thread."""
    idx = service.index  # the generation this request reads, start to end
    then = functools.partial(_search_first_row, idx, k=k, dedup=dedup)
    if kind == "text" and query.strip():
        return await service.batcher.encode_text([query], truncate=True, op="knn_text", then=then)
    if kind == "image":
        return await service.batcher.encode_image([query], op="knn_image", then=then)
    if kind == "text":  # blank: the index's own 400
        return await service.on_model_thread("knn_text", functools.partial(idx.search_text, query, k=k, dedup=dedup))
    vector = query_vector(query, int(service.model.embed_dim), "embedding_input", service.model_name)
    return await service.on_model_thread("knn_embedding", functools.partial(
        idx.search_embedding, vector, k=k, dedup=dedup))


def _search_first_row(idx, rows, *, k: int, dedup: float | None) -> list:
    """The index searched with the first row of encoded features (as ``search_text`` / ``search_image`` do)."""
    return idx.search_embedding(rows[0].float().cpu().numpy(), k=k, dedup=dedup)


async def _fetch(indices: IndexRegistry, url: str) -> bytes:
    if indices.fetcher is None:
        raise StarletteHTTPException(422, URL_DISABLED)
    try:
        return await indices.fetcher.fetch_async(url)
    except UrlRefusedError as exc:
        raise StarletteHTTPException(422, str(exc)) from None


def _thumb_base(request: Request, name: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/indices/{name}/thumb/"


def _metadata(base: str, item_id: int, caption, relpath, partition) -> dict:
    return {"url": f"{base}{int(item_id)}", "caption": caption or "", "relpath": relpath, "partition": partition}
