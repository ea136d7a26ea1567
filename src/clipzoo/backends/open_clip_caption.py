"""Captions from open_clip's CoCa models: ``generate`` (open_clip's arguments and defaults) and ``decode``.

:class:`CaptionMixin` gives :class:`~clipzoo.backends.open_clip.OpenClipComparator` its ``generate`` /
``decode``; a model without CoCa's text decoder falls back to the base Comparator's one-line error.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import BadTextError
from ..models.coca_generate import EOT_TOKEN_ID, SOT_TOKEN_ID
from ..models.coca_generate import generate as coca_generate


class CaptionMixin:
    """``generate(images, …)`` and ``decode(ids)`` for a Comparator whose ``model`` is an open_clip CoCa."""

    @property
    def can_caption(self) -> bool:
        return hasattr(self.model, "text_decoder") and hasattr(self.model, "_encode_image")

    def generate(self, images: Any, text: torch.Tensor | None = None, seq_len: int = 30, max_seq_len: int = 77,
                 temperature: float = 1.0, generation_type: str = "beam_search", top_p: float = 0.1,
                 top_k: int = 1, pad_token_id: int | None = None, eos_token_id: int | None = None,
                 sot_token_id: int | None = None, num_beams: int = 6, num_beam_groups: int = 3,
                 min_seq_len: int = 5, stopping_criteria: Sequence[Callable] | None = None,
                 repetition_penalty: float = 1.0, fixed_output_length: bool = False,
                 seed: int | None = None) -> torch.Tensor:
        """Caption token ids (N, L) for images (paths, PIL images, arrays or preprocessed pixels), with
        open_clip's ``CoCa.generate`` arguments and defaults. ``seed``: sampling (``top_k`` / ``top_p``) draws
        from a generator seeded with it — the same draws open_clip makes after ``torch.manual_seed(seed)``;
        None uses the global RNG. :meth:`decode` turns the ids into strings."""
        if not self.can_caption:
            return super().generate(images)
        pixels = self.pixels(images).to(self.device, self.dtype)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=pixels.device)
            generator.manual_seed(int(seed))
        return coca_generate(self.model, pixels, None if text is None else text.to(pixels.device),
                             seq_len=seq_len, max_seq_len=max_seq_len, temperature=temperature,
                             generation_type=generation_type, top_p=top_p, top_k=top_k, pad_token_id=pad_token_id,
                             eos_token_id=eos_token_id, sot_token_id=sot_token_id, num_beams=num_beams,
                             num_beam_groups=num_beam_groups, min_seq_len=min_seq_len,
                             stopping_criteria=stopping_criteria, repetition_penalty=repetition_penalty,
                             fixed_output_length=fixed_output_length, generator=generator)

    def decode(self, ids: Any) -> str | list[str]:
        """Token ids from :meth:`generate` -> caption text: SOT dropped, cut at the first EOS, stripped (what
        open_clip's README does with ``open_clip.decode``). A 1-D sequence gives a string, 2-D a list."""
        if not self.can_caption:
            return super().decode(ids)
        rows = torch.as_tensor(ids)
        if rows.ndim not in (1, 2) or rows.is_floating_point():
            raise BadTextError(f"decode takes integer token ids of shape (L,) or (N, L), got {tuple(rows.shape)}")
        texts = [decode_row(self.tokenizer, row.tolist()) for row in rows.reshape(-1, rows.shape[-1])]
        return texts[0] if rows.ndim == 1 else texts


def decode_row(tokenizer, ids: list[int]) -> str:
    if ids and ids[0] == SOT_TOKEN_ID:
        ids = ids[1:]
    if EOT_TOKEN_ID in ids:
        ids = ids[:ids.index(EOT_TOKEN_ID)]
    vocab = getattr(tokenizer, "decoder", None)
    if vocab is not None and any(i not in vocab for i in ids):
        bad = next(i for i in ids if i not in vocab)
        raise BadTextError(f"token id {bad} is not in the model's vocabulary ({len(vocab)} tokens)")
    return tokenizer.decode(ids).strip()
