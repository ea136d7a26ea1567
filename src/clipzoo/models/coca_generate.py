"""Caption generation for open_clip's CoCa, step for step as ``open_clip.CoCa.generate`` does it.

open_clip's ``generate`` builds its search on transformers' ``BeamSearchScorer`` and logits processors;
transformers 5 removed ``BeamSearchScorer``, so open_clip's own ``generate`` cannot run beside it. This
module is a plain-torch re-implementation with the same arguments, defaults and results:

- ``top_k`` / ``top_p`` sampling: each step the model's last-position logits go through the minimum-length
  rule (no EOS before ``min_seq_len`` tokens), the repetition penalty, then the top-k or nucleus filter,
  ``softmax(logits / temperature)`` and one ``torch.multinomial`` draw per unfinished row (EOS is forced at
  ``seq_len``). With ``generator`` (or the global RNG seeded the same way) the draws are open_clip's.
- ``beam_search``: open_clip's group beam search — ``num_beams`` beams in ``num_beam_groups`` groups,
  scores are sums of the processed raw logits (open_clip applies no log-softmax), finished hypotheses kept
  per (image, group) with transformers' length normalisation (score / generated length), the best one of all
  groups returned, padded with ``pad_token_id`` and closed with EOS as transformers' ``finalize`` does.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ClipzooError

SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
GENERATION_TYPES = ("beam_search", "top_k", "top_p")

__all__ = ["GENERATION_TYPES", "generate", "check_generate_args"]


# --------------------------------------------------------------------------- logits processing
def min_length(ids: torch.Tensor, scores: torch.Tensor, min_len: int, eos: int) -> torch.Tensor:
    """No EOS while the sequence is shorter than ``min_len`` (transformers' MinLengthLogitsProcessor)."""
    if ids.shape[-1] < min_len:
        scores = scores.clone()
        scores[:, eos] = -float("inf")
    return scores


def repetition_penalty(ids: torch.Tensor, scores: torch.Tensor, penalty: float) -> torch.Tensor:
    """Tokens already in ``ids`` get their logit divided by ``penalty`` (multiplied when negative)."""
    seen = torch.gather(scores, 1, ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, ids, seen)


def keep_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    k = min(max(int(k), 1), scores.shape[-1])
    kth = torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(scores < kth, -float("inf"))


def keep_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter as transformers' TopPLogitsWarper: drop the least likely tokens whose cumulative
    probability (ascending) stays within ``1 - p``; the most likely token always stays."""
    ascending, order = torch.sort(scores, descending=False)
    drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - p)
    drop[..., -1:] = False
    return scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))


def check_generate_args(generation_type: str, seq_len: int, min_seq_len: int, top_k: int, top_p: float,
                        temperature: float, num_beams: int, num_beam_groups: int, penalty: float) -> None:
    """One-line errors for arguments open_clip would reject with an assert or a transformers ValueError."""
    if generation_type not in GENERATION_TYPES:
        raise ClipzooError(f"generation_type {generation_type!r} is not one of {', '.join(GENERATION_TYPES)}")
    if seq_len <= min_seq_len:
        raise ClipzooError(f"seq_len ({seq_len}) must be larger than min_seq_len ({min_seq_len})")
    if generation_type == "top_k" and (not isinstance(top_k, int) or top_k < 1):
        raise ClipzooError(f"top_k must be a positive integer, got {top_k!r}")
    if generation_type == "top_p" and not 0.0 <= float(top_p) <= 1.0:
        raise ClipzooError(f"top_p must be between 0 and 1, got {top_p!r}")
    if generation_type != "beam_search" and not float(temperature) > 0:
        raise ClipzooError(f"temperature must be > 0, got {temperature!r}")
    if generation_type == "beam_search" and (num_beams < 1 or num_beam_groups < 1 or num_beams % num_beam_groups):
        raise ClipzooError(f"num_beams ({num_beams}) must be a positive multiple of num_beam_groups "
                           f"({num_beam_groups})")
    if not float(penalty) > 0:
        raise ClipzooError(f"repetition_penalty must be > 0, got {penalty!r}")


def _stopped(stops: Sequence[Callable], ids: torch.Tensor) -> bool:
    """Every row is done by at least one criterion (transformers' StoppingCriteriaList, then ``all``)."""
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for stop in stops:
        done = done | torch.as_tensor(stop(ids, None), device=ids.device)
    return bool(done.all())


def _max_length(stops: Sequence[Callable], seq_len: int, custom: bool) -> int | None:
    if not custom:
        return seq_len
    lengths = [s.max_length for s in stops if getattr(s, "max_length", None) is not None]
    return lengths[0] if lengths else None


# --------------------------------------------------------------------------- sampling
def _sample(model, image, text, opts: dict, warp: Callable, generator) -> torch.Tensor:
    pad, eos = opts["pad"], opts["eos"]
    latent, embs = model._encode_image(image)
    out = text if text is not None else torch.full((image.shape[0], 1), opts["sot"], dtype=torch.long,
                                                     device=image.device)
    squeeze = out.ndim == 1
    out = out[None, :] if squeeze else out
    while True:
        x = out[:, -opts["max_seq_len"]:]
        cur_len = x.shape[1]
        logits = model(image, x, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1]
        finished = (out[:, -1] == eos) | (out[:, -1] == pad)
        step = torch.full((out.shape[0], 1), pad, dtype=torch.long, device=out.device)
        if finished.all():
            if not opts["fixed"]:
                break
        else:
            live = ~finished
            scores = min_length(x[live], logits[live], opts["min_seq_len"], eos)
            scores = warp(repetition_penalty(x[live], scores, opts["penalty"]))
            probs = F.softmax(scores / opts["temperature"], dim=-1)
            if cur_len + 1 == opts["seq_len"]:
                step[live] = eos
            else:
                step[live] = torch.multinomial(probs, 1, generator=generator)
        out = torch.cat((out, step), dim=-1)
        if _stopped(opts["stops"], out):
            break
    return out.squeeze(0) if squeeze else out


# --------------------------------------------------------------------------- beam search
class Finished:
    """The best ``size`` finished hypotheses of one (image, group), scored by sum / generated length."""

    def __init__(self, size: int):
        self.size, self.beams, self.worst = size, [], 1e9

    def add(self, ids: torch.Tensor, total: float, length: int) -> None:
        score = total / length
        if len(self.beams) < self.size or score > self.worst:
            self.beams.append((score, ids))
            if len(self.beams) > self.size:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def done(self, best_total: float, cur_len: int) -> bool:
        return len(self.beams) >= self.size and self.worst >= best_total / cur_len


def _select(finished: Finished, ids, scores, tokens, origins, size: int, eos: int, pad: int):
    """One (image, group)'s next beams from its 2*size best candidates; EOS candidates among the first
    ``size`` ranks become finished hypotheses. Returns (scores, tokens, origin rows) of ``size`` beams."""
    cur_len = ids.shape[-1] + 1
    picked: list[tuple[float, int, int]] = []
    for rank, (score, token, origin) in enumerate(zip(scores.tolist(), tokens.tolist(), origins.tolist())):
        if token == eos:
            if rank < size:
                finished.add(ids[origin].clone(), score, cur_len)
        else:
            picked.append((score, token, origin))
        if len(picked) == size:
            break
    if len(picked) < size:
        raise ClipzooError(f"beam search found fewer than {size} continuations; lower num_beams")
    return picked


def _beam_search(model, image, opts: dict) -> torch.Tensor:
    eos, pad = opts["eos"], opts["pad"]
    n_img, beams, groups = image.shape[0], opts["num_beams"], opts["num_beam_groups"]
    size = beams // groups
    image = torch.repeat_interleave(image, beams, dim=0)
    latent, embs = model._encode_image(image)
    ids = torch.full((n_img * beams, 1), opts["sot"], dtype=torch.long, device=image.device)
    sums = torch.full((n_img, beams), -1e9, dtype=torch.float, device=image.device)
    sums[:, ::size] = 0
    sums = sums.view(-1)
    finished = [[Finished(size) for _ in range(groups)] for _ in range(n_img)]
    is_done = [[False] * groups for _ in range(n_img)]
    while True:
        logits = model(image, ids, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1, :]
        current = torch.zeros(n_img * beams, dtype=ids.dtype, device=ids.device)
        for g in range(groups):
            rows = [b * beams + g * size + j for b in range(n_img) for j in range(size)]
            group_ids = ids[rows]
            scores = min_length(group_ids, logits[rows], opts["min_seq_len"], eos)
            scores = repetition_penalty(group_ids, scores, opts["penalty"])
            vocab = scores.shape[-1]
            totals = (scores + sums[rows].unsqueeze(-1)).view(n_img, size * vocab)
            top, flat = torch.topk(totals, 2 * size, dim=1, largest=True, sorted=True)
            new_sums, new_tokens, new_rows = _step_group(finished, is_done, g, group_ids, top, flat, vocab,
                                                         size, eos, pad)
            sums[rows] = new_sums.to(sums.dtype)
            ids[rows] = group_ids[new_rows]
            current[rows] = new_tokens
        ids = torch.cat([ids, current.unsqueeze(-1)], dim=-1)
        if all(all(row) for row in is_done) or _stopped(opts["stops"], ids):
            break
    return _finalize(finished, is_done, ids, sums, size, opts)


def _step_group(finished, is_done, g, group_ids, top, flat, vocab, size, eos, pad):
    n_img = top.shape[0]
    new_sums = torch.zeros(n_img * size, dtype=top.dtype, device=top.device)
    new_tokens = torch.full((n_img * size,), pad, dtype=torch.long, device=top.device)
    new_rows = torch.zeros(n_img * size, dtype=torch.long, device=top.device)
    origins = torch.div(flat, vocab, rounding_mode="floor")
    tokens = flat % vocab
    for b in range(n_img):
        if is_done[b][g]:
            continue  # a finished (image, group) carries pad tokens with score 0
        picked = _select(finished[b][g], group_ids, top[b], tokens[b], b * size + origins[b], size, eos, pad)
        for j, (score, token, origin) in enumerate(picked):
            new_sums[b * size + j], new_tokens[b * size + j], new_rows[b * size + j] = score, token, origin
        is_done[b][g] = finished[b][g].done(float(top[b].max()), group_ids.shape[-1] + 1)
    return new_sums, new_tokens, new_rows


def _finalize(finished, is_done, ids, sums, size, opts) -> torch.Tensor:
    n_img, groups = len(finished), opts["num_beam_groups"]
    for b in range(n_img):
        for g in range(groups):
            if is_done[b][g]:
                continue
            for j in range(size):
                row = (b * groups + g) * size + j
                finished[b][g].add(ids[row], float(sums[row]), ids.shape[-1])
    # the best of all groups; among equal scores the last one, as transformers' sorted(...).pop()
    best = [sorted((h for f in finished[b] for h in f.beams), key=lambda h: h[0])[-1][1] for b in range(n_img)]
    lengths = [len(h) for h in best]
    width = max(lengths) + 1
    max_length = _max_length(opts["stops"], opts["seq_len"], opts["custom_stops"])
    width = min(width, max_length) if max_length is not None else width
    out = torch.full((n_img, width), opts["pad"], dtype=ids.dtype, device=ids.device)
    for i, hyp in enumerate(best):
        out[i, :lengths[i]] = hyp[:width]
        if lengths[i] < width:
            out[i, lengths[i]] = opts["eos"]
    return out


# --------------------------------------------------------------------------- entry point
def generate(model, image: torch.Tensor, text: torch.Tensor | None = None, *, seq_len: int = 30,
             max_seq_len: int = 77, temperature: float = 1.0, generation_type: str = "beam_search",
             top_p: float = 0.1, top_k: int = 1, pad_token_id: int | None = None, eos_token_id: int | None = None,
             sot_token_id: int | None = None, num_beams: int = 6, num_beam_groups: int = 3, min_seq_len: int = 5,
             stopping_criteria: Sequence[Callable] | None = None, repetition_penalty: float = 1.0,
             fixed_output_length: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Token ids (N, L) of captions for preprocessed ``image`` pixels (N, 3, H, W), as open_clip's
    ``CoCa.generate`` returns them (SOT first; EOS, then ``pad_token_id`` padding)."""
    check_generate_args(generation_type, seq_len, min_seq_len, top_k, top_p, temperature, num_beams,
                        num_beam_groups, repetition_penalty)
    custom = stopping_criteria is not None
    stops = list(stopping_criteria) if custom else [lambda ids, _: ids.shape[-1] >= seq_len]
    opts = {"sot": SOT_TOKEN_ID if sot_token_id is None else int(sot_token_id),
            "eos": EOT_TOKEN_ID if eos_token_id is None else int(eos_token_id),
            "pad": int(model.pad_id if pad_token_id is None else pad_token_id), "seq_len": seq_len,
            "max_seq_len": max_seq_len, "temperature": float(temperature), "min_seq_len": min_seq_len,
            "penalty": float(repetition_penalty), "fixed": fixed_output_length, "stops": stops,
            "custom_stops": custom, "num_beams": num_beams, "num_beam_groups": num_beam_groups}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if generation_type == "beam_search":
                out = _beam_search(model, image, opts)
                if fixed_output_length and out.shape[1] < seq_len:
                    pad = torch.full((out.shape[0], seq_len - out.shape[1]), opts["pad"], dtype=out.dtype,
                                     device=out.device)
                    out = torch.cat((out, pad), dim=1)
                return out
            warp = (lambda s: keep_top_p(s, float(top_p))) if generation_type == "top_p" else \
                (lambda s: keep_top_k(s, int(top_k)))
            return _sample(model, image, text, opts, warp, generator)
    finally:
        model.train(was_training)
