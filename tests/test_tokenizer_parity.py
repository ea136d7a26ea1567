"""Token ids of clipzoo's OpenAI tokenizers against openai's own (the ``clip-anytorch`` package)."""
from __future__ import annotations

import warnings

import pytest
import regex
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip-anytorch imports pkg_resources
    import clip as openai_clip
    from clip.simple_tokenizer import SimpleTokenizer as OpenAISimpleTokenizer

import open_clip as real_open_clip

from clipzoo.compat import clip, open_clip
from clipzoo.errors import BadTextError
from clipzoo.tokenizers import OpenAITokenizer, basic_clean, whitespace_clean

LONG = " ".join(["a photo of a cat"] * 15)  # 75 tokens + SOT + EOT = 77: fits exactly
CORPUS = [
    "a photo of a cat",
    "A Photo Of A CAT.",
    "Ünïcödé naïve café résumé Ångström façade",
    "Tom &amp; Jerry &lt;3 &quot;quoted&quot; &#39;single&#39; &amp;amp; &nbsp;x &eacute;",
    "emoji 🐈 🐕‍🦺 👩🏽‍💻 ❤️ 🇫🇷 😀😀😀",
    "日本語のテキスト 中文文本 한국어 텍스트",
    "مرحبا بالعالم — שלום עולם",
    "  lots\t\tof \n\n whitespace\u00a0nbsp\u3000ideographic\u2003em  ",
    "a\u2028b\u2029c\x85d\x0be\x0cf",
    "",
    " ",
    "\t\n",
    "mojibake: Ã©tÃ© â€œquotesâ€\x9d",
    "ﬁ ligature Ｆｕｌｌｗｉｄｔｈ ①②③",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "e\u0301 combining acute, ｶﾀｶﾅ",
    "It's we're I'M YOU'LL they'd she'S",
    "123 4567 3.14 1,000,000 #hashtag @user http://example.com/a?b=c",
    "C++ & C# <b>bold</b> {json: [1, 2]} \\back\\slash",
    "x" * 300,
    LONG,
]
SPECIAL = ["<|startoftext|> hi <|endoftext|>", "<|ENDOFTEXT|>", "<start_of_text>x<end_of_text>"]
OVER_LONG = [" ".join(["word"] * 76), " ".join(["word"] * 200), "😀🐈" * 40, "日本" * 100]

ref_tok = OpenAISimpleTokenizer()


@pytest.fixture(autouse=True)
def openai_tokenizer_active(monkeypatch):
    """clip.tokenize follows the last clip.load; these tests want OpenAI's tokenizer."""
    monkeypatch.setattr(clip, "_active_comparator", None)


def _ref_tokenize(text, **kw):
    return openai_clip.tokenize(text, **kw)


@pytest.mark.parametrize("text", CORPUS + SPECIAL, ids=range(len(CORPUS + SPECIAL)))
def test_clip_tokenize_matches_openai(text):
    assert torch.equal(clip.tokenize(text), _ref_tokenize(text))
    assert torch.equal(clip.tokenize(text, truncate=True), _ref_tokenize(text, truncate=True))
    assert clip.tokenize(text).dtype == _ref_tokenize(text).dtype


def test_batch_and_context_lengths_match_openai():
    batch = CORPUS + SPECIAL
    assert torch.equal(clip.tokenize(batch), _ref_tokenize(batch))
    for n in (8, 16, 100):
        assert torch.equal(clip.tokenize(batch, context_length=n, truncate=True),
                           _ref_tokenize(batch, context_length=n, truncate=True))


@pytest.mark.parametrize("text", OVER_LONG, ids=range(len(OVER_LONG)))
def test_over_long_text_raises_openais_error_or_truncates(text):
    with pytest.raises(RuntimeError) as ref_err:
        _ref_tokenize(text)
    with pytest.raises(RuntimeError) as err:
        clip.tokenize(["fine", text])
    assert type(err.value) is RuntimeError
    assert str(err.value) == str(ref_err.value) == f"Input {text} is too long for context length 77"
    ours = clip.tokenize(text, truncate=True)
    assert torch.equal(ours, _ref_tokenize(text, truncate=True))
    assert ours[0, -1].item() == 49407  # last kept token is EOT


def test_encode_decode_match_openai_simple_tokenizer():
    ours = OpenAITokenizer()
    for text in CORPUS + SPECIAL + OVER_LONG:
        ids = ours.encode(text)
        assert ids == ref_tok.encode(text)
        assert ours.decode(ids) == ref_tok.decode(ids)
    assert clip._tokenizer.encoder == ref_tok.encoder  # clip._tokenizer, as openai exposes it


@pytest.mark.parametrize("text", CORPUS + OVER_LONG, ids=range(len(CORPUS + OVER_LONG)))
def test_decode_round_trip(text):
    """decode(encode(text)) gives the cleaned text's pieces, each followed by a space (BPE's </w>)."""
    ours = OpenAITokenizer()
    clean = whitespace_clean(basic_clean(text)).lower()
    pieces = regex.findall(ours.pat, clean)
    assert ours.decode(ours.encode(text)) == "".join(p + " " for p in pieces)
    # open_clip's decode over its tokenize output, through the compat module: identical to open_clip's
    ids = open_clip.tokenize(text)[0]
    ids = ids[ids > 0]
    assert open_clip.decode(ids) == real_open_clip.decode(ids)
    body = open_clip.decode(ids[1:-1]) if len(ids) > 2 else ""
    if len(ours.encode(text)) <= 75:
        assert body == "".join(p + " " for p in pieces)


def _comparator(tiny_files):
    import clipzoo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clipzoo.load(str(tiny_files["openai_state_dict"]))


def test_comparator_tokenize_for_an_openai_model_matches_openai(tiny_files):
    comp = _comparator(tiny_files)
    assert torch.equal(comp.tokenize(CORPUS), _ref_tokenize(CORPUS))
    assert torch.equal(comp.tokenize(OVER_LONG, truncate=True), _ref_tokenize(OVER_LONG, truncate=True))
    for text in OVER_LONG:
        with pytest.raises(BadTextError):
            comp.tokenize([text])


def test_comparator_tokenize_special_token_literals_match_openai(tiny_files):
    comp = _comparator(tiny_files)
    assert torch.equal(comp.tokenize(SPECIAL), _ref_tokenize(SPECIAL))
