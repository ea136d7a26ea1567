"""MindSpore engine §2/§3 without MindSpore: the config table and the PyTorch <-> MindSpore-CLIP renaming.

The renaming is checked against MindSpore-CLIP's ``ckpt_transform.py`` rule, recreated here as it is written
there (mindspore-lab/mindcv ``examples/clip/ckpt_transform.py``, ``pytorch_params``), on the state dicts of
every family: OpenAI's (QuickGELU) and open_clip's (GELU), ResNet and ViT.
"""
from __future__ import annotations

import pytest
import torch

from clipzoo.errors import ClipzooError
from clipzoo.models.mindspore_config import (
    MODEL_CONFIGS,
    OPENAI_MODELS,
    check_config,
    config_from_shapes,
    get_config,
    list_configs,
    tower_sizes,
)
from clipzoo.models.mindspore_names import mindspore_to_torch, to_mindspore_name, to_torch_name, torch_to_mindspore
from clipzoo.testing.tiny import tiny_model

FAMILIES = ("tiny-RN", "tiny-RN-quickgelu", "tiny-ViT", "tiny-ViT-quickgelu")


def ckpt_transform_name(name: str) -> str:
    """MindSpore-CLIP's ``pytorch_params`` renaming, statement for statement."""
    if "ln_" in name:
        name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
    elif name == "token_embedding.weight":
        name = "token_embedding.embedding_table"
    elif ".bn" in name or ".downsample.1." in name:
        name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
        name = name.replace(".running_mean", ".moving_mean").replace(".running_var", ".moving_variance")
    return name


@pytest.fixture(scope="module", params=FAMILIES)
def state_dict(request):
    return request.param, tiny_model(0, get_config(request.param)).state_dict()


def test_names_equal_ckpt_transform(state_dict):
    name, sd = state_dict
    assert any(".bn" in k for k in sd) == name.startswith("tiny-RN")
    for key in sd:
        ours = to_mindspore_name(key)
        if key.endswith(("num_batches_tracked", "attn_mask")):  # no parameter in MindSpore-CLIP's cells
            assert ours is None
            continue
        assert ours == ckpt_transform_name(key), key
        assert to_torch_name(ours) == key


def test_renaming_round_trip_is_bit_identical(state_dict):
    _, sd = state_dict
    params = torch_to_mindspore(sd)
    assert "token_embedding.embedding_table" in params and "ln_final.gamma" in params
    back = mindspore_to_torch(params)
    assert set(back) == set(sd) - {"attn_mask"}
    for key, value in sd.items():
        if key in back and value.is_floating_point():
            assert torch.equal(back[key], value.float()), key
        elif key in back:  # num_batches_tracked comes back as 0
            assert back[key].dtype == torch.long and int(back[key]) == 0


def test_module_prefix_and_fp16_kept_on_request():
    sd = {"module." + k: v.half() for k, v in tiny_model(0, get_config("tiny-ViT-quickgelu")).state_dict().items()}
    assert torch_to_mindspore(sd)["visual.ln_pre.gamma"].dtype.name == "float32"
    assert torch_to_mindspore(sd, dtype=None)["visual.ln_pre.gamma"].dtype.name == "float16"


def test_config_table_covers_mindspore_clip_models():
    # open_clip's model_configs in MindSpore-CLIP's open_clip, and OpenAI's nine models
    for name in ("RN50", "RN50-quickgelu", "RN101", "RN101-quickgelu", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32",
                 "ViT-B-32-quickgelu", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-bigG-14"):
        assert name in MODEL_CONFIGS
    assert set(OPENAI_MODELS) <= set(list_configs())
    assert get_config("ViT-L/14@336px")["quick_gelu"] is True and "quick_gelu" not in get_config("ViT-L-14-336")
    big = tower_sizes(get_config("ViT-bigG-14"))
    assert (big["vision_heads"], big["mlp_ratio"], big["text_heads"], big["text_layers"]) == (16, 4.9231, 20, 32)
    assert tower_sizes(get_config("RN50x4"))["vision_heads"] == 40
    assert tower_sizes(get_config("RN50"))["image_size"] == 224


def test_configs_match_open_clip():
    import open_clip

    for name in MODEL_CONFIGS:
        if not name.startswith("tiny-"):
            assert get_config(name) == check_config(open_clip.get_model_config(name)), name


def test_config_from_shapes_reads_openai_layout(state_dict):
    name, sd = state_dict
    shapes = {k: tuple(v.shape) for k, v in torch_to_mindspore(sd).items()}
    assert config_from_shapes(shapes) == get_config(name, openai=True)


def test_unknown_and_unsupported_configs_are_one_line_errors():
    with pytest.raises(ClipzooError, match=r"^unknown MindSpore CLIP config 'ViT-Q-7'; use one of: RN50, "):
        get_config("ViT-Q-7")
    with pytest.raises(ClipzooError, match=r"not one the MindSpore engine implements .*unsupported: timm_model_name"):
        check_config({"embed_dim": 512, "vision_cfg": {"timm_model_name": "convnext_base"}, "text_cfg": {}})
    with pytest.raises(ClipzooError, match=r"^cannot read a CLIP config .* pass model=NAME"):
        config_from_shapes({"visual.proj": (8, 8)})
