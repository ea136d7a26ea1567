"""open_clip / OpenAI CLIP ⇄ HF CLIPModel (and open_clip SigLIP ⇄ SiglipModel): equal weights, equal outputs."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from clipzoo.convert.hf import (
    OPENAI_MEAN,
    OPENAI_STD,
    hf_clip_to_open_clip,
    infer_open_clip_config,
    open_clip_to_hf_clip,
    save_hf_clip,
)
from clipzoo.errors import UnsupportedError
from clipzoo.testing.tiny import TINY_COCA_CONFIG, TINY_CONFIG, tiny_model

TEXTS = ["a photo of a cat", "Un café, s'il vous plaît!", "naïve résumé — & <tags> (x) [y] 100%",
         "一只猫的照片 🐱", "don't STOP!!!   tabs\tand\nnewlines", "word " * 100]
TOL = 1e-5


def _pooled(out):
    return getattr(out, "pooler_output", out)


def _open_clip_tokens(texts=TEXTS, context_length=77):
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32", context_length=context_length)(texts)


def _max_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def _compare_open_clip_hf(oc, hf, tokens, size=32, n=4):
    """Max abs differences of image features, text features, logits_per_image (open_clip vs HF)."""
    torch.manual_seed(1)
    pixels = torch.randn(n, 3, size, size)
    with torch.no_grad():
        img_a, txt_a = oc.encode_image(pixels), oc.encode_text(tokens)
        out = hf(input_ids=tokens, pixel_values=pixels)
        img_b = _pooled(hf.get_image_features(pixel_values=pixels))
        txt_b = _pooled(hf.get_text_features(input_ids=tokens))
        na, nt = img_a / img_a.norm(dim=-1, keepdim=True), txt_a / txt_a.norm(dim=-1, keepdim=True)
        logits_a = oc.logit_scale.exp() * na @ nt.T
        if getattr(oc, "logit_bias", None) is not None:
            logits_a = logits_a + oc.logit_bias
    return {"image": _max_diff(img_a, img_b), "text": _max_diff(txt_a, txt_b),
            "logits": _max_diff(logits_a, out.logits_per_image)}


# ------------------------------------------------------------------------------------------ open_clip → HF
@pytest.fixture(scope="module", params=[True, False], ids=["quick_gelu", "gelu"])
def converted(request, tmp_path_factory):
    cfg = {**copy.deepcopy(TINY_CONFIG), "quick_gelu": request.param}
    model = tiny_model(3, cfg)
    config, hf_sd = open_clip_to_hf_clip(model.state_dict(), cfg)
    folder = save_hf_clip(tmp_path_factory.mktemp("hf"), config, hf_sd, 32, OPENAI_MEAN, OPENAI_STD, 77)
    return model, cfg, config, hf_sd, folder


def test_open_clip_to_hf_equal_outputs(converted):
    from transformers import CLIPModel

    model, cfg, config, _, folder = converted
    assert config.vision_config.hidden_act == ("quick_gelu" if cfg["quick_gelu"] else "gelu")
    assert config.text_config.hidden_act == config.vision_config.hidden_act
    assert config.vision_config.layer_norm_eps == config.text_config.layer_norm_eps == 1e-5
    hf = CLIPModel.from_pretrained(folder).eval()
    diffs = _compare_open_clip_hf(model, hf, _open_clip_tokens())
    print("open_clip -> HF", cfg["quick_gelu"] and "quick_gelu" or "gelu", diffs)
    assert max(diffs.values()) <= TOL, diffs
    assert torch.equal(hf.logit_scale.detach(), model.logit_scale.detach())


def test_open_clip_to_hf_weights_are_moved_not_recomputed(converted):
    model, _, _, hf_sd, _ = converted
    sd = model.state_dict()
    width = TINY_CONFIG["vision_cfg"]["width"]
    qkv = sd["visual.transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(hf_sd["vision_model.encoder.layers.1.self_attn.k_proj.weight"], qkv[width:2 * width])
    assert torch.equal(hf_sd["visual_projection.weight"], sd["visual.proj"].T)
    assert torch.equal(hf_sd["text_projection.weight"], sd["text_projection"].T)
    assert torch.equal(hf_sd["vision_model.pre_layrnorm.weight"], sd["visual.ln_pre.weight"])


def test_saved_tokenizer_matches_open_clip_ids(converted):
    from transformers import CLIPProcessor, CLIPTokenizer

    if not converted[1]["quick_gelu"]:
        pytest.skip("the same tokenizer files as the quick_gelu folder")
    folder = converted[-1]
    expected = _open_clip_tokens()
    for tokenizer in (CLIPTokenizer.from_pretrained(folder), CLIPProcessor.from_pretrained(folder).tokenizer):
        got = tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        eot = (expected == 49407).int().argmax(-1)
        for i in range(len(TEXTS)):  # equal up to and including <|endoftext|>; HF pads with it, open_clip with 0
            assert torch.equal(got[i, :eot[i] + 1], expected[i, :eot[i] + 1]), TEXTS[i]
            assert (got[i, eot[i]:] == 49407).all()


def test_saved_folder_processor_and_clipzoo_load(converted, images):
    from transformers import CLIPProcessor

    import clipzoo

    model, cfg, _, _, folder = converted
    if not cfg["quick_gelu"]:
        pytest.skip("the same folder layout as the quick_gelu one")
    processor = CLIPProcessor.from_pretrained(folder)
    ip = processor.image_processor
    assert ip.size == {"shortest_edge": 32} and ip.crop_size == {"height": 32, "width": 32} and ip.do_center_crop
    assert ip.resample == 3 and list(ip.image_mean) == list(OPENAI_MEAN) and list(ip.image_std) == list(OPENAI_STD)
    assert processor(images=images, return_tensors="pt")["pixel_values"].shape == (3, 3, 32, 32)
    cz = clipzoo.load(str(folder))
    with torch.no_grad():
        ours, ref = cz.encode_text(TEXTS[:4]), model.encode_text(_open_clip_tokens(TEXTS[:4]))
    ref = ref / ref.norm(dim=-1, keepdim=True)
    ours = ours / ours.norm(dim=-1, keepdim=True)
    assert _max_diff(ours, ref) <= TOL


def test_round_trip_is_bit_identical(converted):
    from transformers import CLIPModel

    model, _, _, _, folder = converted
    sd, cfg = hf_clip_to_open_clip(CLIPModel.from_pretrained(folder))
    original = model.state_dict()
    assert set(sd) == set(original)
    for key, value in original.items():
        assert sd[key].dtype == value.dtype and torch.equal(sd[key], value), key
    assert cfg["quick_gelu"] == converted[1]["quick_gelu"]
    assert cfg["vision_cfg"] == TINY_CONFIG["vision_cfg"] and cfg["text_cfg"] == TINY_CONFIG["text_cfg"]


# ------------------------------------------------------------------------------------------ OpenAI → HF
def test_openai_state_dict_config_inferred(tmp_path):
    import open_clip
    from transformers import CLIPModel

    from clipzoo.checkpoints import read_state_dict
    from clipzoo.testing.tiny import write_openai_state_dict

    sd, _ = read_state_dict(write_openai_state_dict(tmp_path / "openai.pt", seed=5))
    cfg = infer_open_clip_config(sd)
    assert cfg == {**TINY_CONFIG, "quick_gelu": True}
    config, hf_sd = open_clip_to_hf_clip(sd)  # no config: inferred as openai's build_model does
    assert all(hf_sd[k].dtype == torch.float16 for k in hf_sd)  # nothing cast: fp16 stays fp16
    folder = save_hf_clip(tmp_path / "hf", config, hf_sd)
    hf = CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
    oc = open_clip.CLIP(**cfg).eval()
    oc.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    diffs = _compare_open_clip_hf(oc, hf, _open_clip_tokens())
    print("OpenAI -> HF", diffs)
    assert max(diffs.values()) <= TOL, diffs


# ------------------------------------------------------------------------------------------ HF → open_clip
def test_hf_to_open_clip_equal_outputs(tmp_path):
    import open_clip
    from transformers import CLIPModel

    from clipzoo.testing.tiny_hf import write_clip

    hf = CLIPModel.from_pretrained(write_clip(tmp_path / "hf", seed=2)).eval()
    sd, cfg = hf_clip_to_open_clip(hf)
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "open_clip_model.safetensors"))
    oc = open_clip.create_model(f"local-dir:{folder}").eval()  # loads the weights with strict=True
    plain = open_clip.CLIP(**cfg).eval()
    plain.load_state_dict(sd, strict=True)
    tokens = _open_clip_tokens()
    for model in (oc, plain):
        diffs = _compare_open_clip_hf(model, hf, tokens, size=hf.config.vision_config.image_size)
        print("HF -> open_clip", diffs)
        assert max(diffs.values()) <= TOL, diffs
    # and back again: bit-identical HF tensors
    _, hf_sd = open_clip_to_hf_clip(sd, cfg)
    original = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    assert set(hf_sd) == set(original) and all(torch.equal(hf_sd[k], original[k]) for k in original)


# ------------------------------------------------------------------------------------------ refusals
RN_CONFIG = {"embed_dim": 32, "quick_gelu": True,
             "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
RESNET_MSG = ("HF's CLIPModel has only ViT image towers, so a ModifiedResNet (RN50, RN101, RN50x4, …) has no HF "
              "form; convert it to safetensors or onnx instead (clipzoo convert SRC DST --to safetensors)")


def test_modified_resnet_is_refused():
    import open_clip

    torch.manual_seed(0)
    sd = open_clip.CLIP(**RN_CONFIG).state_dict()
    assert "visual.layer1.0.conv1.weight" in sd
    with pytest.raises(UnsupportedError) as err:
        open_clip_to_hf_clip(sd, RN_CONFIG, source="rn.pt")
    assert str(err.value) == f"rn.pt has a ModifiedResNet image tower (visual.layer1…); {RESNET_MSG}"
    with pytest.raises(UnsupportedError, match="ModifiedResNet"):
        open_clip_to_hf_clip(sd)  # config inferred: refused the same way
    with pytest.raises(UnsupportedError) as err:  # the config alone says so too
        open_clip_to_hf_clip({}, RN_CONFIG, source="rn.pt")
    assert str(err.value) == f"rn.pt: vision_cfg.layers = [1, 1, 1, 1] is a ModifiedResNet; {RESNET_MSG}"


def test_coca_is_refused():
    sd = tiny_model(0, TINY_COCA_CONFIG).state_dict()
    with pytest.raises(UnsupportedError) as err:
        open_clip_to_hf_clip(sd, TINY_COCA_CONFIG, source="coca.safetensors")
    assert str(err.value) == ("coca.safetensors is a CoCa model (multimodal_cfg: a captioning decoder); HF's "
                              "CLIPModel has no decoder. Convert it to open_clip, safetensors or onnx instead")


@pytest.mark.parametrize("tower,key,value", [
    ("vision_cfg", "attentional_pool", True), ("vision_cfg", "no_ln_pre", True),
    ("vision_cfg", "final_ln_after_pool", True), ("vision_cfg", "pool_type", "avg"),
    ("vision_cfg", "ls_init_value", 0.1), ("text_cfg", "no_causal_mask", True), ("text_cfg", "proj_bias", True),
    ("text_cfg", "embed_cls", True)])
def test_options_hf_clip_cannot_express_are_refused(tower, key, value):
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg[tower][key] = value
    sd = tiny_model(0).state_dict()
    with pytest.raises(UnsupportedError) as err:
        open_clip_to_hf_clip(sd, cfg, source="m")
    assert str(err.value).startswith(f"m: {tower}.{key} = {value!r} has no equivalent in HF's CLIPModel")


def test_hf_text_tower_is_refused():
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["text_cfg"] = {"hf_model_name": "roberta-base", "hf_tokenizer_name": "roberta-base"}
    cfg["custom_text"] = True
    with pytest.raises(UnsupportedError) as err:
        open_clip_to_hf_clip({}, cfg, source="m")
    assert str(err.value).startswith("m: text_cfg.hf_model_name = 'roberta-base' is a Hugging Face text tower")


# ------------------------------------------------------------------------------------------ SigLIP
def _register_tiny_timm_siglips() -> None:
    """Tiny timm SigLIP ViTs (ViT-B-16-SigLIP's architecture, small): exact GELU as timm's real ones, and
    gelu_tanh as HF's SiglipModel defaults to."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, class_token=False,
                global_pool="map")
    for name, act in (("vit_cztest_patch8_siglip_32", None), ("vit_cztest_tanh_patch8_siglip_32", "gelu_tanh")):
        if name in timm.list_models(name):
            continue

        def make(pretrained=False, _act=act, **kwargs):
            extra = {"act_layer": _act} if _act else {}
            return _create_vision_transformer("vit_base_patch16_siglip_224", pretrained=False,
                                              **dict(args, **extra, **kwargs))
        make.__name__ = name
        register_model(make)


