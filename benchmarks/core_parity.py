"""Measured parity of clipzoo's core families against the libraries they come from (docs/models.md).

For each family, a tiny random checkpoint in the publisher's own format (written by ``clipzoo.testing``), loaded
by clipzoo and by the reference implementation on the same files; the largest absolute difference, fp32 on CPU,
of the unnormalised image and text features (and preprocessed pixels where the reference has its own transform):

- ``openai-jit`` / ``openai-state-dict``: OpenAI's TorchScript archive and plain state dict vs openai's ``clip``
  package (``clip.load(..., jit=False)``);
- ``open_clip-hub-folder`` / ``open_clip-pt`` / ``open_clip-safetensors``: open_clip's formats vs
  ``open_clip.create_model_and_transforms`` on the same file;
- ``coca``: a tiny CoCa hub folder vs open_clip's ``CoCa`` (features; captions: tests/test_caption_coca.py);
- ``transformers-*``: CLIP, SigLIP, SigLIP 2 (fixed and NaFlex), Chinese-CLIP, AltCLIP ``save_pretrained``
  folders vs transformers' ``get_image_features`` / ``get_text_features`` (tests/test_backend_transformers.py's
  references);
- ``sentence-transformers``: a CLIP sentence-transformers folder vs ``SentenceTransformer.encode``;
- ``clap``: LAION's CLAP as a ``save_pretrained`` folder vs transformers' ``ClapModel`` ``get_audio_features`` /
  ``get_text_features`` (the references of tests/test_backend_clap.py; audio instead of image);
- ``long-clip``: a 248-position Long-CLIP ``.pt`` vs a functional re-derivation of Long-CLIP's ``encode_text``
  (tests/test_long_text.py; its image tower is OpenAI's).

    python benchmarks/core_parity.py --out benchmarks/results/core_parity.json

Writes a JSON file and prints it. No download.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import clipzoo  # noqa: E402
from clipzoo.testing import tiny, tiny_hf  # noqa: E402
from tables import family_parity_main  # noqa: E402

TEXTS = ["a photo of a cat", "A Red Square, on white!", "two birds flying over the sea", "x"]
HF = {"clip": tiny_hf.write_clip, "siglip": tiny_hf.write_siglip, "siglip2": tiny_hf.write_siglip2,
      "siglip2_naflex": tiny_hf.write_siglip2_naflex, "chinese_clip": tiny_hf.write_chinese_clip,
      "altclip": tiny_hf.write_altclip}
FAMILIES = ("openai-jit", "openai-state-dict", "open_clip-hub-folder", "open_clip-pt", "open_clip-safetensors", "coca",
            *(f"transformers-{n}" for n in HF), "sentence-transformers", "clap", "long-clip")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def images(square_only: bool = False):
    from PIL import Image

    rs = np.random.RandomState(0)
    shapes = [(48, 48), (300, 300)] if square_only else [(48, 48), (40, 64), (90, 50), (33, 71)]
    return [Image.fromarray(rs.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def against_model(m, model, preprocess, tokens, **raw) -> dict:
    """Our features vs a reference module's ``encode_image`` / ``encode_text`` on its own preprocessing
    (``raw``: ``normalize=False`` for open_clip, whose CoCa normalises by default)."""
    imgs = images()
    ref_pixels = torch.stack([preprocess(im) for im in imgs])
    with torch.no_grad():
        ref_img, ref_txt = model.encode_image(ref_pixels, **raw), model.encode_text(tokens, **raw)
    ours = torch.stack([m.preprocess(im) for im in imgs])
    return {"image": max_diff(m.encode_image(imgs, normalize=False), ref_img),
            "text": max_diff(m.encode_text(TEXTS, normalize=False), ref_txt), "pixels": max_diff(ours, ref_pixels)}


def run_openai(name: str, tmp: Path) -> dict:
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip as openai_clip

        if name == "openai-jit":
            path, fmt = tiny.write_openai_jit(tmp / "tiny.pt"), "OpenAI TorchScript archive"
        else:
            path, fmt = tiny.write_openai_state_dict(tmp / "tiny.pt"), "OpenAI state dict (.pt)"
        model, preprocess = openai_clip.load(str(path), device="cpu", jit=False)
        m = clipzoo.load(str(path))
    return {"reference": "openai clip.load(jit=False)", "format": fmt,
            **against_model(m, model.float(), preprocess, openai_clip.tokenize(TEXTS))}


def run_open_clip(name: str, tmp: Path) -> dict:
    import open_clip

    if name == "coca":
        folder = tiny.write_open_clip_hub_folder(tmp / "coca", config=tiny.TINY_COCA_CONFIG)
        spec, ref_name, fmt = str(folder), f"local-dir:{folder}", "open_clip hub folder (CoCa)"
    elif name == "open_clip-hub-folder":
        folder = tiny.write_open_clip_hub_folder(tmp / "hub")
        spec, ref_name, fmt = str(folder), f"local-dir:{folder}", "open_clip hub folder (config + safetensors)"
    else:
        open_clip.add_model_config(_tiny_config(tmp))
        path = (tiny.write_open_clip_pt(tmp / "tiny.pt") if name == "open_clip-pt"
                else tiny.write_open_clip_safetensors(tmp / "tiny.safetensors"))
        spec, ref_name, fmt = str(path), "tiny-parity", "open_clip .pt (trainer dict)" if name == "open_clip-pt" \
            else "open_clip .safetensors"
    kwargs = {} if ref_name.startswith("local-dir:") else {"pretrained": spec}
    model, _, preprocess = open_clip.create_model_and_transforms(ref_name, **kwargs)
    m = clipzoo.load(spec, **({} if ref_name.startswith("local-dir:") else {"model_name": "tiny-parity"}))
    tokenizer = open_clip.get_tokenizer(ref_name)
    return {"reference": f"open_clip {open_clip.__version__} create_model_and_transforms", "format": fmt,
            **against_model(m, model.eval(), preprocess, tokenizer(TEXTS), normalize=False)}


def _tiny_config(tmp: Path) -> Path:
    folder = tmp / "configs"
    folder.mkdir(exist_ok=True)
    (folder / "tiny-parity.json").write_text(json.dumps(tiny.TINY_CONFIG))
    return folder


def run_transformers(name: str, tmp: Path) -> dict:
    import test_backend_transformers as ref

    family = name.removeprefix("transformers-")
    folder = HF[family](tmp / family)
    m = clipzoo.load(folder)
    imgs = ref.sample_images(square_only=family == "siglip2_naflex")
    pixels, ref_img, ref_txt, _ = ref.reference(folder, family, imgs, ref.TEXTS, m.context_length)
    out = {"reference": "transformers get_image_features / get_text_features", "format": "save_pretrained folder",
           "image": max_diff(m.encode_image(imgs, normalize=False), ref_img),
           "text": max_diff(m.encode_text(ref.TEXTS, normalize=False), ref_txt)}
    if family != "siglip2_naflex":  # NaFlex pixels are patches, compared in tests/test_backend_transformers.py
        out["pixels"] = max_diff(torch.stack([m.preprocess(i) for i in imgs]), pixels["pixel_values"])
    return out


def run_sentence_transformers(tmp: Path) -> dict:
    from sentence_transformers import SentenceTransformer

    folder = tiny_hf.write_st_clip(tmp / "st", legacy=False)
    m, ref = clipzoo.load(folder), SentenceTransformer(str(folder), device="cpu")
    imgs = images()
    return {"reference": "SentenceTransformer.encode", "format": "sentence-transformers folder (CLIPModel module)",
            "image": max_diff(m.encode_image(imgs, normalize=False), ref.encode(imgs, convert_to_tensor=True)),
            "text": max_diff(m.encode_text(TEXTS, normalize=False), ref.encode(TEXTS, convert_to_tensor=True))}


def run_long_clip(tmp: Path) -> dict:
    import test_long_text as ref

    sd = ref.long_clip_state_dict()
    path = tmp / "longclip-tiny.pt"
    torch.save(sd, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = clipzoo.load(str(path))
    texts = [ref.LONG, *TEXTS]
    want = ref.reference_text_features(sd, ref.TOK.tokenize(texts, context_length=248))
    return {"reference": "functional re-derivation of Long-CLIP's encode_text (248 positions)",
            "format": "OpenAI-layout torch.save(state_dict) with positional_embedding_res",
            "text": max_diff(m.encode_text(texts, normalize=False), want), "context_length": m.context_length}


def run_clap(tmp: Path) -> dict:
    from transformers import ClapModel, ClapProcessor

    import test_backend_clap as ref

    folder = ref.tiny_clap(tmp / "clap")
    m = clipzoo.load(str(folder))
    model, processor = ClapModel.from_pretrained(str(folder)).eval(), ClapProcessor.from_pretrained(str(folder))
    clips = ref.waves()
    return {"reference": "transformers ClapModel get_audio_features / get_text_features",
            "format": "save_pretrained folder (ClapModel + ClapProcessor)",
            "audio": max_diff(m.encode_audio(clips), ref.hf_audio(model, processor, clips)),
            "text": max_diff(m.encode_text(ref.TEXTS), ref.hf_text(model, processor, ref.TEXTS))}


def run_family(name: str, tmp: Path) -> dict:
    if name.startswith("openai"):
        return run_openai(name, tmp)
    if name.startswith("open_clip") or name == "coca":
        return run_open_clip(name, tmp)
    if name.startswith("transformers-"):
        return run_transformers(name, tmp)
    if name == "clap":
        return run_clap(tmp)
    return run_sentence_transformers(tmp) if name == "sentence-transformers" else run_long_clip(tmp)


def main(argv: list[str] | None = None) -> dict:
    torch.manual_seed(0)
    return family_parity_main("core_parity", __doc__.splitlines()[0], FAMILIES, run_family, argv)


if __name__ == "__main__":
    main()
