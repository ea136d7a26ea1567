"""Tiny random-weight folders of transformers' other image–text families, written by ``save_pretrained``
with each family's own processor (tokenizer + image processor), so that clipzoo and transformers load the
same files: ALIGN, GroupViT, OWL-ViT, OWLv2, CLIPSeg, MetaCLIP 2, AIMv2, FLAVA, TIPSv2 and BLIP
(``BlipModel``; ``BlipForImageTextRetrieval`` by :func:`write_blip`).

Image processors keep odd settings of their own (EfficientNet's resize-then-crop and rescale offset, OWLv2's
pad-to-square, ImageNet statistics for CLIPSeg) so that the pixel-for-pixel check in the tests means something.
Run ``python -m clipzoo.testing.tiny_hf_families OUT_DIR`` to write them all.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .entry import run_writer
from .tiny_hf import CORPUS, clip_bpe, randomize, save_model_and_processor

WIDTH, LAYERS, HEADS, MLP, EMBED, IMAGE, PATCH = 32, 2, 2, 64, 16, 32, 8
MERGES = 800  # a short OpenAI BPE: a small embedding table, the same ids for the words it knows


def tower(**extra) -> dict:
    return {"hidden_size": WIDTH, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "intermediate_size": MLP, **extra}


def clip_tokenizer(context: int = 77, pad: str | None = None):
    """OpenAI's BPE (first :data:`MERGES` merges); ``pad="!"`` as OWL-ViT's processor pads."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe(MERGES)
    extra = {"pad_token": pad} if pad else {}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context, **extra), vocab


def clip_text(vocab: dict, context: int = 77, **extra) -> dict:
    eot = vocab["<|endoftext|>"]  # the highest id, where CLIP-style towers pool (argmax of the ids)
    ids = {"bos_token_id": eot - 1, "eos_token_id": eot, "pad_token_id": eot, **extra}
    return tower(vocab_size=len(vocab), max_position_embeddings=context, **ids)


def bert_vocab() -> dict[str, int]:
    """A WordPiece vocabulary from the corpus: special tokens, characters (alone and ``##``), whole words."""
    from tokenizers import normalizers, pre_tokenizers

    norm, split = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = sorted({w for t in CORPUS for w, _ in split.pre_tokenize_str(norm.normalize_str(t))})
    chars = sorted({c for w in words for c in w})
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    return {p: i for i, p in enumerate(pieces + [w for w in words if len(w) > 1])}


