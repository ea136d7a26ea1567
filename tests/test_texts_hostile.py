"""Texts and tokenizers as an attacker and a newcomer would feed them: ``compare --template`` follows the long-text
policy; ``chunks`` splits CJK (no spaces) into pieces that each fit, in time linear in the text; the embedded model
tokenises as open_clip does in every precision; a UTF-8 BOM is not text; a lone surrogate is one line on every
backend; truncate / error tokenise only as far as the context (the ids kept bit-identical to openai's and
open_clip's) and a sidecar lists a bounded text; ``--truncate`` with another ``--long-text`` and ``long_text=""``
are refused."""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import clipzoo
from clipzoo.cli import app
from clipzoo.constants import COUNTED_TOKENS_MAX, SIDECAR_TEXT_CHARS
from clipzoo.embed import embed_to_file, read_texts
from clipzoo.errors import BadTextError
from clipzoo.inputs import split_long_text
from clipzoo.models.numpy_text import embedded_text_tower
from clipzoo.models.tokenize import tokenize_checked
from clipzoo.tokenizers import OpenAITokenizer, OpenClipTokenizer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip-anytorch imports pkg_resources
    import clip as openai_clip
import open_clip

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
LONG_LABEL = "big red circle " * 10  # 32 tokens with SOT/EOT: over tiny-shapes' 24
CJK = "一只红色的猫坐在桌子上。" * 10 + "最后一句话说的是狗。"
ODD = ["a photo <|endoftext|> of a square", "a <end_of_text> b", "<start_of_text>x", "a\x1cb\x1dc\x85d e",
       "Tom &amp; Jerry", "一只猫", "ﬁsh  \u3000 café", "", "dog " * 40, "word" * 300, "😀🐈" * 50]
