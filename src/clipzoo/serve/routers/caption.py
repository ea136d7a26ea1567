"""``POST /caption``: one image -> a caption from the server's CoCa model (400 for a model that cannot caption)."""
from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ..bodies import JsonOrFormRoute, form_doc
from ..deps import ServiceDep, Uploads, require_token
from ..schemas import Base64Image, RequestBody, took_ms

MAX_CAPTION_TOKENS = 77  # CoCa's text context: a longer caption has no positions to run on
MAX_BEAMS = 16

router = APIRouter(tags=["caption"], route_class=JsonOrFormRoute, dependencies=[Depends(require_token)])


class CaptionRequest(RequestBody):
    """One image (base64, or an uploaded file in a form) and open_clip's generation options."""

    image: str = Field(..., min_length=1, description=Base64Image.description)
    generation_type: Literal["beam_search", "top_k", "top_p"] = "beam_search"
    seq_len: int = Field(30, ge=2, le=MAX_CAPTION_TOKENS, description="Longest caption in tokens.")
    min_seq_len: int = Field(5, ge=0, le=MAX_CAPTION_TOKENS)
    num_beams: int = Field(6, ge=1, le=MAX_BEAMS)
    num_beam_groups: int = Field(3, ge=1, le=MAX_BEAMS)
    top_k: int = Field(1, ge=1, le=1000)
    top_p: float = Field(0.1, ge=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0, le=100.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=100.0)
    seed: int | None = Field(None, ge=0, le=2 ** 63 - 1, description="Seed for top_k / top_p sampling.")


class CaptionResponse(BaseModel):
    caption: str
    tokens: list[int]
    model: str
    took_ms: float


@router.post("/caption", response_model=CaptionResponse, openapi_extra=form_doc(CaptionRequest))
async def caption(body: CaptionRequest, uploads: Uploads, service: ServiceDep):
    """Caption one image with the server's CoCa model (open_clip's ``generate`` options)."""
    t0 = time.perf_counter()
    image = await service.decode(uploads.get("image", body.image), "image")
    options = body.model_dump(exclude={"image"})
    ids = await service.on_model_thread("caption", _caption, service.model, image, options)
    return {"caption": service.model.decode(ids), "tokens": ids.tolist(), "model": service.model_name,
            "took_ms": took_ms(t0)}


def _caption(model, image, options: dict):
    return model.generate([image], **options)[0]
