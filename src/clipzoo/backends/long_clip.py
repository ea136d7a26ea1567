"""Long-CLIP (beichenzbc/Long-CLIP): OpenAI-layout CLIP checkpoints whose text tower has 248 positions.

Long-CLIP's released ``longclip-B.pt`` / ``longclip-L.pt`` are plain ``torch.save(model.state_dict())`` files in
OpenAI's layout with two text position tables of 248 rows: ``positional_embedding`` and
``positional_embedding_res``. Its text encoder adds ``positional_embedding * mask1 +
positional_embedding_res * mask2`` where ``mask1`` keeps the first 20 positions (the original CLIP ones, kept
fixed in fine-tuning) and ``mask2`` the other 228 (interpolated 4x from CLIP's 57 and fine-tuned). The two
tables therefore fold into one: rows 0-19 of the first, rows 20-247 of the second — an ordinary CLIP text
tower with ``context_length = 248``, tokenised by OpenAI's tokenizer with that context.
"""
from __future__ import annotations

import torch

KEPT_POSITIONS = 20  # Long-CLIP's mask1: the positions taken from the first table
RESIDUAL_KEY = "positional_embedding_res"


def is_long_clip(sd: dict) -> bool:
    return RESIDUAL_KEY in sd and "positional_embedding" in sd


def fold_positions(sd: dict) -> dict:
    """A Long-CLIP state dict with its two position tables folded into ``positional_embedding``."""
    if not is_long_clip(sd):
        return sd
    sd = dict(sd)
    first, residual = sd["positional_embedding"], sd.pop(RESIDUAL_KEY)
    sd["positional_embedding"] = torch.cat([first[:KEPT_POSITIONS], residual[KEPT_POSITIONS:]], dim=0)
    return sd
