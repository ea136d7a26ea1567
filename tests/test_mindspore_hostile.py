"""The MindSpore engine on hostile and unusual input: crafted ``.ckpt`` files (one line naming the file and the entry,
never MindSpore's C++ reader on an unchecked file), weights of the wrong dtype, the stored model config (a GELU
model stays GELU through a ``.ckpt``), token ids past the vocabulary, data that gives no batch, and the open_clip
drop-in's signature and attributes as MindSpore-CLIP's (mindspore-lab/mindcv ``examples/open_clip``) has them."""
from __future__ import annotations

import inspect
import re
import signal
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from typer.main import get_command

ms = pytest.importorskip("mindspore")

from mindspore.train.checkpoint_pb2 import Checkpoint  # noqa: E402

import clipzoo  # noqa: E402
from clipzoo.cli import app  # noqa: E402
from clipzoo.convert.form import OpenClipForm  # noqa: E402
from clipzoo.convert.mindspore import form_of_ckpt, write_mindspore  # noqa: E402
from clipzoo.convert.targets import SOURCE_FORMATS, TARGETS  # noqa: E402
from clipzoo.errors import BadTextError, CheckpointError, DatasetError, UnsupportedError  # noqa: E402
from clipzoo.models.mindspore_config import CONFIG_ENTRY, get_config  # noqa: E402
from clipzoo.models.mindspore_names import read_ckpt, read_ckpt_entries, torch_to_mindspore, write_ckpt  # noqa: E402
from clipzoo.train.config import ConfigError  # noqa: E402
from test_mindspore_parity import open_clip_file  # noqa: E402

DAMAGED = "the file is damaged or was not written by MindSpore; write it again"


@pytest.fixture(scope="module")
def gelu(tmp_path_factory):
    """(folder, torch model path, state dict, .ckpt written by clipzoo) of a tiny open_clip ViT with GELU."""
    tmp = tmp_path_factory.mktemp("mshostile")
    path, sd = open_clip_file(tmp, "tiny-ViT", seed=5)
    ckpt = write_mindspore(OpenClipForm(sd, get_config("tiny-ViT"), {}, "tiny"), tmp / "tiny.ckpt")
    return tmp, path, sd, ckpt


def entry(ckpt, tag: str, dims, kind: str = "Float32", content: bytes = b"") -> None:
    value = ckpt.value.add()
    value.tag, value.tensor.tensor_type, value.tensor.tensor_content = tag, kind, content
    value.tensor.dims.extend(dims)


def crafted(tmp_path, build) -> str:
    ckpt = Checkpoint()
    build(ckpt)
    path = tmp_path / "crafted.ckpt"
    path.write_bytes(ckpt.SerializeToString())
    return str(path)


