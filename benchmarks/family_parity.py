"""Measured parity of the families mmc could only load through git clones (issue 20 §1): SLIP, KELIP, CLIP-fa and
CLOOB, each from a tiny random checkpoint in its publisher's format, against the reference its test uses.

For each family: the largest absolute difference of raw (unnormalised) image and text features, fp32 on CPU,
between clipzoo's Comparator and the reference — timm's ViT plus a functional text tower (SLIP), openai's own
CLIP module (KELIP), transformers' ``pooler_output`` (CLIP-fa), a functional re-derivation of the Haiku model
on the Haiku parameters (CLOOB, JAX's GELU; ``cloob-port`` is ``gelu="exact"`` against the PyTorch port's GELU).
The writers and references are those of tests/test_family_*.py.

    python benchmarks/family_parity.py --out family_parity.json
    python benchmarks/family_parity.py --families slip cloob

Writes a JSON file and prints it. No download.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from tables import family_parity_main  # noqa: E402

# torch and the tests' writers and references are imported where a family runs: --help stays instant

FAMILIES = ("slip", "kelip", "clip-fa", "cloob", "cloob-port")


def max_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def run_slip(folder: Path) -> dict:
    import torch

    import test_family_slip as slip

    sd = slip.write_slip(folder / "slip.pt", "SLIP")
    m = slip._card("[slip - facebookresearch - slip_small_25ep]", folder / "slip.pt")
    images = slip._images()
    with torch.no_grad():
        want_img = slip._vit(0)(slip.ref_pixels(images)) @ sd["image_projection"]
        want_txt = slip.ref_text(sd, slip.clip.tokenize(slip.TEXTS))
    return {"image": max_diff(m.encode_image(images, normalize=False), want_img),
            "text": max_diff(m.encode_text(slip.TEXTS, normalize=False), want_txt),
            "reference": "timm ViT (as SLIP builds it) + functional OpenAI text tower",
            "format": ".pt (state_dict + args)"}


def run_kelip(folder: Path) -> dict:
    import torch

    import test_family_kelip as kelip

    ref = kelip.write_kelip(folder / "kelip")
    m = kelip._load(folder / "kelip")
    images, texts = kelip._images(), ["A Dog", "불꽃놀이 야경", "a photo of the 석촌호수"]
    with torch.no_grad():
        want_img = ref.encode_image(torch.stack([kelip.kelip_preprocess(64)(im) for im in images]))
        want_txt = ref.encode_text(kelip.kelip_encode(folder / "kelip", texts))
    return {"image": max_diff(m.encode_image(images, normalize=False), want_img),
            "text": max_diff(m.encode_text(texts, normalize=False), want_txt),
            "reference": "openai clip.model.CLIP (KELIP's model.py is its copy)", "format": "HF folder (KelipModel)"}


def run_clip_fa(folder: Path) -> dict:
    import torch

    import test_family_clip_fa as clip_fa

    vision, text, tok, processor = clip_fa.write_clip_fa(folder)
    m = clip_fa._load(folder)
    images = clip_fa._images()
    with torch.no_grad():
        want_img = vision(**processor(images, return_tensors="pt")).pooler_output
        want_txt = torch.cat([text(**tok(t, return_tensors="pt")).pooler_output for t in clip_fa.CORPUS])
    return {"image": max_diff(m.encode_image(images, normalize=False), want_img),
            "text": max_diff(m.encode_text(clip_fa.CORPUS, normalize=False), want_txt),
            "reference": "transformers CLIPVisionModel / RobertaModel pooler_output", "format": "two HF folders"}


def run_cloob(folder: Path, exact: bool) -> dict:
    import test_family_cloob as cloob

    image, text = cloob.write_cloob(folder / "cloob.pkl")
    m = cloob._load(folder / "cloob.pkl", **({"gelu": "exact"} if exact else {}))
    images = cloob._images()
    want_img = cloob.ref_image(image, cloob._pixels(images), exact=exact)
    want_txt = cloob.ref_text(text, cloob.clip.tokenize(cloob.TEXTS), exact=exact)
    got_img, got_txt = m.encode_image(images, normalize=False), m.encode_text(cloob.TEXTS, normalize=False)
    record = {"image": max_diff(got_img, want_img), "text": max_diff(got_txt, want_txt),
              "reference": "functional Haiku model" + (" with the PyTorch port's exact GELU" if exact else ""),
              "format": "Haiku parameter pickle + JSON config"}
    if not exact:  # how far the PyTorch port's exact GELU is from the JAX GELU the model was trained with
        record["gap_to_port_gelu"] = {
            "image": max_diff(got_img, cloob.ref_image(image, cloob._pixels(images), exact=True)),
            "text": max_diff(got_txt, cloob.ref_text(text, cloob.clip.tokenize(cloob.TEXTS), exact=True))}
    return record


def run_family(name: str, folder: Path) -> dict:
    if name == "slip":
        return run_slip(folder)
    if name == "kelip":
        return run_kelip(folder)
    if name == "clip-fa":
        return run_clip_fa(folder)
    return run_cloob(folder, exact=name == "cloob-port")


def seed() -> None:
    import torch

    torch.manual_seed(0)


def main(argv: list[str] | None = None) -> dict:
    return family_parity_main("family_parity", __doc__.splitlines()[0], FAMILIES, run_family, argv, setup=seed)


if __name__ == "__main__":
    main()
