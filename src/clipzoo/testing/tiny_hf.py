"""Tiny random-weight Hugging Face models, written offline exactly as ``save_pretrained`` writes them.

Each writer saves a model *with a working tokenizer and image processor*, so that both clipzoo and
transformers itself can load the folder and be compared on the same weights:

- :func:`write_clip` — ``CLIPModel`` + ``CLIPTokenizer`` (OpenAI's real BPE, read from open_clip's copy);
- :func:`write_siglip` — ``SiglipModel`` + ``SiglipTokenizer`` (a sentencepiece model trained here);
- :func:`write_siglip2` — a SigLIP 2 fixed-resolution checkpoint: ``SiglipModel`` + ``GemmaTokenizer``;
- :func:`write_siglip2_naflex` — ``Siglip2Model`` (NaFlex) + ``Siglip2Tokenizer`` + ``Siglip2ImageProcessor``;
- :func:`write_chinese_clip` — ``ChineseCLIPModel`` + ``BertTokenizer`` (a WordPiece vocab built here);
- :func:`write_altclip` — ``AltCLIPModel`` + ``XLMRobertaTokenizer`` (a Unigram vocab built here);
- :func:`write_st_text` — a sentence-transformers text tower: DistilBERT + mean Pooling + Dense;
- :func:`write_st_clip` — a sentence-transformers folder wrapping an HF ``CLIPModel`` (both towers).

Vocabularies come from :data:`CORPUS` (trained with ``tokenizers`` / ``sentencepiece``, or built from
its words where a trainer is not deterministic), so nothing is downloaded and every run writes the
same files. Run ``python -m clipzoo.testing.tiny_hf OUT_DIR`` to write them all.
"""
from __future__ import annotations

import gzip
import io
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from .entry import run_writer

CORPUS = [
    "a photo of a cat", "a photo of a dog", "a diagram", "a red square on a white background",
    "a blue circle", "a green triangle", "two birds flying over the sea", "an old man reading a book",
    "the quick brown fox jumps over the lazy dog", "a painting of mountains at sunset",
    "une photo d'un chat", "ein Foto eines Hundes", "una foto de un perro", "a bowl of fruit",
    "一只猫的照片", "一只狗的照片", "红色的正方形", "蓝色的圆形", "猫和狗", "图表",
    "numbers 0 1 2 3 4 5 6 7 8 9", "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",
    "punctuation , . ! ? ; : ' \" ( ) - _ / & % $ #",
]
WIDTH, LAYERS, HEADS, MLP, EMBED = 32, 2, 2, 64, 16
IMAGE, PATCH = 32, 8


# ---------------------------------------------------------------------------------------- helpers
def _tower(**extra) -> dict:
    return {"hidden_size": WIDTH, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "intermediate_size": MLP, **extra}


def _vision(**extra) -> dict:
    return _tower(image_size=IMAGE, patch_size=PATCH, **extra)


def randomize(model, seed: int, keep: tuple[str, ...] = ("logit_scale", "logit_bias")):
    """Seeded noise on every weight, so no tensor keeps a trivial init (LayerNorm ones, zero biases)."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1] not in keep:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def save_model_and_processor(folder, model, processor) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def clip_bpe(n_merges: int | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's byte-level BPE (vocab.json / merges.txt contents), from the file open_clip ships.

    With ``n_merges=None`` the vocabulary is OpenAI's full one (49408 ids), so ids match openai's tokenizer.
    """
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path) as f:
        merges = f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in (merges if n_merges is None else merges[:n_merges])]
    units = list(bytes_to_unicode().values())
    tokens = units + [u + "</w>" for u in units] + ["".join(m) for m in merges]
    tokens = tokens + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _corpus_words(lowercase: bool) -> list[str]:
    """The corpus split into words the BERT way (punctuation and each CJK character apart), sorted."""
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(lowercase=lowercase)
    split = pre_tokenizers.BertPreTokenizer()
    return sorted({w for text in CORPUS for w, _ in split.pre_tokenize_str(norm.normalize_str(text))})


def _wordpiece_vocab() -> dict[str, int]:
    """A WordPiece vocabulary built deterministically (trainers break ties in hash order): the special
    tokens, every corpus character alone and as a ``##`` continuation, then every corpus word."""
    words = _corpus_words(lowercase=True)
    chars = sorted({c for w in words for c in w})
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    pieces += [w for w in words if len(w) > 1]
    return {p: i for i, p in enumerate(pieces)}