FOUR = np.arange(4, dtype=np.float32).tobytes()
CRAFTED = {  # each crashed the process (free(): corrupted unsorted chunks) or read memory it should not have
    "same tag, adjacent, more bytes than dims": (
        lambda c: [entry(c, "w", [4], content=FOUR * 50) for _ in range(2)],
        "entry 'w' (Float32, dims [4]) needs 16 bytes and holds 1600; " + DAMAGED),
    "same tag twice, apart": (
        lambda c: [entry(c, "w", [4], content=FOUR), entry(c, "b", [4], content=FOUR),
                   entry(c, "w", [4], content=FOUR)],
        "entry 'w' appears twice, apart; " + DAMAGED),
    "negative dims": (lambda c: entry(c, "w", [-1, 4], content=FOUR),
                      "entry 'w' has a negative dimension [-1, 4]; " + DAMAGED),
    "fewer bytes than dims (read as zeros)": (lambda c: entry(c, "w", [4096], content=FOUR),
                                              "entry 'w' (Float32, dims [4096]) needs 16384 bytes and holds 16; "
                                              + DAMAGED),
    "huge dims": (lambda c: entry(c, "w", [1 << 20, 1 << 20], content=FOUR),
                  "entry 'w' (Float32, dims [1048576, 1048576]) needs 4398046511104 bytes and holds 16; " + DAMAGED),
    "unknown dtype": (lambda c: entry(c, "w", [4], "Float128", FOUR),
                      "entry 'w' has dtype 'Float128', which is not a MindSpore tensor dtype clipzoo reads"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_ckpt_is_one_line_error_naming_file_and_entry(case, tmp_path):
    build, message = CRAFTED[case]
    path = crafted(tmp_path, build)
    with pytest.raises(CheckpointError) as err:
        read_ckpt(path)
    assert str(err.value).startswith(f"{path}: {message}")
    assert "\n" not in str(err.value)


def test_crafted_model_ckpt_fails_in_every_reader(gelu, tmp_path):
    """A real model's .ckpt whose logit_scale is repeated at the end: clipzoo.load, clip.load, open_clip's
    create_model(pretrained=) and convert --from mindspore each give the one line, and the process lives on."""
    from clipzoo.compat.mindspore import clip, open_clip
    from clipzoo.convert.targets import load_source

    ckpt = Checkpoint()
    ckpt.ParseFromString(gelu[3].read_bytes())
    ckpt.value.add().CopyFrom([v for v in ckpt.value if v.tag == "logit_scale"][0])
    path = tmp_path / "dup.ckpt"
    path.write_bytes(ckpt.SerializeToString())
    line = f"{path}: entry 'logit_scale' appears twice, apart; {DAMAGED}"
    for call in (lambda: clipzoo.load(str(path)), lambda: clip.load(str(path)),
                 lambda: open_clip.create_model("tiny-ViT", pretrained=str(path)),
                 lambda: load_source(str(path), "mindspore")):
        with pytest.raises(CheckpointError, match="^" + re.escape(line) + "$"):
            call()


def test_slices_of_one_tensor_are_joined_and_dtypes_read(tmp_path):
    """MindSpore writes a tensor over 512 MiB as consecutive entries of one tag: they are joined; Float16 and
    BFloat16 are read (bfloat16 exactly, as float32); a scalar's dims [0] is a scalar; strings are strings."""
    values = np.array([1.5, -2.25, 3.0, 0.125], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    path = crafted(tmp_path, lambda c: [entry(c, "w", [4], content=values[:2].tobytes()),
                                        entry(c, "w", [4], content=values[2:].tobytes()),
                                        entry(c, "h", [2, 2], "Float16", values.astype(np.float16).tobytes()),
                                        entry(c, "b", [4], "BFloat16", bf16),
                                        entry(c, "s", [0], content=np.float32(7).tobytes()),
                                        entry(c, "t", [0], "str", np.array("a config").tobytes())])
    params = read_ckpt(path)
    np.testing.assert_array_equal(params["w"], values)
    assert params["h"].dtype == np.float16 and params["h"].shape == (2, 2)
    assert params["b"].dtype == np.float32 and params["b"].tolist() == values.tolist()
    assert params["s"].shape == () and float(params["s"]) == 7.0
    assert "t" not in params and read_ckpt_entries(path)["t"] == "a config"


def test_crc_trailer_is_checked(tmp_path):
    """save_checkpoint(crc_check=True)'s file reads; with a byte changed it is refused (MindSpore's reader skips the
    check by default and read the damaged values)."""
    path = tmp_path / "crc.ckpt"
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(np.arange(6, dtype=np.float32))}], str(path), crc_check=True)
    np.testing.assert_array_equal(read_ckpt(path)["w"], np.arange(6, dtype=np.float32))
    damaged = bytearray(path.read_bytes())
    damaged[-30] ^= 1  # inside the tensor's bytes
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))} fails its CRC check: the file is damaged"):
        read_ckpt(path)


@pytest.mark.parametrize("kind,data,shown", [("Int32", np.arange(8192, dtype=np.int32), "int32 values"),
                                             ("Bool", np.ones(8192, dtype=bool), "bool values"),
                                             ("str", np.array("abcd"), "a string ('abcd')")])
def test_weights_that_are_not_floats_are_refused(gelu, tmp_path, kind, data, shown):
    """MindSpore's load_param_into_net refuses an int / bool tensor for a float Parameter; they were cast silently
    (and a string logit_scale was a ValueError traceback)."""
    ckpt = Checkpoint()
    ckpt.ParseFromString(gelu[3].read_bytes())
    name = "visual.proj" if kind != "str" else "logit_scale"
    value = [v for v in ckpt.value if v.tag == name][0]
    value.tensor.tensor_type, value.tensor.tensor_content = kind, data.tobytes()
    if kind == "str":
        value.tensor.dims[:] = [0]
    path = tmp_path / "odd.ckpt"
    path.write_bytes(ckpt.SerializeToString())
    with pytest.raises(CheckpointError, match="^" + re.escape(f"parameter {name} holds {shown}, not floats")):
        clipzoo.load(str(path))


