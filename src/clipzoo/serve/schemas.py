"""Request and response bodies of the HTTP service: pydantic models that FastAPI validates and documents.

A request model says how it may also come as a form (:mod:`clipzoo.serve.bodies`): ``form_files``, the
fields that may be an uploaded file instead of base64, and ``form_lists``, the list fields a form may
send repeated, as a JSON list, or one item per line (or comma).
"""
from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .limits import (
    MAX_EMBED_IMAGES,
    MAX_EMBED_TEXTS,
    MAX_ITEM_ID,
    MAX_K,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    MAX_PARTITION_CHARS,
    MAX_RANK_TEXTS,
    MAX_TEMPLATE_CHARS,
    MAX_TEXT_CHARS,
)

Base64Image = Field(description="An image file's bytes, base64-encoded (a `data:image/...;base64,` URL is accepted).",
                    min_length=1)


class RequestBody(BaseModel):
    """A request body: unknown fields are refused; as a form, ``image`` may be a file."""

    model_config = ConfigDict(extra="forbid")
    form_files: ClassVar[tuple[str, ...]] = ("image",)
    form_lists: ClassVar[tuple[str, ...]] = ()

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``"k": true`` is not 1: JSON's booleans are refused where a number (or text) goes."""
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation is not bool:
            raise ValueError("expected a number or text here, not true or false")
        return value


