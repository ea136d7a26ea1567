"""Conversion as a probe broke it (round 2): `--to openai` wrote models OpenAI's code rebuilds otherwise, the
preprocessing and the tokenizer were dropped without a word, an HF resize-then-crop became a plain resize,
`--overwrite` removed a project folder holding a `config.json`, a list `image_size` made an unloadable `.ckpt`, a
refusal left a hidden temporary, a new DST inside the source folder was written, and JAX hints named Python
arguments."""
from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import clipzoo
from clipzoo.cli import app
from clipzoo.convert import convert
from clipzoo.errors import ClipzooError, UnsupportedError
from clipzoo.testing.tiny import TINY_CONFIG, write_open_clip_hub_folder

TEXTS = ["a photo of a cat", "hello world!", "two dogs"]


def run(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def hub(tmp_path, name: str, edit=None, preprocess: "dict | None" = None):
    cfg = copy.deepcopy(TINY_CONFIG)
    if edit:
        edit(cfg)
    folder = write_open_clip_hub_folder(tmp_path / name, seed=5, config=cfg)
    if preprocess is not None:
        path = folder / "open_clip_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "preprocess_cfg": preprocess}))
    return folder


# ----------------------------------------------------------------------------------------------- 1. --to openai
@pytest.mark.parametrize("name, edit, problem", [
    ("text_eps", lambda c: c["text_cfg"].update(norm_kwargs={"eps": 1e-3}),
     "text_cfg.norm_kwargs = {'eps': 0.001} (OpenAI's code builds eps 1e-05)"),
    ("vision_eps", lambda c: c["vision_cfg"].update(norm_kwargs={"eps": 1e-3}),
     "vision_cfg.norm_kwargs = {'eps': 0.001} (OpenAI's code builds eps 1e-05)"),
    ("no_causal", lambda c: c["text_cfg"].update(no_causal_mask=True),
     "text_cfg.no_causal_mask = True (OpenAI's code builds False)"),
    ("pool_last", lambda c: c["text_cfg"].update(pool_type="last"),
     "text_cfg.pool_type = 'last' (OpenAI's code builds 'argmax')"),
    ("text_ls", lambda c: c["text_cfg"].update(ls_init_value=0.5),
     "text_cfg.ls_init_value = 0.5 (OpenAI's code has none)"),
    ("qk", lambda c: c["vision_cfg"].update(scaled_cosine_attn=True),
     "vision_cfg.scaled_cosine_attn = True (OpenAI's code builds False)"),
    ("nonsquare", lambda c: c["vision_cfg"].update(image_size=[32, 64]),
     "vision_cfg.image_size = [32, 64] is not square (OpenAI's code builds square images and patches)"),
])
def test_openai_refuses_every_option_its_code_rebuilds_otherwise(tmp_path, name, edit, problem):
    """text eps / no causal mask / last-token pooling were written and loaded by clip.load with features up to
    2.9 off; layer scale, scaled-cosine attention and a non-square image were written and clip.load failed."""
    folder = hub(tmp_path, name, edit)
    with pytest.raises(UnsupportedError) as err:
        convert(folder, tmp_path / "o.pt", "openai")
    assert str(err.value) == (f"[clip - local - {folder}] cannot be written in OpenAI's format: {problem}. Convert it "
                              "to open_clip, hf or safetensors instead")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_openai_writes_what_its_code_builds_and_clip_load_agrees(tmp_path):
    """A square list image size and patch dropout (training only) are OpenAI's model: written, and openai's own
    clip.load (clip-anytorch) gives open_clip's features on the same inputs, within its fp16 rounding."""
    clip = pytest.importorskip("clip")
    folder = hub(tmp_path, "ok", lambda c: (c["vision_cfg"].update(image_size=[32, 32], patch_dropout=0.5)))
    convert(folder, tmp_path / "o.pt", "openai")
    theirs, _ = clip.load(str(tmp_path / "o.pt"), device="cpu", jit=False)
    ours = clipzoo.load(folder)
    pixels, tokens = torch.randn(2, 3, 32, 32), clip.tokenize(TEXTS)
    with torch.no_grad():
        image = (theirs.encode_image(pixels).float() - ours.encode_pixels(pixels)).abs().max().item()
        text = (theirs.encode_text(tokens).float() - ours.encode_tokens(tokens)).abs().max().item()
    assert image < 5e-3 and text < 5e-3, (image, text)


# ----------------------------------------------------------------------------------------------- 2. preprocessing
PREP = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "resize_mode": "squash"}
PREP_SHOWN = "mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5), interpolation bilinear, resize_mode squash"


