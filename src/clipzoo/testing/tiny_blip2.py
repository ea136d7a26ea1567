"""A tiny random BLIP-2 retrieval model (``Blip2ForImageTextRetrieval``, the class of Salesforce/blip2-itm-vit-g),
written by ``save_pretrained`` with BLIP-2's own processor (``BlipImageProcessor`` + a WordPiece
``BertTokenizer``), so that clipzoo and transformers load the same files.

The image processor keeps an odd size and its own mean/std so that the pixel-for-pixel check means something.
Run ``python -m clipzoo.testing.tiny_blip2 OUT_DIR`` to write it. :func:`reference` holds what transformers
itself returns on such a folder (its processor's pixels, ITC and ITM outputs), for the tests and the parity
benchmark alike.
"""
from __future__ import annotations

import os
from pathlib import Path

from .entry import run_writer
from .tiny_hf import save_model_and_processor
from .tiny_hf_families import EMBED, HEADS, IMAGE, LAYERS, MLP, PATCH, WIDTH, bert_vocab, seeded, tower

QUERIES = 4  # learned Q-Former queries (the released models have 32)


def write_blip2(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """``Blip2ForImageTextRetrieval``: a ViT image tower, a Q-Former whose learned queries cross-attend to it
    (every layer), ``vision_projection`` / ``text_projection`` for contrastive scores and an ITM head."""
    from transformers import (
        BertTokenizer,
        Blip2Config,
        Blip2ForImageTextRetrieval,
        Blip2Processor,
        BlipImageProcessor,
    )

    tokenizer = BertTokenizer(vocab=bert_vocab(), model_max_length=35)
    qformer = {"vocab_size": len(tokenizer), "hidden_size": WIDTH, "num_hidden_layers": LAYERS,
               "num_attention_heads": HEADS, "intermediate_size": MLP, "encoder_hidden_size": WIDTH,
               "cross_attention_frequency": 1, "max_position_embeddings": 64, "use_qformer_text_input": True,
               "pad_token_id": tokenizer.pad_token_id}
    text = {"model_type": "opt", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "ffn_dim": 32, "word_embed_proj_dim": 16}  # the unused language model
    config = Blip2Config(vision_config=tower(image_size=IMAGE, patch_size=PATCH), qformer_config=qformer,
                         text_config=text, num_query_tokens=QUERIES, image_text_hidden_size=EMBED)
    model = seeded(Blip2ForImageTextRetrieval, config, seed)
    images = BlipImageProcessor(size={"height": IMAGE, "width": IMAGE}, image_mean=[0.5, 0.4, 0.3],
                                image_std=[0.2, 0.25, 0.3])
    return save_model_and_processor(folder, model, Blip2Processor(image_processor=images, tokenizer=tokenizer))


def reference(folder: "str | os.PathLike", images: list, texts: list[str]) -> dict:
    """transformers' own outputs on a BLIP-2 retrieval ``folder`` for ``images`` (PIL) × ``texts``: ``pixels``
    (its processor's ``pixel_values``), ``itc`` (the ``use_image_text_matching_head=False`` output: per-query
    ``image_embeds``, ``text_embeds``, ``logits_per_image`` = the max over queries of the cosine) and ``itm``
    (the ``use_image_text_matching_head=True`` logits of every pair, (n_images, n_texts, 2))."""
    import torch
    from transformers import AutoProcessor, Blip2ForImageTextRetrieval

    model = Blip2ForImageTextRetrieval.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    tok = processor.tokenizer(texts, padding=True, return_tensors="pt")
    n, t = len(images), len(texts)
    with torch.no_grad():
        itc = model(pixel_values=pixel_values, **tok, use_image_text_matching_head=False)
        itm = model(pixel_values=pixel_values.repeat_interleave(t, dim=0), input_ids=tok["input_ids"].repeat(n, 1),
                    attention_mask=tok["attention_mask"].repeat(n, 1), use_image_text_matching_head=True)
    return {"pixels": pixel_values, "itc": itc, "itm": itm.logits_per_image.reshape(n, t, 2)}


def main(argv: list[str] | None = None) -> None:
    run_writer("clipzoo.testing.tiny_blip2", "Write a tiny random BLIP-2 retrieval model as a save_pretrained folder.",
               lambda out, seed=0: {"blip2": write_blip2(Path(out) / "tiny-blip2", seed)}, argv)


if __name__ == "__main__":
    main()