SURROGATE = "caf\udcff"
SURROGATE_SAID = (r"^text 0 'caf\\udcff' holds a lone surrogate \(U\+DCFF at character 3\): it is not valid Unicode, "
                  r"as bytes that are not UTF-8 become; pass UTF-8 text$")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def one_line_error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def shapes():
    return clipzoo.load("clipzoo/tiny-shapes")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    from clipzoo.testing import tiny_hf

    root = tmp_path_factory.mktemp("texts-hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"clip": tiny_hf.write_clip(root / "hfclip"), "siglip": tiny_hf.write_siglip(root / "siglip")}


@pytest.fixture(scope="module")
def red_png(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("texts-img") / "red.png"
    Image.new("RGB", (32, 32), (220, 30, 30)).save(path)
    return path


def counting(monkeypatch, tokenizer, name: str) -> list:
    """Record the first argument of every call of ``tokenizer.<name>`` (an instance attribute shadows the method)."""
    calls: list = []
    method = getattr(tokenizer, name)

    def spy(arg, *args, **kwargs):
        calls.append(arg)
        return method(arg, *args, **kwargs)

    monkeypatch.setattr(tokenizer, name, spy, raising=False)
    return calls


# ---------------------------------------------------------------------------------- 1. compare --template
def test_compare_template_follows_the_long_text_policy(shapes, red_png):
    """--template always cut the label (classifier(truncate=True)): the default "error", --long-text error and
    chunks all gave the truncate logits."""
    base = ["compare", "clipzoo/tiny-shapes", "--image", red_png, "--text", LONG_LABEL, "--text", "dog",
            "--template", "a photo of a {}.", "--json"]
    said = one_line_error(run(*base))
    assert said == ("error: text 'a photo of a big red circle big red circle big red circle...' is 37 tokens, "
                    "longer than the model's context length 24; shorten it or pass --long-text truncate (or "
                    "--long-text chunks)")
    assert one_line_error(run(*base, "--long-text", "error")) == said
    logits = {}
    for policy in ("truncate", "chunks"):
        result = run(*base, "--long-text", policy)
        assert result.exit_code == 0, result.output
        logits[policy] = torch.tensor(json.loads(result.stdout)["logits"])
        model = clipzoo.load("clipzoo/tiny-shapes", long_text=policy)
        want = model.score([str(red_png)], model.classifier([LONG_LABEL, "dog"], ["a photo of a {}."]))
        assert torch.allclose(logits[policy], want, atol=1e-4)
    assert float((logits["chunks"] - logits["truncate"]).abs().max()) > 1e-3  # chunks is not a cut
    truncated = run(*base, "--truncate")
    assert torch.allclose(torch.tensor(json.loads(truncated.stdout)["logits"]), logits["truncate"], atol=1e-6)
    with pytest.raises(BadTextError, match="is 37 tokens"):  # the library's classifier and predict too
        shapes.predict([str(red_png)], [LONG_LABEL, "dog"], ["a photo of a {}."])
    chunky = shapes.classifier([LONG_LABEL], ["a photo of a {}."], long_text="chunks")
    assert torch.allclose(chunky, F.normalize(shapes.encode_text(["a photo of a " + LONG_LABEL + "."],
                                                                 long_text="chunks"), dim=-1), atol=1e-6)


# ---------------------------------------------------------------------------------- 2. chunks without spaces
def test_chunks_split_cjk_into_pieces_that_each_fit(shapes):
    """A CJK text has no spaces: 。 never split (it needed whitespace after it), the text became one "word" and
    chunks silently equalled truncate."""
    ctx = shapes.context_length
    pieces = split_long_text(CJK, shapes.fits_context, shapes.count_tokens, ctx)
    assert len(pieces) > 5 and "".join(pieces) == CJK  # nothing lost, no space added between CJK sentences
    assert all(shapes.count_tokens(p) <= ctx for p in pieces)
    feats = shapes.encode_text(pieces, normalize=False)
    want = F.normalize(F.normalize(feats, dim=-1).mean(0), dim=-1)
    got = shapes.encode_text([CJK], long_text="chunks")[0]
    assert torch.allclose(got, want, atol=1e-6)
    assert float((got - shapes.encode_text([CJK], long_text="truncate")[0]).abs().max()) > 1e-2
    no_marks = "一只红色的猫坐在桌子上" * 30  # no sentence mark at all: split by characters
    pieces = split_long_text(no_marks, shapes.fits_context, shapes.count_tokens, ctx)
    assert len(pieces) > 10 and "".join(pieces) == no_marks and all(shapes.count_tokens(p) <= ctx for p in pieces)
    word = "abcdefghij" * 100  # one "word" of 1000 letters: never cut by the tokenizer any more
    pieces = split_long_text(word, shapes.fits_context, shapes.count_tokens, ctx)
    assert "".join(pieces) == word and all(shapes.count_tokens(p) <= ctx for p in pieces)
    tower = embedded_text_tower("clipzoo/tiny-shapes")  # the NumPy tower splits alike
    assert np.abs(tower.encode_text([CJK], long_text="chunks") - got.numpy()).max() < 1e-5


def test_chunks_of_english_are_unchanged(shapes):
    text = "A red cat sits on the table. " * 10
    pieces = split_long_text(text, shapes.fits_context, shapes.count_tokens, shapes.context_length)
    assert pieces == ["A red cat sits on the table. A red cat sits on the table."] * 5


# ---------------------------------------------------------------------------------- 3. one tokenizer per model
def test_the_embedded_model_tokenises_as_open_clip_in_every_precision(shapes, tmp_path):
    """fp32 (load_plain) used OpenAI's tokenizer, bf16 open_clip's: '<|endoftext|>' in a text was one token at
    fp32 and six at bf16 (cosine -0.06 between the two precisions' features)."""
    reference = open_clip.get_tokenizer("local-dir:" + shapes.card.source.path)
    bf16 = clipzoo.load("clipzoo/tiny-shapes", precision="bf16")
    for text in ODD:
        want = reference([text])
        assert torch.equal(shapes.tokenize([text], truncate=True), want), text
        assert torch.equal(bf16.tokenize([text], truncate=True), want), text
    assert shapes.tokenize(["a photo <|endoftext|> of a square"])[0, :9].tolist() == \
        [49406, 320, 1125, 27, 347, 40786, 4160, 91, 285]
    cos = (shapes.encode_text(ODD[:2]) * bf16.encode_text(ODD[:2]).float()).sum(-1)
    assert bool((cos > 0.999).all()), cos
    tower = embedded_text_tower("clipzoo/tiny-shapes")
    assert np.abs(tower.encode_text(ODD[:2]) - shapes.encode_text(ODD[:2]).numpy()).max() < 1e-5
    from clipzoo.runtime.onnx_meta import tokenizer_config

    assert tokenizer_config(shapes, tmp_path) == {"kind": "open_clip_simple", "context_length": 24, "kwargs": {}}


def test_open_clip_tokenizer_equals_open_clips_own():
    ours, theirs = OpenClipTokenizer(), open_clip.SimpleTokenizer()
    for text in ODD + ["<|startoftext|> hi <|endoftext|>", "<END_OF_TEXT>"]:
        assert ours.encode(text) == theirs.encode(text), text
        assert torch.equal(ours([text]), theirs([text])), text
        assert torch.equal(ours([text], context_length=8), theirs([text], context_length=8)), text


# ---------------------------------------------------------------------------------- 4. a UTF-8 BOM
def test_a_utf8_bom_is_not_part_of_the_first_text(hf, tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfa red circle\nblue\n")
    assert read_texts(path) == ["a red circle", "blue"]
    result = run("embed", hf["clip"], "--texts", path, "--out", tmp_path / "t.npy", "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t.json").read_text())["inputs"] == ["a red circle", "blue"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = clipzoo.load(str(hf["clip"]))
    assert np.abs(np.load(tmp_path / "t.npy") - model.encode_text(["a red circle", "blue"]).numpy()).max() < 1e-5


# ---------------------------------------------------------------------------------- 5. lone surrogates
def test_a_lone_surrogate_is_one_line_on_every_backend(shapes, hf, tiny_files, red_png):
    """HF tokenizers raised a TypeError / RuntimeError from deep inside (a 100-line traceback in the CLI), CLIP's
    BPE silently replaced the character."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [shapes, clipzoo.load(str(hf["clip"])), clipzoo.load(str(hf["siglip"])),
                  clipzoo.load(str(tiny_files["open_clip_hub"])), clipzoo.load("clipzoo/tiny-shapes", precision="bf16")]
    for model in models:
        for policy in ("error", "truncate", "chunks"):
            with pytest.raises(BadTextError, match=SURROGATE_SAID):
                model.encode_text([SURROGATE], long_text=policy)
        with pytest.raises(BadTextError, match=SURROGATE_SAID):
            model.tokenize([SURROGATE])
    with pytest.raises(BadTextError, match=SURROGATE_SAID):
        embedded_text_tower("clipzoo/tiny-shapes").query_vector(SURROGATE)
    for model in (hf["siglip"], hf["clip"], "clipzoo/tiny-shapes"):
        said = one_line_error(run("compare", model, "--image", red_png, "--text", SURROGATE, "--text", "a dog"))
        assert re.match(SURROGATE_SAID.replace("^", "^error: "), said), said


# ---------------------------------------------------------------------------------- 6. chunks in linear time
def test_chunks_tokenise_a_long_text_a_bounded_number_of_times(shapes, monkeypatch):
    """Each word was re-tokenised with the growing piece (O(words × context)): 1 MB took 74 s."""
    text = "a red circle next to a blue square " * 2000  # 70 KB, 16,000 words, no sentence mark
    words = counting(monkeypatch, shapes.tokenizer, "bpe")
    feats = shapes.encode_text([text], long_text="chunks")
    assert feats.shape == (1, shapes.embed_dim)
    # each word counted, checked in its piece and encoded (~3 times), and the first 8192 counted once for the
    # too-long check of the whole (was ~12 times each: every word re-tokenised with its growing piece)
    assert len(words) < 3.2 * 16_000 + COUNTED_TOKENS_MAX, len(words)


# ---------------------------------------------------------------------------------- 7. tokenise no further than kept
def test_truncate_and_error_tokenise_only_the_context(shapes, tiny_files, monkeypatch):
    text = " ".join(f"w{i}" for i in range(20000))  # 20,000 distinct words
    for model in (shapes, clipzoo.load(str(tiny_files["open_clip_hub"]))):
        ctx = model.context_length
        words = counting(monkeypatch, model.tokenizer, "bpe")
        model.encode_text([text], long_text="truncate")
        assert len(words) <= ctx, len(words)  # BPE stopped once the context was full
        words.clear()
        with pytest.raises(BadTextError, match=rf"^text 'w0 w1 .*' is more than {COUNTED_TOKENS_MAX} tokens, longer "
                                               rf"than the model's context length {ctx}; shorten it, pass truncate"):
            model.encode_text([text])
        assert len(words) <= COUNTED_TOKENS_MAX + 2 * ctx
        monkeypatch.undo()


def test_ids_kept_are_openais_and_open_clips_bit_for_bit(tiny_files):
    corpus = ODD + [" ".join(["word"] * 76), "a " * 75, "a " * 76, "日本" * 100, "x" * 300]
    ours = OpenAITokenizer()
    for ctx in (5, 24, 77):
        for text in corpus:
            want = openai_clip.tokenize([text], context_length=ctx, truncate=True)
            assert torch.equal(ours.tokenize([text], context_length=ctx, truncate=True), want), (ctx, text)
            if len(ours.encode(text)) + 2 <= ctx:
                assert torch.equal(ours.tokenize([text], context_length=ctx), want)
            else:
                with pytest.raises(RuntimeError, match="is too long for context length"):
                    ours.tokenize([text], context_length=ctx)
            theirs = open_clip.SimpleTokenizer(context_length=ctx)
            assert torch.equal(tokenize_checked(theirs, [text], ctx, truncate=True), theirs([text])), (ctx, text)
            assert torch.equal(OpenClipTokenizer(context_length=ctx)([text]), theirs([text])), (ctx, text)


def test_a_long_word_is_merged_as_the_reference_merges_it_without_quadratic_time(shapes):
    """One 16,000-letter word took 8.6 s to tokenise (the BPE loop is quadratic in the word; open_clip's too)."""
    import random
    import time

    from clipzoo.tokenizers import bytes_to_unicode, heap_bpe

    reference = open_clip.SimpleTokenizer()
    to_symbols = bytes_to_unicode()
    rng = random.Random(0)
    for alphabet in ("abcdefghijklmnopqrstuvwxyz", "ab", "a", "thequickbrownfox", "一只红色的猫", "😀🐈é"):
        for n in (49, 64, 150, 400):
            word = "".join(rng.choice(alphabet) for _ in range(n))
            for text in (word, (word[:3] * n)[:n]):
                token = "".join(to_symbols[b] for b in text.encode("utf-8"))
                assert heap_bpe(reference.bpe_ranks, token) == reference.bpe(token), text
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3000))
    assert torch.equal(shapes.tokenize([word], truncate=True), open_clip.SimpleTokenizer(context_length=24)([word]))
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(20_000))
    start = time.perf_counter()
    shapes.tokenize([word], truncate=True)
    assert time.perf_counter() - start < 2.0  # was ~13 s


def test_hugging_face_tokenizers_read_only_the_beginning_they_keep(hf, monkeypatch):
    """A 10 MB line was tokenised whole (8 s, 2 GB) to keep 24 tokens; the ids from its beginning are the same."""
    import random

    from clipzoo.models.tokenize import tokenize_with

    rng = random.Random(0)
    vocab = ["red", "circle", "Über", "naïve", "一只猫", "😀", "C++,", "x" * 30, "3.14", "&amp;", "a\tb"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [clipzoo.load(str(hf[name])) for name in ("clip", "siglip")]
    for model in models:
        tok, ctx = model.hf_tokenizer, model.context_length
        for _ in range(12):
            text = "".join(rng.choice(vocab) + rng.choice([" ", "  ", " \n "]) for _ in range(rng.randint(10, 3000)))
            want = tok([text], padding="max_length", truncation=True, max_length=ctx, return_tensors="pt")
            assert torch.equal(tokenize_with(tok, [text], ctx, True), want["input_ids"].long())
            n = len(tok(text, truncation=False, verbose=False)["input_ids"])
            if n > ctx:
                with pytest.raises(BadTextError, match=f"is {n} tokens" if n <= COUNTED_TOKENS_MAX else "more than"):
                    model.encode_text([text])
        seen: list = []

        def spy(self, text, *args, _call=type(tok).__call__, _seen=seen, **kwargs):
            _seen.append(text)
            return _call(self, text, *args, **kwargs)

        monkeypatch.setattr(type(tok), "__call__", spy)
        model.encode_text(["word " * 2_000_000], long_text="truncate")
        monkeypatch.undo()
        assert max(len(x) if isinstance(x, str) else max(map(len, x)) for x in seen) < 50_000, "read whole"


def test_a_sidecar_lists_a_bounded_text(shapes, tmp_path):
    text = "a red circle " * 10_000  # 130,000 characters
    meta = embed_to_file(shapes, tmp_path / "t.npy", texts=[text, "blue"], truncate=True, progress=False)
    listed = json.loads((tmp_path / "t.json").read_text())["inputs"]
    tail = "\u2026 [130000 characters]"
    assert listed[0] == text[:SIDECAR_TEXT_CHARS - len(tail)] + tail and len(listed[0]) == SIDECAR_TEXT_CHARS
    assert listed[1] == "blue" and meta["count"] == 2
    assert np.abs(np.load(tmp_path / "t.npy") - shapes.encode_text([text, "blue"], truncate=True).numpy()).max() < 1e-6


# ---------------------------------------------------------------------------------- 8. contradictory options
def test_truncate_with_another_long_text_is_refused(shapes, red_png, tmp_path):
    """--truncate silently won over --long-text chunks / error; long_text="" silently meant the model's default."""
    long = "A red circle. " * 20
    for command in (["compare", "clipzoo/tiny-shapes", "--image", red_png, "--text", long],
                    ["embed", "clipzoo/tiny-shapes", "--texts", tmp_path / "none.txt", "--out", tmp_path / "o.npy"]):
        for policy in ("chunks", "error"):
            assert one_line_error(run(*command, "--truncate", "--long-text", policy)) == \
                f"error: --truncate contradicts --long-text {policy}; pass one of them (--truncate is --long-text " \
                "truncate)"
        said = one_line_error(run(*command, "--truncate", "--long-text", ""))
        assert said == "error: long_text='' is not a policy; use one of error, truncate, chunks"
    ok = run("compare", "clipzoo/tiny-shapes", "--image", red_png, "--text", long, "--truncate", "--long-text",
             "truncate", "--json")
    assert ok.exit_code == 0, ok.output
    with pytest.raises(BadTextError, match=r"^long_text='' is not a policy; use one of error, truncate, chunks$"):
        shapes.encode_text(["a dog"], long_text="")
    with pytest.raises(BadTextError, match=r"^truncate=True contradicts long_text='chunks'; pass one of them$"):
        shapes.encode_text(["a dog"], truncate=True, long_text="chunks")
    with pytest.raises(BadTextError, match="long_text='' is not a policy"):
        clipzoo.load("clipzoo/tiny-shapes", long_text="")


# ---------------------------------------------------------------------------------- 9. docstring / 10. advice
def test_the_tokenizers_docstring_counts_right():
    import clipzoo.tokenizers as module

    assert len(open_clip.SimpleTokenizer().encode("<|endoftext|>")) == 6
    assert len(OpenAITokenizer().encode("<end_of_text>")) == 7
    doc = " ".join(module.__doc__.split())
    assert "one token for OpenAI and six for open_clip" in doc and "one for open_clip and seven for OpenAI" in doc


def test_the_too_long_advice_holds_where_there_is_no_truncate_argument(shapes, red_png):
    """Ensemble.compare / loss take no truncate=: the advice 'pass truncate=True' could not be followed there."""
    said = (r"^text 'big red circle .*' is 32 tokens, longer than the model's context length 24; shorten it, pass "
            r"truncate=True where the call takes it, or load the model with long_text='truncate' or 'chunks'$")
    with pytest.raises(BadTextError, match=said):
        clipzoo.Ensemble([shapes]).compare(image=[str(red_png)], text=[LONG_LABEL])
    fixed = clipzoo.Ensemble([clipzoo.load("clipzoo/tiny-shapes", long_text="truncate")])
    assert fixed.compare(image=[str(red_png)], text=[LONG_LABEL]).similarity.shape == (1, 1)