def _tiny_siglip_cfg(timm_name: str, vocab_size: int, text_tanh: bool) -> dict:
    import open_clip

    cfg = copy.deepcopy(open_clip.get_model_config("ViT-B-16-SigLIP"))
    cfg["embed_dim"] = 32
    cfg["vision_cfg"].update(image_size=32, timm_model_name=timm_name)
    cfg["text_cfg"].update(context_length=16, vocab_size=vocab_size, width=32, heads=2, layers=2, mlp_ratio=2.0)
    if text_tanh:
        cfg["text_cfg"]["act_kwargs"] = {"approximate": "tanh"}
    return cfg


def _tiny_siglip(cfg: dict, seed: int = 0):
    import open_clip

    _register_tiny_timm_siglips()
    kwargs = {k: v for k, v in cfg.items() if k != "custom_text"}
    torch.manual_seed(seed)
    model = open_clip.CustomTextCLIP(**kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in ("logit_scale", "logit_bias"):
                p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.fixture(scope="module")
def siglip_tokenizer_folder(tmp_path_factory):
    from clipzoo.testing.tiny_hf import write_siglip

    return write_siglip(tmp_path_factory.mktemp("siglip"), seed=4)


@pytest.mark.parametrize("timm_name,text_tanh", [("vit_cztest_patch8_siglip_32", False),
                                                 ("vit_cztest_tanh_patch8_siglip_32", True)])
def test_open_clip_siglip_to_hf_and_back(siglip_tokenizer_folder, tmp_path, timm_name, text_tanh):
    from transformers import SiglipModel, SiglipTokenizer

    from clipzoo.convert.hf import hf_siglip_to_open_clip, open_clip_to_hf_siglip, save_hf_siglip

    _register_tiny_timm_siglips()
    tokenizer = SiglipTokenizer.from_pretrained(siglip_tokenizer_folder)
    cfg = _tiny_siglip_cfg(timm_name, tokenizer.vocab_size, text_tanh)
    model = _tiny_siglip(cfg)
    config, hf_sd = open_clip_to_hf_siglip(model.state_dict(), cfg)
    assert config.vision_config.hidden_act == ("gelu_pytorch_tanh" if text_tanh else "gelu")
    folder = save_hf_siglip(tmp_path / "hf", config, hf_sd, tokenizer)
    hf = SiglipModel.from_pretrained(folder).eval()
    tokens = tokenizer(["a photo of a cat", "a blue circle", "图表", "two birds"], padding="max_length",
                       max_length=16, truncation=True, return_tensors="pt").input_ids
    diffs = _compare_open_clip_hf(model, hf, tokens)
    print("open_clip SigLIP -> HF", timm_name, diffs)
    assert max(diffs.values()) <= TOL, diffs
    sd, cfg2 = hf_siglip_to_open_clip(hf, timm_model_name=timm_name)
    original = model.state_dict()
    assert set(sd) == set(original)
    for key, value in original.items():
        assert torch.equal(sd[key], value) and sd[key].shape == value.shape, key


def test_hf_siglip_to_open_clip_equal_outputs(siglip_tokenizer_folder):
    import open_clip
    from transformers import SiglipModel, SiglipTokenizer

    from clipzoo.convert.hf import hf_siglip_to_open_clip, open_clip_to_hf_siglip

    _register_tiny_timm_siglips()
    hf = SiglipModel.from_pretrained(siglip_tokenizer_folder).eval()
    sd, cfg = hf_siglip_to_open_clip(hf)  # the timm tower found by architecture
    assert cfg["vision_cfg"]["timm_model_name"] == "vit_cztest_tanh_patch8_siglip_32"
    model = open_clip.CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"}).eval()
    model.load_state_dict(sd, strict=True)
    tokenizer = SiglipTokenizer.from_pretrained(siglip_tokenizer_folder)
    tokens = tokenizer(["a photo of a dog", "a red square"], padding="max_length", max_length=16,
                       return_tensors="pt").input_ids
    diffs = _compare_open_clip_hf(model, hf, tokens)
    print("HF SigLIP -> open_clip", diffs)
    assert max(diffs.values()) <= TOL, diffs
    _, hf_sd = open_clip_to_hf_siglip(sd, cfg)
    original = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    assert set(hf_sd) == set(original) and all(torch.equal(hf_sd[k], original[k]) for k in original)


def test_siglip_refusals(siglip_tokenizer_folder):
    from clipzoo.convert.hf import open_clip_to_hf_siglip

    _register_tiny_timm_siglips()
    cfg = _tiny_siglip_cfg("vit_cztest_patch8_siglip_32", 200, False)
    sd = _tiny_siglip(cfg).state_dict()
    bad = copy.deepcopy(cfg)
    bad["text_cfg"]["no_causal_mask"] = False
    with pytest.raises(UnsupportedError) as err:
        open_clip_to_hf_siglip(sd, bad, source="s")
    assert str(err.value) == ("s: text_cfg.no_causal_mask = False; HF's SiglipModel's text tower has "
                              "no_causal_mask = True")
    bad = copy.deepcopy(cfg)
    bad["vision_cfg"]["timm_proj"] = "linear"
    with pytest.raises(UnsupportedError) as err:
        open_clip_to_hf_siglip(sd, bad, source="s")
    assert str(err.value) == ("s: vision_cfg.timm_pool = 'map', timm_proj = 'linear': HF's SiglipModel needs the MAP "
                              "head ('map') and no projection ('none')")



@pytest.mark.parametrize("edit, expected", [
    ({"do_normalize": False}, {"mean": [0.0] * 3, "std": [1.0] * 3, "resize_mode": "shortest"}),
    ({"image_mean": 0.5, "image_std": 0.25}, {"mean": [0.5] * 3, "std": [0.25] * 3, "resize_mode": "shortest"}),
    ({"size": {"height": 32, "width": 32}, "do_center_crop": False, "resample": 2},
     {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "resize_mode": "squash", "interpolation": "bilinear"}),
], ids=["no_normalize", "one_number_mean", "squash_bilinear"])
def test_hf_to_open_clip_keeps_what_the_processor_does(tmp_path, edit, expected):
    """The open_clip form's preprocessing is what the HF processor hands the model, read as the [0, 1] path reads
    it (``pixels.processor_preprocess``): without normalisation the processor's mean and std were written anyway,
    and a one-number mean (which transformers takes for all channels) was a TypeError."""
    from clipzoo.convert import convert

    cfg = {**copy.deepcopy(TINY_CONFIG), "quick_gelu": True}
    config, hf_sd = open_clip_to_hf_clip(tiny_model(3, cfg).state_dict(), cfg)
    folder = save_hf_clip(tmp_path / "hf", config, hf_sd, 32, OPENAI_MEAN, OPENAI_STD, 77)
    pre_file = folder / "preprocessor_config.json"
    pre_file.write_text(json.dumps({**json.loads(pre_file.read_text()), **edit}))
    out = convert(folder, tmp_path / "oc", "open_clip")
    pre = json.loads((out / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert pre == {"size": [32, 32], "interpolation": "bicubic", **expected}
