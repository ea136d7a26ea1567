"""``POST /embed``: texts or base64 images -> embedding vectors."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from ..bodies import JsonOrFormRoute
from ..deps import EmbedBody, ServiceDep, require_token
from ..schemas import EmbedResponse

router = APIRouter(tags=["embed"], route_class=JsonOrFormRoute, dependencies=[Depends(require_token)])


@router.post("/embed", response_model=EmbedResponse)
async def embed(body: EmbedBody, service: ServiceDep):
    """Texts or base64 images (JSON) -> embedding vectors (L2-normalised unless ``normalize`` is false)."""
    if body.texts is not None:
        feats = await service.batcher.encode_text(body.texts, normalize=body.normalize, truncate=body.truncate)
        modality = "text"
    else:
        images = await service.decode_many([(b64, f"images[{i}]") for i, b64 in enumerate(body.images)])
        feats = await service.batcher.encode_image(images, normalize=body.normalize)
        modality = "image"
    return {"modality": modality, "dim": int(feats.shape[1]), "model": service.model_name,
            "embeddings": feats.float().cpu().tolist()}
