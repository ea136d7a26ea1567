"""Measured parity of transformers' other image–text families (issue 20 §2, backend ``hf_family``): ALIGN,
GroupViT, OWL-ViT, OWLv2, CLIPSeg, MetaCLIP 2, AIMv2, BLIP (``BlipModel``), BLIP retrieval and BLIP-2 retrieval.

For each family, a tiny random model written by ``save_pretrained`` with its own processor: the largest absolute
difference, fp32 on CPU, between clipzoo and the model's own ``get_image_features`` / ``get_text_features``
(BLIP retrieval: ``vision_proj`` on the [CLS] state, and its ITM head's P(match) against ``rank``), and between
our preprocessing and the processor's ``pixel_values`` on 5 images of odd sizes. BLIP-2
(``Blip2ForImageTextRetrieval``): its projected query vectors, text features and ITC scores against
``use_image_text_matching_head=False`` (``score``, what ``clipzoo compare`` and ``/rank`` use, too), the ITM head's
logits against ``use_image_text_matching_head=True``. The writers and references are those of
tests/test_family_transformers.py (BLIP-2: ``clipzoo.testing.tiny_blip2``'s ``write_blip2`` and ``reference``, which
tests/test_family_blip2.py uses too).

    python benchmarks/hf_family_parity.py --out hf_family_parity.json

Writes a JSON file and prints it. No download.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import clipzoo  # noqa: E402
import test_family_transformers as fam  # noqa: E402
from clipzoo.testing import tiny_blip2, tiny_hf_families  # noqa: E402
from tables import family_parity_main  # noqa: E402

FAMILIES = (*tiny_hf_families.WRITERS, "blip", "blip2")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def run_blip2(folder: Path) -> dict:
    """BLIP-2 retrieval: ITC (max over queries) and ITM against the model's own two branches; ``score`` (what
    ``clipzoo compare``, ``/rank`` and ``predict`` use) against the ITC logits too."""
    images, texts = fam.odd_images(), fam.TEXTS
    tiny_blip2.write_blip2(folder)
    m = clipzoo.load(folder)
    ref = tiny_blip2.reference(folder, images, texts)
    itc = ref["itc"]
    ours = torch.stack([m.preprocess(image) for image in images])
    return {"class": "Blip2ForImageTextRetrieval", "image": max_diff(m.query_features(images), itc.image_embeds),
            "image_vector": max_diff(m.encode_image(images, normalize=False), itc.image_embeds.mean(dim=1)),
            "text": max_diff(m.encode_text(texts), itc.text_embeds), "pixels": max_diff(ours, ref["pixels"]),
            "itc": max_diff(m.itc(images, texts), itc.logits_per_image),
            "score": max_diff(m.score(images, m.encode_text(texts)), itc.logits_per_image),
            "itm": max_diff(m.itm_logits(images, texts), ref["itm"]),
            "format": "save_pretrained folder (config.json + safetensors + processor files)"}


def run_family(name: str, folder: Path) -> dict:
    if name == "blip2":
        return run_blip2(folder)
    images, texts = fam.odd_images(), fam.TEXTS
    if name == "blip":
        from transformers import AutoProcessor, BlipForImageTextRetrieval

        tiny_hf_families.write_blip(folder)
        m = clipzoo.load(folder)
        model = BlipForImageTextRetrieval.from_pretrained(folder).eval()
        processor = AutoProcessor.from_pretrained(folder)
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        tok = processor.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            ref_img = model.vision_proj(model.vision_model(pixel_values=pixel_values).last_hidden_state[:, 0])
            ref_txt = model.text_proj(model.text_encoder(**tok).last_hidden_state[:, 0])
            pairs = {"input_ids": tok["input_ids"].repeat(5, 1), "attention_mask": tok["attention_mask"].repeat(5, 1),
                     "pixel_values": pixel_values.repeat_interleave(len(texts), dim=0)}
            itm = model(**pairs, use_itm_head=True).itm_score.softmax(-1)[:, 1].reshape(5, len(texts))
        extra = {"rank": max_diff(m.rank(images, texts), itm)}
        cls = "BlipForImageTextRetrieval"
    else:
        tiny_hf_families.WRITERS[name](folder)
        m = clipzoo.load(folder)
        model, pixel_values, ref_img, ref_txt, _ = fam.reference(folder, texts, images)
        extra, cls = {}, type(model).__name__
    ours = torch.stack([m.preprocess(image) for image in images])
    return {"class": cls, "image": max_diff(m.encode_image(images, normalize=False), ref_img),
            "text": max_diff(m.encode_text(texts, normalize=False), ref_txt),
            "pixels": max_diff(ours, pixel_values), "format": "save_pretrained folder (config.json + safetensors "
            "+ processor files)", **extra}


def main(argv: list[str] | None = None) -> dict:
    torch.manual_seed(0)
    return family_parity_main("hf_family_parity", __doc__.splitlines()[0], FAMILIES,
                              lambda name, tmp: run_family(name, tmp / name), argv)


if __name__ == "__main__":
    main()