def test_jax_records_the_preprocessing_warns_and_converting_back_restores_it(tmp_path):
    """--to jax replaced a mean of 0.5 / squash / bilinear by OpenAI's without a word (features 0.48 off after the
    round trip, weights bit-identical)."""
    pytest.importorskip("flax")
    folder = hub(tmp_path, "prep", preprocess=PREP)
    with pytest.warns(UserWarning) as caught:
        convert(folder, tmp_path / "p.pkl", "jax")
    shown = [str(w.message) for w in caught if "preprocessing" in str(w.message)]
    assert shown == [f"[clip - local - {folder}]: its preprocessing ({PREP_SHOWN}) is not OpenAI's, which "
                     "open_clip_jax applies to p.pkl; it is recorded in p.config.json, which clipzoo's loader "
                     "applies and converting back restores"]
    recorded = json.loads((tmp_path / "p.config.json").read_text())["preprocess_cfg"]
    assert recorded == {"size": [32, 32], **PREP, "mode": "RGB", "fill_color": 0}
    convert(tmp_path / "p.pkl", tmp_path / "back", "open_clip", source_format="jax")
    back = json.loads((tmp_path / "back" / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert {k: back[k] for k in PREP} == PREP
    a, b = clipzoo.load(folder), clipzoo.load(tmp_path / "back")
    image = Image.fromarray(torch.randint(0, 255, (40, 57, 3), dtype=torch.uint8).numpy())
    assert torch.equal(a.preprocess(image), b.preprocess(image))
    assert torch.equal(a.encode_image([image]), b.encode_image([image]))
    in_jax = clipzoo.load(tmp_path / "p.pkl")  # clipzoo's JAX engine applies it too (it applied OpenAI's)
    assert torch.equal(in_jax.preprocess(image), a.preprocess(image))
    assert float((in_jax.encode_image([image]) - a.encode_image([image])).abs().max()) < 1e-4


def test_openai_warns_that_it_cannot_record_the_preprocessing(tmp_path):
    folder = hub(tmp_path, "prep", preprocess=PREP)
    with pytest.warns(UserWarning, match=r"^\[clip - local - .*\]: its preprocessing \(mean \(0\.5, 0\.5, 0\.5\), .*"
                                         r"\) is not OpenAI's, which openai's clip\.load applies to o\.pt; the file "
                                         r"cannot record it: apply it yourself, or convert to open_clip, hf or "
                                         r"safetensors instead$"):
        convert(folder, tmp_path / "o.pt", "openai")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # OpenAI's own preprocessing: nothing to say
        convert(hub(tmp_path, "plain"), tmp_path / "p.pt", "openai")


def test_mindspore_records_the_preprocessing_and_a_square_list_size(tmp_path):
    pytest.importorskip("mindspore")
    folder = hub(tmp_path, "prep", lambda c: c["vision_cfg"].update(image_size=[32, 32]), preprocess=PREP)
    with pytest.warns(UserWarning, match=r"which MindSpore-CLIP applies to m\.ckpt; it is recorded in the \.ckpt's "
                                         r"model config, which clipzoo's loader applies and converting back restores"):
        convert(folder, tmp_path / "m.ckpt", "mindspore")
    in_ms = clipzoo.load(tmp_path / "m.ckpt")
    assert in_ms.image_size == 32  # was a TypeError traceback
    image = Image.fromarray(torch.randint(0, 255, (40, 57, 3), dtype=torch.uint8).numpy())
    source = clipzoo.load(folder)  # clipzoo's MindSpore engine applies the recorded preprocessing (it applied OpenAI's)
    assert torch.equal(in_ms.preprocess(image), source.preprocess(image))
    assert float((in_ms.encode_image([image]) - source.encode_image([image])).abs().max()) < 1e-4
    convert(tmp_path / "m.ckpt", tmp_path / "back", "open_clip", source_format="mindspore")
    back = json.loads((tmp_path / "back" / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert {k: back[k] for k in PREP} == PREP


# ----------------------------------------------------------------------------------------------- 3. tokenizer
@pytest.fixture(scope="module")
def small_vocab_hf(tmp_path_factory):
    pytest.importorskip("transformers")
    from clipzoo.testing.tiny_hf import write_clip

    return write_clip(tmp_path_factory.mktemp("hf") / "smallvocab", seed=1, n_merges=300)


def test_an_hf_tokenizer_travels_to_an_open_clip_folder_and_back(small_vocab_hf, tmp_path):
    """An HF CLIP with its own 814-token BPE: the open_clip folder was reloaded with OpenAI's BPE and every text
    failed (token 49407 past the vocabulary); HF → open_clip → HF could not be done."""
    import open_clip

    convert(small_vocab_hf, tmp_path / "oc", "open_clip")
    cfg = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())["model_cfg"]
    assert cfg["text_cfg"]["hf_tokenizer_name"] == str(tmp_path / "oc")
    assert (tmp_path / "oc" / "tokenizer_config.json").is_file()
    source, ours = clipzoo.load(small_vocab_hf), clipzoo.load(tmp_path / "oc")
    ids = source.tokenize(TEXTS)
    assert torch.equal(ours.tokenize(TEXTS), ids)
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")(TEXTS), ids)  # open_clip's own
    assert (ours.encode_text(TEXTS) - source.encode_text(TEXTS)).abs().max() < 1e-5
    convert(tmp_path / "oc", tmp_path / "hf", "hf")
    again = clipzoo.load(tmp_path / "hf")
    assert torch.equal(again.tokenize(TEXTS), ids)
    assert (again.encode_text(TEXTS) - source.encode_text(TEXTS)).abs().max() < 1e-5


@pytest.mark.parametrize("to, dst, target", [
    ("safetensors", "m.safetensors", "a single .safetensors file"),
    ("open_clip", "m.pt", "a single .pt file"),
])
def test_a_single_file_cannot_hold_an_hf_tokenizer(small_vocab_hf, tmp_path, to, dst, target):
    with pytest.raises(UnsupportedError) as err:
        convert(small_vocab_hf, tmp_path / dst, to)
    assert str(err.value) == (f"[clip - local - {small_vocab_hf}]: its tokenizer (CLIPTokenizer of 814 ids) is not "
                              f"OpenAI's, and {target} cannot hold it (the text would be tokenized wrongly): convert "
                              "to open_clip with a folder as DST (it keeps the tokenizer files), or to hf or onnx")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- 4. resize, crop
def test_an_hf_processor_that_resizes_then_crops_is_refused(tmp_path):
    """shortest edge 40 then crop 32 became "resize to 32" (features 0.68 off), and back in HF shortest_edge 32."""
    pytest.importorskip("transformers")
    from clipzoo.testing.tiny_hf import write_clip

    folder = write_clip(tmp_path / "crop", seed=0)
    path = folder / "preprocessor_config.json"
    if not path.exists():
        path = folder / "processor_config.json"
    body = json.loads(path.read_text())
    proc = body.get("image_processor", body)
    proc["size"], proc["crop_size"] = {"shortest_edge": 40}, {"height": 32, "width": 32}
    path.write_text(json.dumps(body))
    with pytest.raises(UnsupportedError) as err:
        convert(folder, tmp_path / "oc", "open_clip")
    assert str(err.value) == (f"[clip - local - {folder}]: its image processor resizes the shortest edge to 40, then "
                              "crops 32 × 32, which open_clip's preprocessing cannot express (it resizes to the crop "
                              "size); convert it to onnx instead, which keeps the HF processor")
    assert not (tmp_path / "oc").exists()


# ----------------------------------------------------------------------------------------------- 5. --overwrite
def test_overwrite_keeps_a_project_folder_that_holds_a_config_json(tiny_files, tmp_path):
    """A folder with config.json, notes.txt, src/ and .git/ was removed whole by --to onnx --overwrite (any target:
    the check comes first)."""
    app_dir = tmp_path / "myapp"
    (app_dir / "src").mkdir(parents=True)
    (app_dir / ".git").mkdir()
    (app_dir / "config.json").write_text('{"port": 8080}')
    (app_dir / "notes.txt").write_text("mine")
    (app_dir / "src" / "main.py").write_text("print(1)")
    single = tiny_files["open_clip_safetensors"]
    code, _, stderr = run("convert", single, app_dir, "--to", "open_clip", "--overwrite")
    assert code == 2 and stderr == (f"error: {app_dir} is a folder of other files (.git, notes.txt, src), not a model "
                                    "folder: --overwrite would remove them; choose another destination\n"), stderr
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "config.json").write_text("{}")
    code, _, stderr = run("convert", single, lone, "--to", "open_clip", "--overwrite")
    assert code == 2 and stderr == (f"error: {lone} is a folder of other files (config.json), not a model folder: "
                                    "--overwrite would remove them; choose another destination\n"), stderr
    assert sorted(p.name for p in app_dir.iterdir()) == [".git", "config.json", "notes.txt", "src"]
    assert (app_dir / "src" / "main.py").read_text() == "print(1)" and (lone / "config.json").read_text() == "{}"
    assert run("convert", single, tmp_path / "oc", "--to", "open_clip")[0] == 0  # a model folder: replaced
    assert run("convert", single, tmp_path / "oc", "--to", "open_clip", "--overwrite")[0] == 0


def test_overwrite_replaces_an_onnx_export_of_an_hf_model_with_its_subfolders(tmp_path):
    from clipzoo.convert.destination import check_replaceable

    export = tmp_path / "ox"
    for name in ("clipzoo_onnx.json", "image.onnx", "text.onnx", "tokenizer/tokenizer.json",
                 "tokenizer/tokenizer_config.json", "image_processor/preprocessor_config.json"):
        (export / name).parent.mkdir(parents=True, exist_ok=True)
        (export / name).write_text("{}")
    check_replaceable(export)  # a model folder
    (export / "tokenizer" / "mine.txt").write_text("keep")
    with pytest.raises(ClipzooError) as err:
        check_replaceable(export)
    assert str(err.value) == (f"{export} is a folder of other files (tokenizer), not a model folder: --overwrite "
                              "would remove them; choose another destination")


# ----------------------------------------------------------------------------------------------- 6. list sizes
def test_mindspore_config_takes_a_square_list_size_and_refuses_another():
    """A list image_size was written into the .ckpt, then reading it back was a TypeError traceback."""
    from clipzoo.models.mindspore_config import check_config, tower_sizes

    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["vision_cfg"]["image_size"] = [32, 32]
    assert tower_sizes(check_config(cfg))["image_size"] == 32
    cfg["vision_cfg"]["image_size"] = [32, 64]
    with pytest.raises(ClipzooError) as err:
        check_config(cfg)
    assert str(err.value) == ("vision_cfg.image_size = [32, 64] is not square, and the MindSpore engine "
                              "(MindSpore-CLIP) takes one size for both sides; convert it to open_clip, safetensors "
                              "or onnx instead")


def test_jax_refuses_a_non_square_image_size(tmp_path):
    from clipzoo.convert.jax import square_sizes

    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["vision_cfg"].update(image_size=[32, 32], patch_size=[8, 8])
    assert square_sizes(cfg, "m", "the JAX engine")["vision_cfg"] == {**TINY_CONFIG["vision_cfg"]}
    cfg["vision_cfg"]["image_size"] = [32, 64]
    with pytest.raises(ClipzooError) as err:
        square_sizes(cfg, "m", "the JAX engine")
    assert str(err.value) == ("m: vision_cfg.image_size = [32, 64] is not square, and the JAX engine takes one size "
                              "for both sides; convert it to open_clip, safetensors or onnx instead")


# ----------------------------------------------------------------------------------------------- 7. temporaries
def test_a_failed_hf_conversion_leaves_no_temporary_and_names_no_python_argument(tmp_path, monkeypatch):
    """save_hf_clip made the folder before its tokenizer check, and its hint was `tokenizer=…`, which the CLI has
    not; a failure halfway through left a hidden .DST.tmp-PID folder of full-size weights."""
    pytest.importorskip("transformers")
    from safetensors.torch import save_file

    from clipzoo.testing.tiny import state_dict

    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["text_cfg"]["vocab_size"] = 814
    src = tmp_path / "src" / "m.safetensors"
    src.parent.mkdir()
    save_file({k: v.contiguous() for k, v in state_dict(0, config=cfg).items()}, str(src),
              metadata={"format": "pt", "open_clip_config": json.dumps({"model_cfg": cfg})})
    out = tmp_path / "out"
    code, _, stderr = run("convert", src, out / "hf", "--to", "hf")
    assert code == 2 and stderr == (f"error: [clip - local - {src}]: its text tower has 814 token ids, not OpenAI's "
                                    "49408, and its own tokenizer is not known: it cannot be written as an HF folder; "
                                    "convert it to safetensors or onnx instead\n"), stderr
    assert not out.exists() or list(out.iterdir()) == []

    import clipzoo.convert.hf_clip as hf_clip

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(hf_clip, "write_weights", boom)
    with pytest.raises(OSError, match="disk full"):
        convert(hub(tmp_path, "plain"), out / "hf", "hf")
    assert list(out.iterdir()) == []  # no .hf.tmp-PID


# ----------------------------------------------------------------------------------------------- 8. inside SRC
def test_a_new_destination_inside_the_source_folder_is_refused(tmp_path):
    folder = hub(tmp_path, "hub")
    for dst, to in ((folder / "sub", "open_clip"), (folder / "out.safetensors", "safetensors")):
        code, _, stderr = run("convert", folder, dst, "--to", to)
        assert code == 2 and stderr == (f"error: {dst} overlaps the model being converted ({folder}): writing there "
                                        "would destroy it; choose another destination\n"), stderr
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]


# ----------------------------------------------------------------------------------------------- 10. CLI hints
def test_jax_source_hints_name_the_cli_options(tmp_path):
    pkl = tmp_path / "p.pkl"
    pkl.write_bytes(b"not read")
    code, _, stderr = run("convert", pkl, "--to", "safetensors", "-o", tmp_path / "x.safetensors")
    assert code == 2 and stderr.startswith(f"error: {pkl} holds JAX parameters (an open_clip_jax .pkl) with no config "
                                           "file beside it: name its config with --from jax --model NAME (one of "
                                           "vit-"), stderr
    for extra in ((), ("--from", "jax")):
        code, _, stderr = run("convert", pkl, "--to", "safetensors", "-o", tmp_path / "x.safetensors",
                              "--model-name", "ViT-B-32", *extra)
        assert code == 2 and stderr == ("error: --model-name names an open_clip config; a jax file's config is named "
                                        "with --from jax --model NAME\n"), stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.pkl"]
