"""Issue 20 §4: captions longer than 77 tokens — the ``long_text`` policy ("error" with the token count,
"truncate", "chunks" = the mean of separately encoded normalised pieces) and Long-CLIP checkpoints (248
positions, two position tables in OpenAI's layout) that load and equal an independent forward pass."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import clipzoo
from clipzoo.errors import BadTextError
from clipzoo.tokenizers import OpenAITokenizer

TOK = OpenAITokenizer()
SENTENCES = [
    "A red circle sits in the upper left corner of a pale grey canvas next to a tiny blue square.",
    "Below it, three green triangles point towards the bottom edge, each one slightly larger than the last.",
    "On the right a yellow star with five sharp points overlaps a thin black line drawn diagonally.",
    "The background fades from light grey at the top to a warmer beige near the lower border of the image.",
]
LONG = " ".join(SENTENCES)


def n_tokens(text: str) -> int:
    return len(TOK.encode(text)) + 2  # SOT and EOT


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_hub_folder

    return write_open_clip_hub_folder(tmp_path_factory.mktemp("long") / "tiny")  # CLIP's tokenizer, 77 positions


@pytest.fixture(scope="module")
def model(model_dir):
    return clipzoo.load(str(model_dir))


def test_issue20_s4_error_names_the_token_count(model):
    n = n_tokens(LONG)
    assert n > 77
    with pytest.raises(BadTextError, match=rf"is {n} tokens, longer than the model's context length 77; "
                                           r"shorten it, pass truncate=True where the call takes it, or load the "
                                           r"model with long_text='truncate' or 'chunks'$"):
        model.encode_text(LONG)
    with pytest.raises(BadTextError, match=f"is {n} tokens"):
        model.encode_text(LONG, long_text="error")
    with pytest.raises(BadTextError, match=r"^long_text='split' is not a policy; use one of error, truncate, chunks$"):
        model.encode_text(LONG, long_text="split")
    with pytest.raises(BadTextError, match="long_text='cut' is not a policy"):
        clipzoo.load("clipzoo/tiny-shapes", long_text="cut")
    assert model.long_text == "error"  # clipzoo's own default


def test_issue20_s4_truncate_is_the_cut_text(model):
    ids = TOK.encode(LONG)[:75]
    cut = torch.zeros(1, 77, dtype=torch.long)
    cut[0, :77] = torch.tensor([TOK.sot_token_id] + ids + [TOK.eot_token_id])
    want = model.encode_text(cut)
    assert torch.allclose(model.encode_text(LONG, long_text="truncate"), want, atol=1e-6)
    assert torch.allclose(model.encode_text(LONG, truncate=True), want, atol=1e-6)


def reference_pieces(text: str) -> list[str]:
    """Sentences packed greedily while the piece stays within 77 tokens; an overlong sentence word by word."""
    units = []
    for s in re.split(r"(?<=[.!?;:])\s+", text.strip()):
        units.extend([s] if n_tokens(s) <= 77 else s.split())
    pieces = []
    for u in units:
        if pieces and n_tokens(pieces[-1] + " " + u) <= 77:
            pieces[-1] += " " + u
        else:
            pieces.append(u)
    return pieces


def test_issue20_s4_chunks_average_normalised_pieces(model, model_dir):
    pieces = reference_pieces(LONG)
    assert len(pieces) == 2 and all(n_tokens(p) <= 77 for p in pieces) and " ".join(pieces) == LONG
    separately = torch.cat([model.encode_text(p, normalize=False) for p in pieces])
    mean = F.normalize(separately, dim=-1).mean(0)
    got = model.encode_text([LONG, "a red circle"], long_text="chunks", normalize=False)
    assert torch.allclose(got[0], mean, atol=1e-6)
    assert torch.allclose(got[1], model.encode_text("a red circle", normalize=False)[0], atol=1e-6)
    normed = model.encode_text(LONG, long_text="chunks")
    assert torch.allclose(normed[0], F.normalize(mean, dim=-1), atol=1e-6)
    chunky = clipzoo.load(str(model_dir), long_text="chunks")
    assert chunky.long_text == "chunks" and torch.allclose(chunky.encode_text(LONG), normed, atol=1e-6)


def test_issue20_s4_chunks_split_a_sentence_at_words(model):
    words = " ".join(f"shape{i} red" for i in range(60))  # one sentence of ~190 tokens, no punctuation
    pieces = reference_pieces(words)
    assert len(pieces) >= 3 and all(n_tokens(p) <= 77 for p in pieces)
    want = F.normalize(F.normalize(torch.cat([model.encode_text(p) for p in pieces]), dim=-1).mean(0), dim=-1)
    assert torch.allclose(model.encode_text(words, long_text="chunks")[0], want, atol=1e-6)


# ------------------------------------------------------------------ Long-CLIP
def long_clip_state_dict(seed: int = 0) -> dict:
    """The tiny OpenAI-layout CLIP with Long-CLIP's text positions: two 248-row tables."""
    from clipzoo.testing.tiny import state_dict

    sd = state_dict(seed)
    g = torch.Generator().manual_seed(seed + 1)
    width = sd["positional_embedding"].shape[1]
    sd["positional_embedding"] = torch.randn(248, width, generator=g) * 0.02
    sd["positional_embedding_res"] = torch.randn(248, width, generator=g) * 0.02
    return sd