def test_upper_case_suffix_loads(gelu, tmp_path):
    from clipzoo.convert.targets import load_source

    path = tmp_path / "TINY.CKPT"
    path.write_bytes(gelu[3].read_bytes())
    assert clipzoo.load(str(path)).card.backend == "mindspore"
    assert load_source(str(path), "mindspore").card.backend == "mindspore"
    from clipzoo.convert.targets import _check_destination

    _check_destination("mindspore", tmp_path / "OUT.CKPT", overwrite=False)  # written as it is read: no refusal


def test_gelu_model_stays_gelu_through_ckpt(gelu):
    """The .ckpt stores the model config: read back without model=, a GELU model is GELU (it became QuickGELU,
    features 1e-3 off), with no warning; MindSpore's own reader and load_param_into_net (MindSpore-CLIP's loaders)
    skip the stored config."""
    from clipzoo.compat.mindspore.common import OpenClipModel

    tmp, path, sd, ckpt = gelu
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = clipzoo.load(str(ckpt))
        form = form_of_ckpt(ckpt)
    assert not ours.model_config.get("quick_gelu") and not form.model_cfg.get("quick_gelu")
    ref = clipzoo.load(str(path))
    image = [Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8))]
    with torch.no_grad():
        assert float((ours.encode_image(image) - ref.encode_image(image)).abs().max()) < 1e-5
        assert float((ours.encode_text(["a cat"]) - ref.encode_text(["a cat"])).abs().max()) < 1e-5
    param_dict = ms.load_checkpoint(str(ckpt))
    assert isinstance(param_dict[CONFIG_ENTRY], str)
    not_loaded, unused = ms.load_param_into_net(OpenClipModel(get_config("tiny-ViT")), param_dict)
    assert not_loaded == [] and unused == [CONFIG_ENTRY]