def xlmr_vocab() -> list[tuple[str, float]]:
    """An XLM-R style Unigram vocabulary (``<s> <pad> </s> <unk>`` first): words score above characters."""
    words = sorted({w for t in CORPUS for w in t.split()})
    chars = sorted({c for w in words for c in w})
    pieces = [("▁" + w, -2.0 - 0.01 * i) for i, w in enumerate(words)]
    pieces += [("▁", -3.0)] + [(c, -8.0 - 0.01 * i) for i, c in enumerate(chars)]
    return [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + pieces + [("<mask>", 0.0)]


def metaspace_bpe(size: int = 300) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A lower-cased ``▁``-metaspace BPE (TIPSv2's tokenizer model), ``<pad>`` = 0, ``<unk>`` = 1 (deterministic)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    tok.train_from_iterator(CORPUS, BpeTrainer(vocab_size=size, show_progress=False, special_tokens=["<pad>", "<unk>"]))
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return state["vocab"], merges


def seeded(cls, config, seed: int):
    torch.manual_seed(seed)
    return randomize(cls(config), seed)


# ---------------------------------------------------------------------------------------- writers
def write_align(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """``AlignModel``: an EfficientNet image tower (mean-pooled, unprojected) and a BERT text tower whose
    [CLS] state is projected to the image width; ``EfficientNetImageProcessor`` + ``BertTokenizer``."""
    from transformers import AlignConfig, AlignModel, AlignProcessor, BertTokenizer, EfficientNetImageProcessor

    tokenizer = BertTokenizer(vocab=bert_vocab(), model_max_length=64)
    vision = {"image_size": IMAGE, "width_coefficient": 0.5, "depth_coefficient": 0.25, "hidden_dim": EMBED,
              "kernel_sizes": [3, 5], "in_channels": [32, 16], "out_channels": [16, 32], "strides": [1, 2],
              "num_block_repeats": [1, 1], "expand_ratios": [1, 2], "depthwise_padding": []}
    config = AlignConfig(text_config=tower(vocab_size=len(tokenizer), max_position_embeddings=64,
                                           pad_token_id=tokenizer.pad_token_id),
                         vision_config=vision, projection_dim=EMBED)
    model = seeded(AlignModel, config, seed)
    images = EfficientNetImageProcessor(size={"height": IMAGE + 9, "width": IMAGE + 9}, do_center_crop=True,
                                        crop_size={"height": IMAGE, "width": IMAGE}, rescale_offset=True)
    return save_model_and_processor(folder, model, AlignProcessor(image_processor=images, tokenizer=tokenizer))


def write_groupvit(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """``GroupViTModel``: grouping stages of learned group tokens; CLIP text tower and processor."""
    from transformers import CLIPImageProcessor, CLIPProcessor, GroupViTConfig, GroupViTModel

    tokenizer, vocab = clip_tokenizer()
    vision = {"hidden_size": WIDTH, "intermediate_size": MLP, "num_attention_heads": HEADS, "image_size": IMAGE,
              "patch_size": PATCH, "depths": [1, 1], "num_group_tokens": [4, 0], "num_output_groups": [4, 2],
              "num_hidden_layers": 2}
    config = GroupViTConfig(text_config=clip_text(vocab), vision_config=vision, projection_dim=EMBED,
                            projection_intermediate_dim=WIDTH)
    model = seeded(GroupViTModel, config, seed)
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    return save_model_and_processor(folder, model, CLIPProcessor(image_processor=images, tokenizer=tokenizer))


def write_owlvit(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """``OwlViTModel`` (CLIP with 16 text positions) + ``OwlViTImageProcessor`` (a plain square resize)."""
    from transformers import OwlViTConfig, OwlViTImageProcessor, OwlViTModel, OwlViTProcessor

    tokenizer, vocab = clip_tokenizer(16, pad="!")
    config = OwlViTConfig(text_config=clip_text(vocab, 16, pad_token_id=0),
                          vision_config=tower(image_size=IMAGE, patch_size=PATCH), projection_dim=EMBED)
    model = seeded(OwlViTModel, config, seed)
    images = OwlViTImageProcessor(size={"height": IMAGE, "width": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    return save_model_and_processor(folder, model, OwlViTProcessor(image_processor=images, tokenizer=tokenizer))


def write_owlv2(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """``Owlv2Model`` + ``Owlv2ImageProcessor`` (pads to a square with grey 0.5, then resizes)."""
    from transformers import Owlv2Config, Owlv2ImageProcessor, Owlv2Model, Owlv2Processor

    tokenizer, vocab = clip_tokenizer(16, pad="!")
    config = Owlv2Config(text_config=clip_text(vocab, 16, pad_token_id=0),
                         vision_config=tower(image_size=IMAGE, patch_size=PATCH), projection_dim=EMBED)
    model = seeded(Owlv2Model, config, seed)
    images = Owlv2ImageProcessor(size={"height": IMAGE, "width": IMAGE})
    return save_model_and_processor(folder, model, Owlv2Processor(image_processor=images, tokenizer=tokenizer))


def write_clipseg(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """``CLIPSegModel`` (CLIP towers, position embeddings interpolated) + ``ViTImageProcessor``."""
    from transformers import CLIPSegConfig, CLIPSegModel, CLIPSegProcessor, ViTImageProcessor

    tokenizer, vocab = clip_tokenizer()
    config = CLIPSegConfig(text_config=clip_text(vocab), vision_config=tower(image_size=IMAGE, patch_size=PATCH),
                           projection_dim=EMBED, reduce_dim=EMBED)
    model = seeded(CLIPSegModel, config, seed)
    images = ViTImageProcessor(size={"height": IMAGE, "width": IMAGE}, image_mean=[0.485, 0.456, 0.406],
                               image_std=[0.229, 0.224, 0.225])
    return save_model_and_processor(folder, model, CLIPSegProcessor(image_processor=images, tokenizer=tokenizer))


def write_metaclip_2(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """``MetaClip2Model`` (CLIP towers, a multilingual XLM-R style vocabulary pooled at ``</s>``)."""
    from transformers import (
        CLIPImageProcessor,
        CLIPProcessor,
        MetaClip2Config,
        MetaClip2Model,
        XLMRobertaTokenizer,
    )

    tokenizer = XLMRobertaTokenizer(vocab=xlmr_vocab(), model_max_length=77)
    text = tower(vocab_size=len(tokenizer), max_position_embeddings=77, pad_token_id=tokenizer.pad_token_id,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = MetaClip2Config(text_config=text, vision_config=tower(image_size=IMAGE, patch_size=PATCH),
                             projection_dim=EMBED)
    model = seeded(MetaClip2Model, config, seed)
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    return save_model_and_processor(folder, model, CLIPProcessor(image_processor=images, tokenizer=tokenizer))


def write_aimv2(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """``Aimv2Model`` (the LiT-aligned AIMv2: RMSNorm + SwiGLU towers, attention-pooling head)."""
    from transformers import Aimv2Config, Aimv2Model, CLIPImageProcessor, CLIPProcessor

    tokenizer, vocab = clip_tokenizer()
    text = clip_text(vocab)
    text.pop("pad_token_id")
    config = Aimv2Config(text_config=text, vision_config=tower(image_size=IMAGE, patch_size=PATCH),
                         projection_dim=EMBED)
    model = seeded(Aimv2Model, config, seed)
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    return save_model_and_processor(folder, model, CLIPProcessor(image_processor=images, tokenizer=tokenizer))


def blip_parts(seed: int):
    """A tiny ``BlipConfig`` (BERT text tower with cross-attention to the ViT) and BLIP's processor."""
    from transformers import BertTokenizer, BlipConfig, BlipImageProcessor, BlipProcessor

    tokenizer = BertTokenizer(vocab=bert_vocab(), model_max_length=35)
    text = tower(vocab_size=len(tokenizer), max_position_embeddings=64, encoder_hidden_size=WIDTH,
                 pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                 sep_token_id=tokenizer.sep_token_id)
    config = BlipConfig(text_config=text, vision_config=tower(image_size=IMAGE, patch_size=PATCH),
                        projection_dim=EMBED, image_text_hidden_size=EMBED + 8)
    images = BlipImageProcessor(size={"height": IMAGE, "width": IMAGE})
    return config, BlipProcessor(image_processor=images, tokenizer=tokenizer)


def write_blip(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """``BlipForImageTextRetrieval`` (Salesforce/blip-itm-*): contrastive ``vision_proj`` / ``text_proj`` and
    the image–text matching head over a text tower that cross-attends to the image."""
    from transformers import BlipForImageTextRetrieval

    config, processor = blip_parts(seed)
    return save_model_and_processor(folder, seeded(BlipForImageTextRetrieval, config, seed), processor)


def write_blip_model(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """``BlipModel``: BLIP's contrastive towers with ``get_image_features`` / ``get_text_features``."""
    from transformers import BlipModel

    config, processor = blip_parts(seed)
    return save_model_and_processor(folder, seeded(BlipModel, config, seed), processor)


def write_flava(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """``FlavaModel``: ViT image and BERT text encoders (a multimodal encoder unused for features);
    ``FlavaImageProcessor`` + ``BertTokenizer``."""
    from transformers import BertTokenizer, FlavaConfig, FlavaImageProcessor, FlavaModel, FlavaProcessor

    tokenizer = BertTokenizer(vocab=bert_vocab(), model_max_length=77)
    text = tower(vocab_size=len(tokenizer), max_position_embeddings=77, pad_token_id=tokenizer.pad_token_id)
    config = FlavaConfig(image_config=tower(image_size=IMAGE, patch_size=PATCH), text_config=text,
                         multimodal_config=tower(), hidden_size=WIDTH, projection_dim=EMBED)
    model = seeded(FlavaModel, config, seed)
    images = FlavaImageProcessor(size={"height": IMAGE, "width": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    return save_model_and_processor(folder, model, FlavaProcessor(image_processor=images, tokenizer=tokenizer))


def write_tipsv2(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """``Tipsv2Model`` (a DINO-style ViT with a register token; a text tower mean-pooled over its mask), its
    ``Tipsv2Tokenizer`` (a metaspace BPE) and ``Tipsv2ImageProcessor`` (resize + rescale, no normalisation)."""
    from transformers import Tipsv2Config, Tipsv2ImageProcessor, Tipsv2Model, Tipsv2Processor, Tipsv2Tokenizer

    vocab, merges = metaspace_bpe()
    tokenizer = Tipsv2Tokenizer(vocab=vocab, merges=merges, model_max_length=16)
    text = tower(vocab_size=len(vocab), max_position_embeddings=16, pad_token_id=tokenizer.pad_token_id)
    vision = {"hidden_size": WIDTH, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "mlp_ratio": 2,
              "image_size": IMAGE, "patch_size": PATCH}
    config = Tipsv2Config(text_config=text, vision_config=vision)
    model = seeded(Tipsv2Model, config, seed)
    images = Tipsv2ImageProcessor(size={"height": IMAGE, "width": IMAGE})
    return save_model_and_processor(folder, model, Tipsv2Processor(image_processor=images, tokenizer=tokenizer))


WRITERS = {
    "align": write_align, "groupvit": write_groupvit, "owlvit": write_owlvit, "owlv2": write_owlv2,
    "clipseg": write_clipseg, "metaclip_2": write_metaclip_2, "aimv2": write_aimv2, "blip_model": write_blip_model,
    "flava": write_flava, "tipsv2": write_tipsv2,
}


def write_all(out: "str | os.PathLike", seed: int = 0) -> dict[str, Path]:
    out = Path(out)
    written = {name: writer(out / f"tiny-{name.replace('_', '-')}", seed) for name, writer in WRITERS.items()}
    return {**written, "blip": write_blip(out / "tiny-blip", seed)}


def main(argv: list[str] | None = None) -> None:
    run_writer("clipzoo.testing.tiny_hf_families", "Write tiny random ALIGN, GroupViT, OWL-ViT, OWLv2, CLIPSeg, "
               "MetaCLIP 2, AIMv2, BLIP, FLAVA and TIPSv2 models as save_pretrained folders.", write_all, argv)


if __name__ == "__main__":
    main()
