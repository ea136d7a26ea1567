"""Issue 20 §5: CoCa captions — ``m.generate`` / ``m.decode`` equal open_clip's own ``CoCa.generate`` on the same
weights and seeds (beam search, top-k, top-p), deterministic with a seed, and a one-line error for models that
cannot caption.

open_clip's ``generate`` is built on transformers' logits processors and ``BeamSearchScorer``; transformers 5
(what this environment has) removed ``BeamSearchScorer``, so open_clip's module imports without them. The
reference here runs open_clip's own ``generate`` code with transformers 5's processors (real ones) and, for beam
search, :class:`RefBeamScorer` — an independent transcription of transformers 4.x ``BeamSearchScorer``'s
documented behaviour (length-normalised finished hypotheses, ``is_done`` heuristic, ``finalize``)."""
from __future__ import annotations

import contextlib

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

import clipzoo  # noqa: E402
from clipzoo.errors import ClipzooError, UnsupportedError  # noqa: E402
from clipzoo.testing.tiny import TINY_COCA_CONFIG, write_open_clip_hub_folder  # noqa: E402

EOS = 49407


class RefHyps:
    def __init__(self, n):
        self.n, self.items, self.worst = n, [], 1e9

    def add(self, hyp, total, generated_len):
        score = total / generated_len
        if len(self.items) < self.n or score > self.worst:
            self.items.append((score, hyp))
            if len(self.items) > self.n:
                order = sorted((s, i) for i, (s, _) in enumerate(self.items))
                self.items.pop(order[0][1])
                self.worst = order[1][0]
            else:
                self.worst = min(score, self.worst)


class RefBeamScorer:
    """transformers 4.x ``BeamSearchScorer`` (length_penalty 1, early_stopping False), as open_clip calls it."""

    def __init__(self, batch_size, num_beams, device, num_beam_groups=1):
        self.num_beams, self.num_beam_groups = num_beams, num_beam_groups
        self.group_size = num_beams // num_beam_groups
        self._beam_hyps = [RefHyps(self.group_size) for _ in range(batch_size * num_beam_groups)]
        self.done = [False] * (batch_size * num_beam_groups)

    @property
    def is_done(self):
        return all(self.done)

    def process(self, input_ids, next_scores, next_tokens, next_indices, pad_token_id=None, eos_token_id=None,
                beam_indices=None, group_index=0):
        n = len(self._beam_hyps) // self.num_beam_groups
        scores = torch.zeros(n, self.group_size, dtype=next_scores.dtype)
        tokens = torch.zeros(n, self.group_size, dtype=next_tokens.dtype)
        rows = torch.zeros(n, self.group_size, dtype=next_indices.dtype)
        cur_len = input_ids.shape[-1] + 1
        for b in range(n):
            k = b * self.num_beam_groups + group_index
            if self.done[k]:
                tokens[b, :] = pad_token_id
                continue
            j = 0
            for rank, (tok, sc, idx) in enumerate(zip(next_tokens[b], next_scores[b], next_indices[b])):
                row = b * self.group_size + idx
                if int(tok) in [int(e) for e in torch.as_tensor(eos_token_id).reshape(-1)]:
                    if rank < self.group_size:
                        self._beam_hyps[k].add(input_ids[row].clone(), sc.item(), cur_len)
                else:
                    scores[b, j], tokens[b, j], rows[b, j] = sc, tok, row
                    j += 1
                if j == self.group_size:
                    break
            hyps = self._beam_hyps[k]
            self.done[k] = len(hyps.items) >= hyps.n and hyps.worst >= next_scores[b].max().item() / cur_len
        return {"next_beam_scores": scores.view(-1), "next_beam_tokens": tokens.view(-1),
                "next_beam_indices": rows.view(-1)}

    def finalize(self, input_ids, final_beam_scores, final_beam_tokens, final_beam_indices, max_length,
                 pad_token_id=None, eos_token_id=None, beam_indices=None):
        for k, hyps in enumerate(self._beam_hyps):
            if not self.done[k]:
                for j in range(self.group_size):
                    row = k * self.group_size + j
                    hyps.add(input_ids[row], final_beam_scores[row].item(), input_ids.shape[-1])
        n = len(self._beam_hyps) // self.num_beam_groups
        best = []
        for b in range(n):
            pool = [h for hyps in self._beam_hyps[b * self.num_beam_groups:(b + 1) * self.num_beam_groups]
                    for h in hyps.items]
            best.append(sorted(pool, key=lambda h: h[0]).pop()[1])
        width = min(max(len(h) for h in best) + 1, max_length)
        out = torch.full((n, width), pad_token_id, dtype=input_ids.dtype)
        for i, h in enumerate(best):
            out[i, :len(h)] = h
            if len(h) < width:
                out[i, len(h)] = int(torch.as_tensor(eos_token_id).reshape(-1)[0])
        return {"sequences": out}


