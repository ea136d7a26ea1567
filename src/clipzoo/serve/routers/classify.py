"""``POST /classify`` (zero-shot, over the server's vocabulary or the request's labels) and ``POST /rank``."""
from __future__ import annotations

import time
from collections import Counter

from fastapi import APIRouter, Depends

from ...comparator import competition_ranks
from ..bodies import JsonOrFormRoute, form_doc
from ..deps import ClassifyBody, RankBody, ServiceDep, Uploads, require_token
from ..schemas import ClassifyRequest, ClassifyResponse, RankRequest, RankResponse, took_ms

router = APIRouter(tags=["classify"], route_class=JsonOrFormRoute, dependencies=[Depends(require_token)])


@router.post("/classify", response_model=ClassifyResponse, openapi_extra=form_doc(ClassifyRequest))
async def classify(query: ClassifyBody, uploads: Uploads, service: ServiceDep):
    """Zero-shot classify one image over the server's vocabulary or the request's labels."""
    t0 = time.perf_counter()
    image = await service.decode(uploads.get("image", query.body.image), "image")
    k = query.body.k  # one more than asked: a tie with the first label left out is still shown as a tie
    top = await service.on_model_thread("classify", service.classify, image, query.labels, query.template, k + 1)
    return {"labels": ranked([{"label": lab, "probability": p} for lab, p in top])[:k], "vocabulary": query.source,
            "took_ms": took_ms(t0)}


@router.post("/rank", response_model=RankResponse, openapi_extra=form_doc(RankRequest))
async def rank(body: RankBody, uploads: Uploads, service: ServiceDep):
    """One image, many texts -> the texts ranked with the model's probabilities."""
    t0 = time.perf_counter()
    texts = body.texts
    image = await service.decode(uploads.get("image", body.image), "image")
    logits, probs = await service.on_model_thread("rank", service.rank, image, texts, body.truncate)
    order = sorted(range(len(texts)), key=lambda i: -probs[i])  # stable: tied texts keep the request's order
    return {"probability": getattr(service.model, "probability", "softmax"), "took_ms": took_ms(t0),
            "ranking": ranked([{"text": texts[i], "index": i, "logit": logits[i], "probability": probs[i]}
                               for i in order])}


def ranked(rows: list[dict]) -> list[dict]:
    """``rows`` (best first) with ``rank`` (ties share one) and ``tie`` set — never an arbitrary winner."""
    ranks = competition_ranks(r["probability"] for r in rows)
    shared = Counter(ranks)
    for row, rank in zip(rows, ranks):
        row["rank"], row["tie"] = rank, shared[rank] > 1
    return rows