def _unigram_vocab() -> list[tuple[str, float]]:
    """An XLM-R style Unigram vocabulary (``<s> <pad> </s> <unk>`` first, ``<mask>`` last), built
    deterministically: whole corpus words (``▁word``) score above the single characters they fall back to."""
    words = sorted({w for text in CORPUS for w in text.split()})
    chars = sorted({c for w in words for c in w})
    pieces = [("▁" + w, -2.0 - 0.01 * i) for i, w in enumerate(words)]
    pieces += [("▁", -3.0)] + [(c, -8.0 - 0.01 * i) for i, c in enumerate(chars)]
    return [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + pieces + [("<mask>", 0.0)]


def _gemma_bpe(size: int = 400) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A Gemma-style BPE (``▁`` for spaces, lower-cased corpus): ``<pad> <eos> <bos> <unk> <mask>`` are ids 0–4.
    (The BPE trainer is deterministic, unlike the WordPiece and Unigram ones.)"""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous")
    tok.train_from_iterator(CORPUS, BpeTrainer(vocab_size=size, show_progress=False, special_tokens=[
        "<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]))
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return state["vocab"], merges


def _sentencepiece_model(path: Path, size: int = 200) -> Path:
    """A T5/SigLIP-style sentencepiece model: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, no BOS."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_writer=buf, vocab_size=size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        hard_vocab_limit=False, character_coverage=1.0, minloglevel=2)
    path.write_bytes(buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------- writers
def write_clip(folder: "str | os.PathLike", seed: int = 0, n_merges: int | None = None) -> Path:
    """``CLIPModel`` (pre-norm ViT + causal text transformer pooled at EOS) with OpenAI's tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab, merges = clip_bpe(n_merges)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    eot = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=_tower(vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=eot - 1,
                           eos_token_id=eot, pad_token_id=eot),
        vision_config=_vision(), projection_dim=EMBED)
    torch.manual_seed(seed)
    model = randomize(CLIPModel(config), seed)
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    return save_model_and_processor(folder, model, CLIPProcessor(image_processor=images, tokenizer=tokenizer))


def _siglip_model(vocab_size: int, seed: int, pad_id: int, eos_id: int, context: int):
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig(
        text_config=_tower(vocab_size=vocab_size, max_position_embeddings=context, projection_size=WIDTH,
                           pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None),
        vision_config=_vision())
    torch.manual_seed(seed)
    model = SiglipModel(config)
    with torch.no_grad():  # the values SigLIP is trained from: t' = log 10, b = -10
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return randomize(model, seed)


def _siglip_images():
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": IMAGE, "width": IMAGE})


def write_siglip(folder: "str | os.PathLike", seed: int = 0, context: int = 16) -> Path:
    """``SiglipModel`` + ``SiglipTokenizer`` (sentencepiece, lower-cased, ``</s>`` appended and used as pad).

    Real SigLIP checkpoints pad every text to 64 tokens; the tiny one uses ``context`` (16) to stay small.
    """
    from transformers import SiglipProcessor, SiglipTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spm_path = _sentencepiece_model(folder / "spiece.model")
    tokenizer = SiglipTokenizer(vocab_file=str(spm_path), model_max_length=context)
    model = _siglip_model(tokenizer.vocab_size, seed, tokenizer.pad_token_id, tokenizer.eos_token_id, context)
    processor = SiglipProcessor(image_processor=_siglip_images(), tokenizer=tokenizer)
    return save_model_and_processor(folder, model, processor)


def write_siglip2(folder: "str | os.PathLike", seed: int = 0, context: int = 16) -> Path:
    """A SigLIP 2 fixed-resolution checkpoint, as google ships them: ``model_type`` "siglip" with a
    Gemma tokenizer that appends ``<eos>`` (no ``<bos>``) and pads with ``<pad>`` (id 0)."""
    from transformers import GemmaTokenizer, SiglipProcessor

    vocab, merges = _gemma_bpe()
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=False, add_eos_token=True,
                               model_max_length=context, padding_side="right")
    model = _siglip_model(len(vocab), seed, tokenizer.pad_token_id, tokenizer.eos_token_id, context)
    processor = SiglipProcessor(image_processor=_siglip_images(), tokenizer=tokenizer)
    return save_model_and_processor(folder, model, processor)


def write_siglip2_naflex(folder: "str | os.PathLike", seed: int = 0, context: int = 16) -> Path:
    """``Siglip2Model`` (NaFlex: patches + spatial shapes) with ``Siglip2Tokenizer`` and image processor.

    Patch size 16 and 256 patches are the real checkpoints' values (and ``Siglip2Processor``'s defaults,
    which override the image processor's own); the 4x4 position grid is interpolated as in the real ones.
    """
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor, Siglip2Tokenizer

    vocab, merges = _gemma_bpe()
    tokenizer = Siglip2Tokenizer(vocab=vocab, merges=merges, add_bos_token=False, add_eos_token=True,
                                 model_max_length=context, padding_side="right")
    config = Siglip2Config(
        text_config=_tower(vocab_size=len(vocab), max_position_embeddings=context, projection_size=WIDTH,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                           bos_token_id=None),
        vision_config=_tower(patch_size=16, num_patches=16))
    torch.manual_seed(seed)
    model = Siglip2Model(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    model = randomize(model, seed)
    images = Siglip2ImageProcessor(patch_size=16, max_num_patches=256)
    processor = Siglip2Processor(image_processor=images, tokenizer=tokenizer)
    return save_model_and_processor(folder, model, processor)


def write_chinese_clip(folder: "str | os.PathLike", seed: int = 0, context: int = 52) -> Path:
    """``ChineseCLIPModel`` (BERT text tower pooled at [CLS]) + ``BertTokenizer`` + its image processor."""
    from transformers import (
        BertTokenizer,
        ChineseCLIPConfig,
        ChineseCLIPImageProcessor,
        ChineseCLIPModel,
        ChineseCLIPProcessor,
    )

    tokenizer = BertTokenizer(vocab=_wordpiece_vocab(), model_max_length=context)
    config = ChineseCLIPConfig(
        text_config=_tower(vocab_size=len(tokenizer), max_position_embeddings=64, type_vocab_size=2,
                           pad_token_id=tokenizer.pad_token_id),
        vision_config=_vision(projection_dim=EMBED), projection_dim=EMBED)
    torch.manual_seed(seed)
    model = randomize(ChineseCLIPModel(config), seed)
    images = ChineseCLIPImageProcessor(size={"height": IMAGE, "width": IMAGE}, do_center_crop=False,
                                       crop_size={"height": IMAGE, "width": IMAGE})
    return save_model_and_processor(folder, model, ChineseCLIPProcessor(image_processor=images, tokenizer=tokenizer))


def write_altclip(folder: "str | os.PathLike", seed: int = 0, context: int = 77) -> Path:
    """``AltCLIPModel`` (XLM-R text tower + CLIP ViT) + ``XLMRobertaTokenizer`` + ``CLIPImageProcessor``."""
    from transformers import AltCLIPConfig, AltCLIPModel, AltCLIPProcessor, CLIPImageProcessor, XLMRobertaTokenizer

    tokenizer = XLMRobertaTokenizer(vocab=_unigram_vocab(), model_max_length=context)
    config = AltCLIPConfig(
        text_config=_tower(vocab_size=len(tokenizer), max_position_embeddings=context + 2, type_vocab_size=1,
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, project_dim=EMBED),
        vision_config=_vision(projection_dim=EMBED), projection_dim=EMBED)
    torch.manual_seed(seed)
    model = randomize(AltCLIPModel(config), seed)
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    return save_model_and_processor(folder, model, AltCLIPProcessor(image_processor=images, tokenizer=tokenizer))


def write_distilbert(folder: "str | os.PathLike", seed: int = 0, context: int = 128) -> Path:
    """A plain HF ``DistilBertModel`` folder with a WordPiece tokenizer (the text tower of sbert's
    multilingual CLIP)."""
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    tokenizer = DistilBertTokenizer(vocab=_wordpiece_vocab(), model_max_length=context)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=WIDTH, n_layers=LAYERS, n_heads=HEADS,
                              hidden_dim=MLP, max_position_embeddings=context, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = randomize(DistilBertModel(config), seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_st_text(folder: "str | os.PathLike", seed: int = 0, out_dim: int = EMBED, context: int = 128,
                  legacy: bool = True) -> Path:
    """A sentence-transformers text tower like ``clip-ViT-B-32-multilingual-v1``: DistilBERT, mean
    pooling, then a bias-free Dense layer (identity activation) into the CLIP embedding space.

    ``legacy=True`` rewrites the folder in the layout the hub repository has (sentence-transformers 1.x/2.x:
    ``sentence_transformers.models.*`` module names, old pooling keys, ``pytorch_model.bin`` Dense weights);
    ``legacy=False`` keeps what the installed sentence-transformers writes.
    """
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():  # the old import path, kept so that older sentence-transformers work too
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers.models import Dense, Pooling, Transformer

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        hf = write_distilbert(Path(tmp) / "distilbert", seed, context)
        transformer = Transformer(str(hf), max_seq_length=context)
        pooling = Pooling(WIDTH, pooling_mode="mean")
        torch.manual_seed(seed + 7)
        dense = Dense(WIDTH, out_dim, bias=False, activation_function=torch.nn.Identity())
        model = SentenceTransformer(modules=[transformer, pooling, dense], device="cpu")
        model.save(str(folder))
    if legacy:
        _write_json(folder / "modules.json", [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}])
        _write_json(folder / "sentence_bert_config.json", {"max_seq_length": context, "do_lower_case": False})
        _write_json(folder / "1_Pooling" / "config.json", {
            "word_embedding_dimension": WIDTH, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})
        _write_json(folder / "2_Dense" / "config.json", {
            "in_features": WIDTH, "out_features": out_dim, "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity"})
        from safetensors.torch import load_file

        weights = folder / "2_Dense" / "model.safetensors"
        torch.save(load_file(str(weights)), str(folder / "2_Dense" / "pytorch_model.bin"))
        weights.unlink()
    return folder


def write_st_clip(folder: "str | os.PathLike", seed: int = 0, legacy: bool = True) -> Path:
    """A sentence-transformers folder wrapping an HF ``CLIPModel`` (both towers).

    ``legacy=True`` lays it out like the hub's ``sentence-transformers/clip-ViT-B-32``: the HF files in
    ``0_CLIPModel/`` and ``modules.json`` naming ``sentence_transformers.models.CLIPModel``.
    """
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers.models import CLIPModel

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        hf = write_clip(Path(tmp) / "clip", seed)
        if legacy:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copytree(hf, folder / "0_CLIPModel", dirs_exist_ok=True)
            _write_json(folder / "modules.json", [
                {"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}])
            _write_json(folder / "config_sentence_transformers.json",
                        {"__version__": {"sentence_transformers": "2.0.0"}})
            return folder
        model = SentenceTransformer(modules=[CLIPModel(str(hf), _from_auto_load=True)], device="cpu")
        model.save(str(folder))
    return folder


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2))


def cache_as_hub(folder: "str | os.PathLike", repo_id: str, cache_dir: "str | os.PathLike",
                 commit: str = "0" * 40) -> Path:
    """Place a model folder in a Hugging Face hub cache as if ``repo_id`` had been downloaded into it
    (``models--org--name/{refs/main, snapshots/<commit>/…}``), so it loads offline. Returns the snapshot."""
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


WRITERS = {
    "clip": write_clip, "siglip": write_siglip, "siglip2": write_siglip2, "siglip2_naflex": write_siglip2_naflex,
    "chinese_clip": write_chinese_clip, "altclip": write_altclip, "st_text": write_st_text, "st_clip": write_st_clip,
}


def write_all(out: "str | os.PathLike", seed: int = 0) -> dict[str, Path]:
    out = Path(out)
    return {name: writer(out / f"tiny-{name.replace('_', '-')}", seed) for name, writer in WRITERS.items()}


def main(argv: list[str] | None = None) -> None:
    run_writer("clipzoo.testing.tiny_hf", "Write tiny random transformers and sentence-transformers models "
               "(CLIP, SigLIP, SigLIP 2, Chinese-CLIP, AltCLIP, …) as save_pretrained folders.", write_all, argv)


if __name__ == "__main__":
    main()