@contextlib.contextmanager
def open_clip_generate_available():
    """open_clip's CoCa module with transformers 5's processors and the reference beam scorer bound."""
    import open_clip.coca_model as cm

    names = ("LogitsProcessorList", "TopPLogitsWarper", "TopKLogitsWarper", "RepetitionPenaltyLogitsProcessor",
             "MinLengthLogitsProcessor", "MaxLengthCriteria", "StoppingCriteriaList")
    saved = {n: getattr(cm, n, None) for n in (*names, "BeamSearchScorer", "_has_transformers")}
    saved_types = dict(cm.GENERATION_TYPES)
    try:
        for n in names:
            setattr(cm, n, getattr(transformers, n))
        cm.BeamSearchScorer, cm._has_transformers = RefBeamScorer, True
        cm.GENERATION_TYPES.update(top_k=transformers.TopKLogitsWarper, top_p=transformers.TopPLogitsWarper)
        yield
    finally:
        for n, v in saved.items():
            setattr(cm, n, v)
        cm.GENERATION_TYPES.clear()
        cm.GENERATION_TYPES.update(saved_types)


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only contend on a shared machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def coca_dir(tmp_path_factory, one_thread):
    """A tiny random CoCa (open_clip's coca_ViT-B-32 config, shrunk) as an open_clip hub folder; its decoder
    scaled so that captions are decided by clear margins and EOS competes with an ordinary token."""
    from safetensors.torch import load_file, save_file

    folder = write_open_clip_hub_folder(tmp_path_factory.mktemp("coca") / "tiny-coca", config=TINY_COCA_CONFIG)
    weights = folder / "open_clip_model.safetensors"
    sd = {k: v.clone() for k, v in load_file(str(weights)).items()}  # not views of the file rewritten below
    proj = sd["text_decoder.text_projection"] * 200
    proj[:, EOS] = 1.3 * proj[:, 48048] + 0.5 * proj[:, 7]
    sd["text_decoder.text_projection"] = proj.contiguous()
    save_file(sd, str(weights))
    return folder


@pytest.fixture(scope="module")
def coca(coca_dir):
    return clipzoo.load(str(coca_dir))


@pytest.fixture(scope="module")
def pixels():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 3, 32, 32, generator=g)


CASES = [
    dict(seq_len=10),  # open_clip's default: beam search, 6 beams in 3 groups
    dict(seq_len=9, num_beams=4, num_beam_groups=1, min_seq_len=2),
    dict(seq_len=10, eos_token_id=5069, min_seq_len=3),  # a frequent token as EOS: beams finish early
    dict(seq_len=12, num_beams=4, num_beam_groups=2, eos_token_id=5069, min_seq_len=2),
    dict(generation_type="top_k", top_k=50, seq_len=12),
    dict(generation_type="top_p", top_p=0.95, temperature=0.7, repetition_penalty=1.3, seq_len=12),
    dict(generation_type="top_p", top_p=0.9, seq_len=8, fixed_output_length=True),
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_issue20_s5_generate_equals_open_clip(coca, pixels, kwargs):
    with open_clip_generate_available():
        torch.manual_seed(11)
        ref = coca.model.generate(pixels, **kwargs)
    ours = coca.generate(pixels, seed=11, **kwargs)
    assert ours.dtype == torch.long and ours.shape == ref.shape
    assert torch.equal(ours, ref)
    assert ours[:, 0].tolist() == [49406, 49406]
    assert ours.shape[1] <= kwargs["seq_len"]
    if "eos_token_id" in kwargs:  # a caption ended early: finished hypotheses, then padding, were exercised
        assert (ours[0] == kwargs["eos_token_id"]).any() and ours[0, -1].item() == 0


def test_issue20_s5_captions_end_and_decode_like_open_clip(coca, pixels):
    ids = coca.generate(pixels, generation_type="top_k", top_k=50, seq_len=12, seed=0)
    ended = [(row == EOS).nonzero()[0, 0].item() for row in ids]
    assert all(i < ids.shape[1] for i in ended)
    texts = coca.decode(ids)
    ref = [open_clip.decode(row).split("<end_of_text>")[0].replace("<start_of_text>", "").strip() for row in ids]
    assert texts == ref and all(texts)
    assert coca.decode(ids[0]) == ref[0]


def test_issue20_s5_seeded_sampling_is_deterministic(coca, pixels):
    hot = dict(generation_type="top_k", top_k=1000, temperature=100.0, seq_len=12)  # ~uniform over 1000 tokens
    a, b, c = (coca.generate(pixels, seed=s, **hot) for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    state = torch.get_rng_state()
    coca.generate(pixels, generation_type="top_k", top_k=10, seq_len=6, seed=1)
    assert torch.equal(state, torch.get_rng_state())  # a seeded call leaves the global RNG alone


def test_issue20_s5_image_inputs_match_pixels(coca, tmp_path):
    from PIL import Image

    paths = []
    for i, color in enumerate([(200, 30, 30), (30, 30, 200)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (40, 36), color).save(paths[-1])
    pix = torch.stack([coca.preprocess(Image.open(p)) for p in paths])
    assert torch.equal(coca.generate(paths, seq_len=8), coca.generate(pix, seq_len=8))


def test_issue20_s5_bad_arguments_and_non_caption_models(coca, pixels):
    with pytest.raises(ClipzooError, match=r"^generation_type 'greedy' is not one of beam_search, top_k, top_p$"):
        coca.generate(pixels, generation_type="greedy")
    with pytest.raises(ClipzooError, match=r"seq_len \(5\) must be larger than min_seq_len \(5\)"):
        coca.generate(pixels, seq_len=5)
    with pytest.raises(ClipzooError, match=r"num_beams \(4\) must be a positive multiple of num_beam_groups \(3\)"):
        coca.generate(pixels, num_beams=4)
    clip = clipzoo.load("clipzoo/tiny-shapes")
    assert coca.can_caption and not clip.can_caption
    for call in (lambda: clip.generate(pixels), lambda: clip.decode([49406, 320, 49407])):
        with pytest.raises(UnsupportedError) as err:
            call()
        assert "cannot" in str(err.value) and "load a CoCa model" in str(err.value) and "\n" not in str(err.value)