def reference_text_features(sd: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Long-CLIP's encode_text written out: embeddings + pe*mask1 + pe_res*mask2, causal pre-LN blocks with
    QuickGELU, final LN, the EOT position, the projection."""
    mask1 = torch.zeros(248, 1)
    mask1[:20] = 1
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"] * mask1 + \
        sd["positional_embedding_res"] * (1 - mask1)
    width = x.shape[-1]
    heads = width // 64
    causal = torch.full((248, 248), float("-inf")).triu(1)
    blocks = sorted({int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks.")})
    for i in blocks:
        p = lambda name, i=i: sd[f"transformer.resblocks.{i}.{name}"]  # noqa: E731
        h = F.layer_norm(x, (width,), p("ln_1.weight"), p("ln_1.bias"))
        q, k, v = (h @ p("attn.in_proj_weight").T + p("attn.in_proj_bias")).chunk(3, dim=-1)
        split = lambda t: t.view(t.shape[0], 248, heads, -1).transpose(1, 2)  # noqa: E731
        att = (split(q) @ split(k).transpose(-1, -2)) / (width // heads) ** 0.5 + causal
        out = (att.softmax(-1) @ split(v)).transpose(1, 2).reshape(x.shape)
        x = x + out @ p("attn.out_proj.weight").T + p("attn.out_proj.bias")
        h = F.layer_norm(x, (width,), p("ln_2.weight"), p("ln_2.bias"))
        h = h @ p("mlp.c_fc.weight").T + p("mlp.c_fc.bias")
        x = x + (h * torch.sigmoid(1.702 * h)) @ p("mlp.c_proj.weight").T + p("mlp.c_proj.bias")
    x = F.layer_norm(x, (width,), sd["ln_final.weight"], sd["ln_final.bias"])
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ sd["text_projection"]


def test_issue20_s4_long_clip_checkpoint_loads_and_matches(tmp_path):
    sd = long_clip_state_dict()
    path = tmp_path / "longclip-tiny.pt"
    torch.save(sd, str(path))  # what Long-CLIP releases: torch.save(model.state_dict())
    with pytest.warns(UserWarning, match="OpenAI's layout"):
        m = clipzoo.load(str(path))
    assert m.context_length == 248
    texts = [LONG, "a red circle"]
    assert n_tokens(LONG) > 77
    tokens = TOK.tokenize(texts, context_length=248)
    assert torch.equal(m.tokenize(texts), tokens)
    want = reference_text_features(sd, tokens)
    got = m.encode_text(texts, normalize=False)
    assert (got - want).abs().max().item() <= 1e-5
    too_long = LONG + " " + LONG + " " + LONG
    with pytest.raises(BadTextError, match=rf"is {n_tokens(too_long)} tokens, longer than the model's context "
                                           "length 248"):
        m.encode_text(too_long)


def test_issue20_s4_long_clip_cards():
    from clipzoo.registry import REGISTRY

    for name, repo, file, dim in [("LongCLIP-B", "BeichenZhang/LongCLIP-B", "longclip-B.pt", 512),
                                  ("LongCLIP-L", "BeichenZhang/LongCLIP-L", "longclip-L.pt", 768)]:
        card = REGISTRY.resolve(f"[long-clip - beichenzhang - {name}]")
        assert (card.source.hf_repo, card.source.hf_file) == (repo, file)
        assert card.context_length == 248 and card.embed_dim == dim and card.backend == "open_clip"