class SearchRequest(RequestBody):
    """Exactly one query: ``text``, ``image`` (base64), ``embedding`` or ``id`` (an indexed item: "more like this")."""

    form_lists: ClassVar[tuple[str, ...]] = ("embedding",)

    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS, examples=["a red circle"])
    image: str | None = Field(None, min_length=1, description=Base64Image.description)
    embedding: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(None, min_length=1, max_length=65536,
                                             description="A query vector of the model's dimension.")
    id: int | None = Field(None, ge=0, le=MAX_ITEM_ID, description="Search by an indexed item's stored embedding.")
    k: int = Field(10, ge=1, le=MAX_K, description="How many results.")
    partition: str | None = Field(None, min_length=1, max_length=MAX_PARTITION_CHARS,
                                  description="Search only this partition (folder or label).")
    dedup: float | None = Field(None, gt=0.0, le=1.0, description=(
        "Drop results whose cosine similarity to a better result is at least this (near-duplicates); "
        "omit to keep all."))

    @model_validator(mode="after")
    def _one_query(self) -> "SearchRequest":
        given = [name for name in ("text", "image", "embedding", "id") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of text, image, embedding or id"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class HitOut(BaseModel):
    id: int
    score: float = Field(description="Cosine similarity to the query.")
    relpath: str | None = None
    caption: str | None = None
    partition: str | None = None
    thumb: str = Field(description="URL of the hit's thumbnail.")
    timestamp: float | None = Field(None, description="Video rows: where the row starts in the file (seconds).")
    video: str | None = Field(None, description="Video rows: URL of the video file (play it from #t=timestamp).")


class SearchResponse(BaseModel):
    query: str = Field(description="What was searched: text, image, embedding or id.")
    k: int
    partition: str | None = None
    took_ms: float
    generation: int | None = Field(None, description="The index generation that answered (every hit is from it).")
    hits: list[HitOut]


class ClassifyRequest(RequestBody):
    form_lists: ClassVar[tuple[str, ...]] = ("labels",)

    image: str = Field(..., min_length=1, description=Base64Image.description)
    labels: list[Annotated[str, Field(max_length=MAX_LABEL_CHARS)]] | None = Field(
        None, min_length=1, max_length=MAX_LABELS, description=(
        "Candidate labels; omit to use the server's vocabulary (`clipzoo serve --labels`)."))
    template: str | None = Field(None, max_length=MAX_TEMPLATE_CHARS, description=(
        "Prompt template: plain text with '{}' (or '{label}') for the label and no other brace; "
        "default 'a photo of a {}.'"))
    k: int = Field(5, ge=1, le=MAX_LABELS)


class LabelScore(BaseModel):
    label: str
    probability: float
    rank: int = Field(1, description="1 for the best; labels whose probabilities tie share a rank (1, 1, 3).")
    tie: bool = Field(False, description="Another label has the same probability: the model cannot tell them apart.")


class ClassifyResponse(BaseModel):
    labels: list[LabelScore]
    vocabulary: str = Field(description="'server' or 'request'.")
    took_ms: float


class EmbedRequest(RequestBody):
    """Texts or images (base64), not both."""

    form_files: ClassVar[tuple[str, ...]] = ()

    texts: list[str] | None = Field(None, min_length=1, max_length=MAX_EMBED_TEXTS)
    images: list[str] | None = Field(None, min_length=1, max_length=MAX_EMBED_IMAGES)
    normalize: bool = True
    truncate: bool = Field(False, description="Cut texts longer than the model's context instead of failing.")

    @model_validator(mode="after")
    def _one_kind(self) -> "EmbedRequest":
        if (self.texts is None) == (self.images is None):
            raise ValueError("give exactly one of texts or images")
        return self


class EmbedResponse(BaseModel):
    modality: str
    dim: int
    model: str
    embeddings: list[list[float]]


class RankRequest(RequestBody):
    form_lists: ClassVar[tuple[str, ...]] = ("texts",)

    image: str = Field(..., min_length=1, description=Base64Image.description)
    texts: list[str] = Field(..., min_length=1, max_length=MAX_RANK_TEXTS)
    truncate: bool = False


class RankedText(BaseModel):
    text: str
    index: int = Field(description="Position of the text in the request.")
    logit: float = Field(description="The model's logit: scale * cosine (+ bias).")
    probability: float = Field(description="Softmax over the texts (sigmoid for SigLIP-style models).")
    rank: int = Field(1, description="1 for the best; texts whose probabilities tie share a rank (1, 1, 3).")
    tie: bool = Field(False, description="Another text has the same probability: the model cannot tell them apart.")


class RankResponse(BaseModel):
    probability: str = Field(description="'softmax' or 'sigmoid'.")
    ranking: list[RankedText]
    took_ms: float


class Item(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    relpath: str | None = None
    size: int | None = None
    mtime: float | None = None
    sha256: str | None = None
    caption: str | None = None
    partition: str | None = None
    thumb: str


class Health(BaseModel):
    status: str
    items: int
    model: str = Field(description="The model's name (`clipzoo/tiny-shapes`, a file name): never a server path.")


class Info(BaseModel):
    model: str
    embed_dim: int
    items: int
    partitions: list[str]
    vocabulary: list[str] = Field(description="The server's classification labels (first 1000).")
    vocabulary_size: int
    auth: bool
    limits: dict[str, Any]


def took_ms(t0: float) -> float:
    """Milliseconds since ``t0`` (a ``time.perf_counter()``), for a response's ``took_ms``."""
    return round((time.perf_counter() - t0) * 1000, 2)


def hit_out(hit: Any) -> dict:
    """A search hit -> :class:`HitOut` fields: no server path, a thumbnail URL."""
    d = hit.to_dict() if hasattr(hit, "to_dict") else dict(hit)
    d.pop("path", None)
    d["id"] = int(d["id"])
    d["score"] = float(d["score"])
    d["thumb"] = f"thumb/{d['id']}"
    if d.get("timestamp") is not None:  # a video row: its poster is the thumbnail, the file plays from there
        d["video"] = f"video/{d['id']}"
    else:
        d.pop("timestamp", None)
    return d


def item_out(item: dict) -> dict:
    """An index row -> :class:`Item` fields: no server path, a thumbnail URL."""
    d = {k: v for k, v in dict(item).items() if k != "path"}
    d["id"] = int(d["id"])
    d["thumb"] = f"thumb/{d['id']}"
    return d


# --- clip-retrieval's back-end API (routers/clip_retrieval.py): its clients' field names and defaults

class ClipRetrievalBody(BaseModel):
    """A body of clip-retrieval's API: unknown fields are ignored, as clip-retrieval's back end does."""

    model_config = ConfigDict(extra="ignore")
    form_files: ClassVar[tuple[str, ...]] = ()
    form_lists: ClassVar[tuple[str, ...]] = ()


class KnnRequest(ClipRetrievalBody):
    """clip-retrieval's ``/knn-service`` query: the first of ``text`` (non-empty), ``image`` (base64),
    ``image_url``, ``embedding_input`` is searched. The mclip, aesthetic, safety and violence fields are
    accepted and have no effect (as on a clip-retrieval back end without those models)."""

    form_files: ClassVar[tuple[str, ...]] = ("image",)
    form_lists: ClassVar[tuple[str, ...]] = ("embedding_input",)

    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    image: str | None = Field(None, description=Base64Image.description)
    image_url: str | None = Field(None, description="An http(s) URL of an image; fetched only when the server "
                                                     "runs with --allow-url (422 otherwise).")
    embedding_input: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        None, min_length=1, max_length=65536, description="A query vector of the index's model's dimension.")
    modality: str = Field("image", description="'image': search the indexed images' embeddings (clipzoo "
                                               "indices hold no caption embeddings; 'text' is a 422).")
    num_images: int = Field(40, ge=1, le=MAX_K, description="Results that come with their metadata.")
    num_result_ids: int | None = Field(None, ge=1, le=MAX_K, description="Results (ids and similarities) in "
                                                                          "all; default num_images.")
    indice_name: str | None = Field(None, max_length=64, description="Which index (GET /indices-list); "
                                                                     "default the first.")
    deduplicate: bool = Field(False, description="Drop near-duplicate images (cosine >= 0.94 with a better result).")
    use_mclip: bool = False
    use_safety_model: bool = False
    use_violence_detector: bool = False
    aesthetic_score: int | Annotated[str, Field(max_length=16)] | None = None
    aesthetic_weight: float | Annotated[str, Field(max_length=16)] | None = None


class KnnResult(BaseModel):
    """One ``/knn-service`` result: id and similarity; the first ``num_images`` also carry metadata."""

    id: int
    similarity: float = Field(description="Cosine similarity to the query.")
    url: str | None = Field(None, description="Absolute URL of the item's thumbnail.")
    caption: str | None = None
    relpath: str | None = None
    partition: str | None = None


class MetadataRequest(ClipRetrievalBody):
    form_lists: ClassVar[tuple[str, ...]] = ("ids",)

    ids: list[Annotated[int, Field(ge=0, le=MAX_ITEM_ID)]] = Field(..., max_length=MAX_K)
    indice_name: str | None = Field(None, max_length=64)


class ItemMetadata(BaseModel):
    url: str
    caption: str
    relpath: str | None = None
    partition: str | None = None


class MetadataEntry(BaseModel):
    id: int
    metadata: ItemMetadata | None = Field(description="null for an id that is not in the index.")
