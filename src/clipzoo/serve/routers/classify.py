"""``POST /classify`` (zero-shot, over the server's vocabulary or the request's labels) and ``POST /rank``."""
from __future__ import annotations

import time

from fastapi import APIRouter, Depends

from ..bodies import JsonOrFormRoute, form_doc
from ..deps import ClassifyBody, RankBody, ServiceDep, Uploads, require_token
from ..schemas import ClassifyRequest, ClassifyResponse, RankRequest, RankResponse, took_ms

router = APIRouter(tags=["classify"], route_class=JsonOrFormRoute, dependencies=[Depends(require_token)])


@router.post("/classify", response_model=ClassifyResponse, openapi_extra=form_doc(ClassifyRequest))
async def classify(query: ClassifyBody, uploads: Uploads, service: ServiceDep):
    """Zero-shot classify one image over the server's vocabulary or the request's labels."""
    t0 = time.perf_counter()
    image = await service.decode(uploads.get("image", query.body.image), "image")
    top = await service.on_model_thread("classify", service.classify, image, query.labels, query.template,
                                        query.body.k)
    return {"labels": [{"label": lab, "probability": p} for lab, p in top], "vocabulary": query.source,
            "took_ms": took_ms(t0)}


@router.post("/rank", response_model=RankResponse, openapi_extra=form_doc(RankRequest))
async def rank(body: RankBody, uploads: Uploads, service: ServiceDep):
    """One image, many texts -> the texts ranked with the model's probabilities."""
    t0 = time.perf_counter()
    texts = body.texts
    image = await service.decode(uploads.get("image", body.image), "image")
    logits, probs = await service.on_model_thread("rank", service.rank, image, texts, body.truncate)
    order = sorted(range(len(texts)), key=lambda i: -logits[i])
    return {"probability": getattr(service.model, "probability", "softmax"), "took_ms": took_ms(t0),
            "ranking": [{"text": texts[i], "index": i, "logit": logits[i], "probability": probs[i]}
                        for i in order]}