def test_ckpt_without_config_warns_once_what_was_guessed(gelu, tmp_path):
    path = tmp_path / "bare.ckpt"
    write_ckpt(path, torch_to_mindspore(gelu[2]))
    with pytest.warns(UserWarning) as caught:
        model = clipzoo.load(str(path))
    assert model.model_config["quick_gelu"] is True
    assert len(caught) == 1
    assert str(caught[0].message) == (
        f"{path} stores no model config: read one from its shapes as MindSpore-CLIP's build_model does (ViT (patch "
        "8), image size 32, width 128, 64-wide heads, QuickGELU); if the model differs (a GELU open_clip model, "
        "other heads), name its config with model= (--model)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not clipzoo.load(str(path), model="tiny-ViT").model_config.get("quick_gelu")


def test_token_id_past_vocabulary_is_the_torch_engines_error(gelu):
    ours, ref = clipzoo.load(str(gelu[3])), clipzoo.load(str(gelu[1]))
    tokens = torch.tensor([[49406, 70000, 49407]])
    errors = []
    for model in (ref, ours):
        with pytest.raises(BadTextError) as err:
            model.encode_text(tokens)
        errors.append(str(err.value).replace(model.card.alias, "MODEL"))
    assert errors[0] == errors[1] == ("a token id (70000) is past MODEL's vocabulary; make the tokens with "
                                      "model.tokenize")


class Hung(BaseException):
    """Not an Exception: the readers' per-sample ``except Exception`` would take it for a bad image."""


@pytest.fixture
def alarm():
    """Fail instead of hanging: the MindSpore loop ran for ever on data that gives no batch."""
    def hung(*_):
        raise Hung("the run did not end")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(240)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("data,batch_size", [("csv", 2), ("shapes:3", 8)])
def test_data_without_a_batch_is_the_torch_trainers_error(tmp_path, alarm, data, batch_size):
    """Images all missing or unreadable (a CSV), or fewer samples than one batch: the torch trainer's error, word
    for word (the MindSpore loop looped for ever)."""
    from clipzoo.train.config import TrainConfig
    from clipzoo.train.engine import train
    from clipzoo.train.mindspore import train_mindspore

    if data == "csv":
        (tmp_path / "bad.png").write_bytes(b"not an image")
        (tmp_path / "bad.csv").write_text("filepath,title\nmissing1.png,a cat\nmissing2.png,a dog\nbad.png,a bird\n")
        data = str(tmp_path / "bad.csv")
    cfg = TrainConfig(model_config=get_config("tiny-ViT"), data=[data], steps=3, batch_size=batch_size, workers=0,
                      device="cpu", progress=False, tensorboard=False, log_every=1)
    errors = []
    for engine, run in (("torch", train), ("mindspore", train_mindspore)):
        with pytest.raises((DatasetError, ConfigError)) as err, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unreadable images' warnings
            run(cfg.replace(output=str(tmp_path / engine)))
        errors.append((type(err.value), str(err.value)))
    assert errors[0] == errors[1]


def test_trained_ckpt_stores_its_config(tmp_path):
    """train --engine mindspore's model.ckpt loads without model= as the GELU model it trained."""
    from clipzoo.train.config import TrainConfig
    from clipzoo.train.mindspore import train_mindspore
    from clipzoo.train.mindspore.loop import CKPT_NAME

    cfg = TrainConfig(model_config=get_config("tiny-ViT"), data=["shapes:8"], steps=1, batch_size=8, workers=0,
                      device="cpu", progress=False, tensorboard=False, output=str(tmp_path / "run"))
    result = train_mindspore(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = clipzoo.load(str(result.model_dir / CKPT_NAME))
    assert model.model_config == get_config("tiny-ViT")


REFERENCE_ORDER = ["model_name", "pretrained", "force_quick_gelu", "force_custom_text", "force_patch_dropout",
                   "force_image_size", "cache_dir", "require_pretrained"]
REFERENCE_ORDER_TRANSFORMS = ["model_name", "pretrained", "force_quick_gelu", "force_custom_text",
                              "force_patch_dropout", "force_image_size", "image_mean", "image_std", "aug_cfg",
                              "cache_dir"]


def test_open_clip_positional_order_is_mindspore_clips():
    """MindSpore-CLIP's factory.py: create_model(model_name, pretrained, force_quick_gelu, ...) —
    create_model("tiny-ViT", None, True) forces QuickGELU (it was a 'precision True' error)."""
    from clipzoo.compat.mindspore import open_clip

    for fn, order in ((open_clip.create_model, REFERENCE_ORDER),
                      (open_clip.create_model_and_transforms, REFERENCE_ORDER_TRANSFORMS)):
        params = inspect.signature(fn).parameters.values()
        assert [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD] == order
        assert {"precision", "device", "jit", "pretrained_image"} <= \
            {p.name for p in params if p.kind == p.KEYWORD_ONLY}
    assert open_clip.create_model("tiny-ViT", None, True).config["quick_gelu"] is True


def test_open_clip_options_as_the_reference_takes_them(gelu, tmp_path):
    """force_image_size as a (square) tuple; add_model_config of a missing path adds nothing, as in the original;
    a non-square position embedding cannot be resized: one line; logit_bias and visual.grid_size exist."""
    from clipzoo.compat.mindspore import open_clip

    model = open_clip.create_model("tiny-ViT", str(gelu[3]), force_image_size=(48, 48))
    assert model.visual.grid_size == (6, 6) and model.logit_bias is None
    np.testing.assert_array_equal(model.visual.positional_embedding.asnumpy(), open_clip.create_model(
        "tiny-ViT", str(gelu[3]), force_image_size=48).visual.positional_embedding.asnumpy())
    assert open_clip.create_model("tiny-ViT", force_custom_text=True).logit_bias is None
    with pytest.raises(UnsupportedError, match=r"^force_image_size=\(48, 64\): clipzoo's MindSpore drop-in builds "
                                               "square images"):
        open_clip.create_model("tiny-ViT", force_image_size=(48, 64))
    before = open_clip.list_models()
    open_clip.add_model_config(tmp_path / "nonexistent")
    assert open_clip.list_models() == before
    params = read_ckpt(gelu[3])
    params["visual.positional_embedding"] = np.concatenate([params["visual.positional_embedding"]] * 2)[:21]
    bad = tmp_path / "pos.ckpt"
    write_ckpt(bad, params)
    with pytest.raises(CheckpointError, match=r"^visual.positional_embedding \(21, 128\) is no class token and square "
                                              "grid of positions, so it cannot be resized to force_image_size"):
        open_clip.create_model("tiny-ViT", str(bad), force_image_size=48)


def test_clip_model_dtype_is_mindspore_clips(gelu):
    from clipzoo.compat.mindspore import clip

    model, _ = clip.load(str(gelu[3]))
    assert model.dtype == ms.float32 == model.visual.conv1.weight.dtype


def test_convert_help_names_every_format():
    """convert's --to / --from / --model help name mindspore, as docs/mindspore.md documents it."""
    command = get_command(app).commands["convert"]
    helps = {p.name: p.help for p in command.params}
    assert all(name in helps["to"] for name in TARGETS)
    assert all(name in helps["source_format"] for name in SOURCE_FORMATS)
    assert "mindspore" in helps["jax_model"]
