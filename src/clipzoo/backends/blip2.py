"""BLIP-2 retrieval models (``Blip2ForImageTextRetrieval``: Salesforce/blip2-itm-vit-g, …-coco), a row of the
``hf_family`` backend.

BLIP-2 describes an image by the Q-Former's learned queries (32 in the released models), each cross-attending to
the ViT's states and projected by ``vision_projection``; a text is the projected [CLS] state of the Q-Former run
on the text alone. Its own contrastive (ITC) score of a pair is the **largest** cosine between the text and any of
the image's query vectors, and its image–text matching (ITM) head scores a pair with the text attending to the
queries. Here:

- :meth:`Blip2Comparator.query_features` — the (N, Q, D) projected query vectors, unnormalised;
- ``encode_image`` — one vector per image for single-vector uses (indices, ensembles, zero-shot classifiers of
  other models): **the mean of the L2-normalised query vectors** (renormalised when ``normalize=True``);
- ``encode_text`` — ``text_projection`` of the [CLS] state (what BLIP-2's ITC uses);
- :meth:`~Blip2Comparator.score_features` — the query vectors: what every image–text score is made from, so
  ``m.score`` and all that goes through it (:meth:`~Blip2Comparator.itc`, ``m(images, texts)``, ``m.predict``,
  ``m.compare(image=…, text=…)``, ``clipzoo compare``, the service's ``/rank`` and ``/classify``, zero-shot
  evaluation, ensembles) is BLIP-2's own ITC score: max over queries of the cosine, equal to the model's
  ``use_image_text_matching_head=False`` ``logits_per_image``; its logit scale is 1 (transformers applies none).
  Indices and search keep the one vector per image;
- :meth:`~Blip2Comparator.rank` — the ITM head's P(match) per pair, (n_images, n_texts), and
  :meth:`~Blip2Comparator.itm_logits` its two logits, equal to ``use_image_text_matching_head=True``.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from ..cards import IMAGE, ModelCard
from ..comparator import resolve_dtype
from .hf_families import FamilySpec
from .transformers import (
    Family,
    HFComparator,
    HFImageTransform,
    attention_mask,
    image_size_of,
    load_hf_model,
    text_context,
    trim_padding,
)

ITM_PAIRS = 256  # image-text pairs per ITM forward pass


class Blip2Comparator(HFComparator):
    """A ``Blip2ForImageTextRetrieval`` model: see the module docstring for what each method returns."""

    def __init__(self, card: ModelCard, model, *, spec: FamilySpec, **kwargs: Any):
        super().__init__(card, model, **kwargs)
        self.spec = spec
        self.num_queries = int(model.config.num_query_tokens)

    # ---------------------------------------------------------------- towers
    def _image_states(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixels).last_hidden_state

    def _queries(self, states: torch.Tensor) -> torch.Tensor:
        model = self.model
        ones = torch.ones(states.shape[:-1], dtype=torch.long, device=states.device)
        queries = model.query_tokens.expand(states.shape[0], -1, -1)
        out = model.qformer(query_embeds=queries, encoder_hidden_states=states, encoder_attention_mask=ones)
        return model.vision_projection(out.last_hidden_state.to(model.vision_projection.weight.dtype))

    def encode_query_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels (N, 3, H, W) -> the projected query vectors (N, Q, D), unnormalised."""
        return self._queries(self._image_states(pixels))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encode_query_pixels(pixels).float(), dim=-1).mean(dim=1)

    def text_inputs(self, tokens: torch.Tensor):
        tokens = tokens.long().to(self.device)
        mask = attention_mask(tokens, self.family.mask, self.pad_id, self.eos_id)
        return trim_padding(tokens, mask, self.hf_tokenizer.padding_side)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        model = self.model
        tokens, mask = self.text_inputs(tokens)
        out = model.qformer(query_embeds=model.embeddings(input_ids=tokens), query_length=0, attention_mask=mask)
        return model.text_projection(out.last_hidden_state[:, 0, :].to(model.text_projection.weight.dtype))

    # ---------------------------------------------------------------- BLIP-2's own scores
    def query_features(self, images: Any, normalize: bool = True, batch_size: int = 64) -> torch.Tensor:
        """Images (anything ``encode_image`` takes) -> the projected query vectors (N, Q, D)."""
        pixels = self.pixels(images)
        with self._grad_context(pixels):
            feats = torch.cat([self.encode_query_pixels(pixels[i:i + batch_size].to(self.device, self.dtype)).float()
                               for i in range(0, pixels.shape[0], batch_size)])
        return F.normalize(feats, dim=-1) if normalize else feats

    def score_features(self, inputs: Any, modality: Any = None, normalize: bool = True) -> torch.Tensor:
        """What BLIP-2 scores a pair with a text by: the (N, Q, D) query vectors of the images, so that
        :meth:`~clipzoo.comparator.Comparator.score` — ``clipzoo compare``, ``/rank``, ``/classify``, ``predict``,
        zero-shot evaluation, ensembles — is its ITC, the max over queries."""
        if modality not in (None, IMAGE):
            return super().score_features(inputs, modality, normalize)
        self.require(IMAGE)
        return self.query_features(inputs, normalize=normalize)

    def _similarity(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(N, Q, D) query features: BLIP-2's ITC, the max over queries of the cosine; (N, D): the cosine."""
        if image_features.ndim != 3:
            return super()._similarity(image_features, text_features)
        scores = max_over_queries(image_features, text_features)
        return scores * self.logit_params()[0].float().to(scores.device)

    def pair_scores(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``compare``'s cosines: the max over queries when one side holds (N, Q, D) query features."""
        if rows.ndim == 3:
            return max_over_queries(rows, cols)
        if cols.ndim == 3:
            return max_over_queries(cols, rows).T
        return super().pair_scores(rows, cols)

    def itc(self, images: Any, texts: Any, truncate: bool = False) -> torch.Tensor:
        """BLIP-2's contrastive score (n_images, n_texts): the best cosine over the image's query vectors."""
        return self.score(images, self.encode_text(texts, truncate=truncate), IMAGE)

    @torch.no_grad()
    def itm_logits(self, images: Any, texts: "str | list[str]", truncate: bool = False) -> torch.Tensor:
        """The ITM head's (no match, match) logits for every pair, (n_images, n_texts, 2): the mean over the
        query positions of ``itm_head``, the text attending to the image's queries."""
        model = self.model
        states = self._image_states(self.pixels(images).to(self.device, self.dtype))
        tokens, mask = self.text_inputs(self.tokenize(texts, truncate=truncate))
        n, t, q = states.shape[0], tokens.shape[0], self.num_queries
        pairs = [(i, j) for i in range(n) for j in range(t)]
        out = []
        for start in range(0, len(pairs), ITM_PAIRS):
            rows, cols = zip(*pairs[start:start + ITM_PAIRS])
            img, ids, m = states[list(rows)], tokens[list(cols)], mask[list(cols)]
            queries = model.query_tokens.expand(len(rows), -1, -1)
            full_mask = torch.cat([torch.ones(queries.shape[:-1], dtype=m.dtype, device=m.device), m], dim=1)
            ones = torch.ones(img.shape[:-1], dtype=torch.long, device=img.device)
            hidden = model.qformer(query_embeds=model.embeddings(input_ids=ids, query_embeds=queries),
                                   query_length=q, attention_mask=full_mask, encoder_hidden_states=img,
                                   encoder_attention_mask=ones).last_hidden_state
            out.append(model.itm_head(hidden[:, :q, :].to(model.itm_head.weight.dtype)).mean(dim=1).float())
        return torch.cat(out).reshape(n, t, 2)

    def rank(self, images: Any, texts: "str | list[str]", truncate: bool = False) -> torch.Tensor:
        """Image–text matching probabilities (n_images, n_texts): the ITM head's P(match) for every pair."""
        return self.itm_logits(images, texts, truncate=truncate).softmax(-1)[..., 1]

    def logit_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.ones((), device=self.device), None


def max_over_queries(queries: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """BLIP-2's ITC cosine (N, T) of (N, Q, D) query features and (T, D) text features: the best query's."""
    a = F.normalize(queries.float(), dim=-1)
    b = F.normalize(text_features.float(), dim=-1).to(a.device)
    return (a @ b.T).max(dim=1).values


def load_blip2(card: ModelCard, folder, spec: FamilySpec, tokenizer, image_processor, *, device: str,
               precision: str, context_override: int | None = None) -> Blip2Comparator:
    """The Comparator of a BLIP-2 retrieval folder (called by the ``hf_family`` backend's ``load``)."""
    model = load_hf_model(folder, spec.hf_class, resolve_dtype(precision)).to(device)
    family = Family(spec.hf_class, mask=spec.mask)
    transform = HFImageTransform(image_processor)
    positions = SimpleNamespace(text_config=model.config.qformer_config)  # the Q-Former reads the text
    return Blip2Comparator(card, model, spec=spec, tokenizer=tokenizer, image_processor=image_processor,
                           family=family, transform=transform, embed_dim=int(model.config.image_text_hidden_size),
                           image_size=image_size_of(transform),
                           context_length=text_context(positions, tokenizer, card, context_override, family))
