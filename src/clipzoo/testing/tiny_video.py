"""Tiny random-weight video–text models, written by ``save_pretrained`` with each family's own processor:
X-CLIP (``XCLIPModel`` + ``XCLIPProcessor``: OpenAI's BPE and VideoMAE's image processor) and VideoPrism
(``VideoPrismClipModel`` + ``VideoPrismProcessor``: a Unigram tokenizer built here and its video processor), PE video
(``PeVideoModel``) and PE audio-visual (``PeAudioVideoModel`` + ``PeAudioVideoProcessor``, as ``facebook/pe-av-*``).
Run ``python -m clipzoo.testing.tiny_video OUT_DIR`` to write them.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .entry import run_writer
from .tiny_hf import CORPUS, clip_bpe, randomize, save_model_and_processor
from .tiny_hf_families import bert_vocab

WIDTH, LAYERS, HEADS, MLP, EMBED, FRAME, PATCH, FRAMES = 32, 2, 2, 64, 16, 32, 8, 4


def _tower(**extra) -> dict:
    return {"hidden_size": WIDTH, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "intermediate_size": MLP, **extra}


def write_xclip(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """X-CLIP: a CLIP ViT per frame, the cross-frame (MIT) transformer over :data:`FRAMES` frames, a CLIP text
    tower; VideoMAE's image processor with OpenAI's mean / std (as microsoft/xclip-* ship)."""
    from transformers import CLIPTokenizer, VideoMAEImageProcessor, XCLIPConfig, XCLIPModel, XCLIPProcessor

    vocab, merges = clip_bpe(800)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    eot = vocab["<|endoftext|>"]
    config = XCLIPConfig(
        text_config=_tower(vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=eot - 1,
                           eos_token_id=eot, pad_token_id=eot),
        vision_config=_tower(image_size=FRAME, patch_size=PATCH, num_frames=FRAMES, mit_hidden_size=EMBED,
                             mit_intermediate_size=2 * EMBED, mit_num_attention_heads=HEADS),
        projection_dim=EMBED, prompt_num_attention_heads=HEADS)
    torch.manual_seed(seed)
    model = randomize(XCLIPModel(config), seed)
    images = VideoMAEImageProcessor(size={"shortest_edge": FRAME}, crop_size={"height": FRAME, "width": FRAME},
                                    image_mean=[0.48145466, 0.4578275, 0.40821073],
                                    image_std=[0.26862954, 0.26130258, 0.27577711])
    return save_model_and_processor(folder, model, XCLIPProcessor(image_processor=images, tokenizer=tokenizer))


def _unigram_tokenizer():
    """VideoPrism's tokenizer layout (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2) over the corpus' words."""
    from transformers import VideoPrismTokenizer

    words = sorted({w for t in CORPUS for w in t.lower().split()})
    chars = sorted({c for w in words for c in w})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -2.0 - 0.01 * i) for i, w in enumerate(words)]
    vocab += [(c, -8.0) for c in chars] + [("▁", -9.0)]
    return VideoPrismTokenizer(vocab=vocab, extra_ids=0, model_max_length=64), len(vocab)


def write_videoprism(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """VideoPrism LvT: factorised space-time ViT (tubelets), attention pooling, a text tower; its processor."""
    from transformers import (
        LlavaOnevisionVideoProcessor,
        VideoPrismClipModel,
        VideoPrismConfig,
        VideoPrismProcessor,
    )

    tokenizer, vocab_size = _unigram_tokenizer()
    config = VideoPrismConfig(
        vision_config=dict(image_size=FRAME, num_frames=FRAMES, tubelet_size=[1, PATCH, PATCH], hidden_size=WIDTH,
                           num_attention_heads=HEADS, intermediate_size=MLP, num_spatial_layers=LAYERS,
                           num_temporal_layers=1, num_auxiliary_layers=1),
        text_config=dict(vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, max_position_embeddings=64))
    torch.manual_seed(seed)
    model = randomize(VideoPrismClipModel(config), seed)
    video = LlavaOnevisionVideoProcessor(size={"height": FRAME, "width": FRAME}, do_normalize=False,
                                         num_frames=FRAMES)
    return save_model_and_processor(folder, model, VideoPrismProcessor(video_processor=video, tokenizer=tokenizer))


def _pe_text_tokenizer():
    """A WordPiece tokenizer over the corpus and a tiny ModernBERT text config using its special ids."""
    from transformers import BertTokenizer

    vocab = bert_vocab()
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizer(str(vocab_file), model_max_length=64)
    special = {k: vocab[t] for k, t in (("pad_token_id", "[PAD]"), ("cls_token_id", "[CLS]"),
                                        ("sep_token_id", "[SEP]"), ("bos_token_id", "[CLS]"), ("eos_token_id", "[SEP]"),
                                        ("mask_token_id", "[MASK]"))}
    text = dict(model_type="modernbert", vocab_size=len(vocab), hidden_size=WIDTH, intermediate_size=MLP,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=64,
                global_attn_every_n_layers=1, local_attention=16, **special)
    return tokenizer, text


def _pe_encoder(**extra) -> dict:
    """A one-layer PE temporal / fusion transformer config."""
    return dict(hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=1, num_attention_heads=HEADS,
                head_dim=WIDTH // HEADS, **extra)


def _pe_video_parts(num_frames: "int | None"):
    """PE's video encoder config (a timm PE ViT per frame under a temporal transformer) and video processor."""
    from transformers import PeVideoVideoProcessor

    vision = dict(architecture="vit_pe_core_tiny_patch16_384", num_classes=WIDTH,
                  model_args=dict(img_size=FRAME, patch_size=PATCH, depth=1, embed_dim=WIDTH, num_heads=HEADS))
    video = PeVideoVideoProcessor(size={"height": FRAME, "width": FRAME}, num_frames=num_frames, do_resize=True,
                                  do_rescale=True, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return _pe_encoder(vision_config=vision), video


def write_pe_video(folder: "str | os.PathLike", seed: int = 0) -> Path:
    """Perception Encoder video: a timm PE ViT per frame, a temporal transformer, a ModernBERT text tower; its
    processor (``PeVideoVideoProcessor`` + a WordPiece tokenizer built here)."""
    from transformers import PeVideoConfig, PeVideoModel, PeVideoProcessor

    tokenizer, text = _pe_text_tokenizer()
    video_config, video = _pe_video_parts(FRAMES)
    config = PeVideoConfig(text_config=text, video_config=video_config)
    torch.manual_seed(seed)
    model = randomize(PeVideoModel(config), seed, keep=())
    return save_model_and_processor(folder, model, PeVideoProcessor(video_processor=video, tokenizer=tokenizer))


def write_pe_av(folder: "str | os.PathLike", seed: int = 0, num_frames: "int | None" = FRAMES) -> Path:
    """Perception Encoder audio-visual (``facebook/pe-av-*``): PE video's encoder, a DAC-VAE audio encoder under an
    audio transformer, an audio–video fusion transformer and one ModernBERT text tower with a head per modality
    pair; ``PeAudioVideoProcessor`` (PE audio's feature extractor, PE video's video processor, a WordPiece
    tokenizer). ``num_frames``: the video processor's (the ``-16-frame`` checkpoints'), None for all frames."""
    from transformers import PeAudioFeatureExtractor, PeAudioVideoConfig, PeAudioVideoModel, PeAudioVideoProcessor

    tokenizer, text = _pe_text_tokenizer()
    video_config, video = _pe_video_parts(num_frames)
    dac = dict(encoder_hidden_size=4, downsampling_ratios=[2, 4], codebook_dim=8, hidden_size=16,
               decoder_hidden_size=8, n_codebooks=2, codebook_size=16)
    config = PeAudioVideoConfig(text_config=text, audio_video_config=_pe_encoder(
        video_config=video_config, audio_config=_pe_encoder(dac_config=dac)))
    torch.manual_seed(seed)
    model = randomize(PeAudioVideoModel(config), seed, keep=())
    audio = PeAudioFeatureExtractor(sampling_rate=48_000, hop_length=8)
    processor = PeAudioVideoProcessor(feature_extractor=audio, video_processor=video, tokenizer=tokenizer)
    return save_model_and_processor(folder, model, processor)


def write_all(out: "str | os.PathLike", seed: int = 0) -> dict[str, Path]:
    out = Path(out)
    return {"x_clip": write_xclip(out / "x_clip", seed), "videoprism": write_videoprism(out / "videoprism", seed),
            "pe_video": write_pe_video(out / "pe_video", seed), "pe_av": write_pe_av(out / "pe_av", seed),
            "pe_av_all_frames": write_pe_av(out / "pe_av_all_frames", seed, num_frames=None)}


def main(argv: list[str] | None = None) -> None:
    run_writer("clipzoo.testing.tiny_video", "Write tiny random X-CLIP, VideoPrism, PE video and PE-AV folders.",
               write_all, argv)


if __name__ == "__main__":  # pragma: no cover
    main()
