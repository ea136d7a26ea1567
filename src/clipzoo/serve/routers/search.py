"""``POST /search``: the index searched by text, image, embedding or an item's id."""
from __future__ import annotations

import functools
import time

from fastapi import APIRouter, Depends

from ..bodies import JsonOrFormRoute, form_doc
from ..deps import ServiceDep, Uploads, require_token
from ..limits import query_vector
from ..schemas import SearchRequest, SearchResponse, hit_out, took_ms

router = APIRouter(tags=["search"], route_class=JsonOrFormRoute, dependencies=[Depends(require_token)])


@router.post("/search", response_model=SearchResponse, openapi_extra=form_doc(SearchRequest))
async def search(body: SearchRequest, uploads: Uploads, service: ServiceDep):
    """Search the index by text, image (base64 or a multipart file), embedding, or an item's id."""
    t0 = time.perf_counter()
    kwargs = {"k": body.k, "partition": body.partition, "dedup": body.dedup}
    idx = service.index
    chunks = getattr(idx, "long_text", "truncate") == "chunks"  # a long query split and averaged: not batched
    if body.text is not None and (chunks or not body.text.strip()):  # the index's own 400 for a blank text
        kind, hits = "text", await service.on_model_thread("search_text", functools.partial(
            idx.search_text, body.text, **kwargs))
    elif body.text is not None:  # encoded in a batch with other requests' texts (serve/batcher.py)
        kind, hits = "text", await service.batcher.encode_text(
            [body.text], truncate=True, op="search_text", then=functools.partial(_search_row, idx, **kwargs))
    elif body.image is not None:
        image = await service.decode(uploads.get("image", body.image), "image")
        kind, hits = "image", await service.batcher.encode_image(
            [image], op="search_image", then=functools.partial(_search_row, idx, **kwargs))
    elif body.embedding is not None:
        vector = query_vector(body.embedding, int(service.model.embed_dim), "embedding", service.model_name)
        kind, hits = "embedding", await service.on_model_thread("search_embedding", functools.partial(
            idx.search_embedding, vector, **kwargs))
    else:
        def by_id():
            return idx.search_embedding(idx.embedding(body.id), **kwargs)

        kind, hits = "id", await service.on_model_thread("search_id", by_id)
    return {"query": kind, "k": body.k, "partition": body.partition, "took_ms": took_ms(t0),
            "generation": getattr(idx, "generation", None), "hits": [hit_out(h) for h in hits]}


def _search_row(idx, rows, **kwargs):
    """The index searched with the first row of encoded features (what search_text/search_image do)."""
    return idx.search_embedding(rows[0].float().cpu().numpy(), **kwargs)
