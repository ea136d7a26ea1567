"""A tiny random-weight CLAP (``transformers.ClapModel``), written offline exactly as ``save_pretrained`` writes it.

The folder holds the model, a ``ClapFeatureExtractor`` and a byte-level BPE ``RobertaTokenizer`` (the tokenizer
``ClapProcessor`` pairs with the real checkpoints), trained here on :data:`clipzoo.testing.tiny_hf.CORPUS`, so
both clipzoo and transformers load it and can be compared on the same weights.

Sizes are cut to the bone: 64 mel bins (CLAP's fusion path hard-codes 64), a 64x64 spectrogram "image"
(``spec_size`` 64), 1-second clips at 32 kHz with a 512-sample hop (63 frames), a two-stage HTSAT of width
16 -> 32, a two-layer RoBERTa of width 32 and 16-dimensional embeddings. ``fused=True`` writes a fusion model
(``enable_fusion`` with ``aff_2d``, truncation ``"fusion"``) like ``laion/clap-htsat-fused``.

Run ``python -m clipzoo.testing.tiny_clap OUT_DIR`` to write both.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .entry import run_writer
from .tiny_hf import CORPUS, randomize, save_model_and_processor

SAMPLE_RATE, HOP, FFT, SECONDS = 32_000, 512, 1024, 1
MEL_BINS, SPEC = 64, 64
WIDTH, EMBED, CONTEXT = 32, 16, 32


def roberta_bpe(size: int = 400) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE like RoBERTa's: ``<s> <pad> </s> <unk> <mask>`` are ids 0–4 (the BPE trainer is
    deterministic, so every run writes the same vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=size, show_progress=False,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return state["vocab"], merges


def tiny_clap(path: "str | os.PathLike", seed: int = 0, fused: bool = False) -> Path:
    """Write a tiny random ``ClapModel`` + ``ClapProcessor`` to ``path``; returns the folder."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    vocab, merges = roberta_bpe()
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=CONTEXT)
    features = ClapFeatureExtractor(feature_size=MEL_BINS, sampling_rate=SAMPLE_RATE, hop_length=HOP,
                                    max_length_s=SECONDS, fft_window_size=FFT, frequency_max=14_000,
                                    truncation="fusion" if fused else "rand_trunc", padding="repeatpad")
    config = ClapConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=2 * WIDTH, max_position_embeddings=CONTEXT + 2,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id),
        audio_config=dict(num_mel_bins=MEL_BINS, spec_size=SPEC, patch_size=4, patch_stride=(4, 4), window_size=4,
                          depths=(1, 1), num_attention_heads=(1, 2), patch_embeds_hidden_size=WIDTH // 2,
                          hidden_size=WIDTH, enable_fusion=fused, fusion_type="aff_2d" if fused else None),
        projection_dim=EMBED)
    torch.manual_seed(seed)
    model = randomize(ClapModel(config), seed, keep=("logit_scale_a", "logit_scale_t"))
    with torch.no_grad():  # two different scales, so a mix-up between them shows in the tests
        model.logit_scale_t.add_(0.5)
    return save_model_and_processor(path, model, ClapProcessor(feature_extractor=features, tokenizer=tokenizer))


def write_both(out: Path) -> dict[str, Path]:
    """The plain and the fused tiny CLAP under ``out``."""
    return {"clap": tiny_clap(out / "tiny-clap"), "clap_fused": tiny_clap(out / "tiny-clap-fused", fused=True)}


def main(argv: list[str] | None = None) -> None:
    run_writer("clipzoo.testing.tiny_clap", "Write a tiny random CLAP (plain and fused) as save_pretrained "
               "folders.", write_both, argv)


if __name__ == "__main__":
    main()
