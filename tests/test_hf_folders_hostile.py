"""transformers and sentence-transformers model folders with hostile or broken files: each load ends in one line
naming the file (never a traceback from inside safetensors, transformers or sentence-transformers, never a hang on
a fifo, never gigabytes allocated for a config the weights do not fill), and what loads gives the libraries' own
features (found by probing HF folders)."""
from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import struct
import threading

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")

import clipzoo  # noqa: E402
from clipzoo.errors import (  # noqa: E402
    ArchitectureMismatchError,
    BadOptionError,
    CheckpointError,
    UnknownModelError,
    UnsafePickleError,
)
from clipzoo.files import NOT_REGULAR  # noqa: E402
from clipzoo.registry import Registry  # noqa: E402
from clipzoo.testing import tiny_hf  # noqa: E402


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_originals")
    return {"clip": tiny_hf.write_clip(root / "clip"), "st_text": tiny_hf.write_st_text(root / "st_text"),
            "st_current": tiny_hf.write_st_text(root / "st_current", legacy=False)}


@pytest.fixture
def copy_of(originals, tmp_path):
    def copy(name: str):
        return shutil.copytree(originals[name], tmp_path / name)
    return copy


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def load_within(folder, fifo, seconds: float = 30.0, **kwargs):
    """``clipzoo.load(folder)`` in a thread; when it is still waiting after ``seconds`` (reading ``fifo`` with no
    writer: the old behaviour), the fifo is closed under it and the test fails."""
    outcome: dict = {}

    def run():
        try:
            outcome["model"] = clipzoo.load(str(folder), **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader sees an end of file
        thread.join(30)
        pytest.fail(f"loading {folder} waited on the fifo {fifo}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["model"]


# ------------------------------------------------------------------------------------ 1. broken safetensors
def _rewrite_safetensors(path, how: str) -> None:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif how == "huge header length":
        path.write_bytes(struct.pack("<Q", 2 ** 62) + raw[8:])
    elif how == "offsets past the end":
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"] = [len(body), len(body) + 10 ** 6]
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + body)


BROKEN = {"empty": "header too small", "truncated": "incomplete metadata, file not fully covered",
          "huge header length": "header too large", "offsets past the end": "invalid offset for tensor"}


@pytest.mark.parametrize("how", list(BROKEN))
@pytest.mark.parametrize("kind", ["clip", "st_text"])
def test_a_broken_safetensors_file_in_a_model_folder_is_one_line_naming_it(copy_of, kind, how):
    """Each was a raw SafetensorError traceback (`clipzoo compare` exited 1 with a rich traceback)."""
    folder = copy_of(kind)
    _rewrite_safetensors(folder / "model.safetensors", how)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(folder / 'model.safetensors'))} is not a readable "
                                              rf"safetensors file \(Error while deserializing header: {BROKEN[how]}"
                                              r".*\); is it truncated\? Download or save it again$"):
        clipzoo.load(str(folder))


# ------------------------------------------------------------------------------------ 3. fifos
@pytest.mark.parametrize("kind, name", [("clip", "config.json"), ("clip", "tokenizer.json"),
                                        ("st_text", "modules.json"), ("st_text", "2_Dense/config.json")])
def test_a_fifo_in_a_model_folder_is_refused_instead_of_waiting_for_ever(copy_of, kind, name):
    """config.json as a fifo blocked for ever in read_json; modules.json inside SentenceTransformer.__init__."""
    folder = copy_of(kind)
    (folder / name).unlink()
    os.mkfifo(folder / name)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(folder / name))} {re.escape(NOT_REGULAR)}; "):
        load_within(folder, folder / name)


def test_a_fifo_config_of_a_registered_transformers_card_is_refused(copy_of):
    """A card whose backend is named skips the folder sniffing: the config reader itself refuses the fifo."""
    folder = copy_of("clip")
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    card = Registry(builtin=False).register(architecture="clip", publisher="me", id="fifo", path=str(folder),
                                            backend="transformers")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_try_load(card)), daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        os.close(os.open(folder / "config.json", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the load waited on the fifo config.json")
    assert isinstance(outcome["result"], CheckpointError)
    assert str(outcome["result"]).startswith(f"{folder / 'config.json'} {NOT_REGULAR}; ")


def _try_load(card):
    try:
        return clipzoo.load(card)
    except Exception as exc:  # noqa: BLE001 - inspected by the test
        return exc


# ------------------------------------------------------------------------------------ 4. configs larger than weights
@pytest.mark.parametrize("kind", ["clip", "st_text"])
def test_a_config_far_larger_than_the_weights_is_refused_before_allocating(copy_of, kind):
    """text_config.vocab_size = 10**7 in a 10 MB folder raised peak memory by 2.7 GB before the mismatch error."""
    from safetensors import safe_open

    folder = copy_of(kind)
    if kind == "clip":
        edit_json(folder / "config.json", text_config={"vocab_size": 10 ** 7})
    else:
        edit_json(folder / "config.json", vocab_size=10 ** 7)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        names = f.keys()
        held = sum(math.prod(f.get_slice(k).get_shape()) for k in names)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    at = re.escape(str(folder))
    with pytest.raises(ArchitectureMismatchError, match=rf"^{at}: its config.json builds a model of "
                                                        rf"3\d\d,\d{{3}},\d{{3}} parameters where the weights hold "
                                                        rf"{held:,}; the config does not describe these weights "
                                                        r"\(nothing was allocated\)$"):
        clipzoo.load(str(folder))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024  # KB


def _as_pickle(folder, evil: bool = False):
    """``folder``'s model.safetensors rewritten as the pytorch_model.bin transformers also reads (one tensor of it a
    pickle asking for code when ``evil``)."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    if evil:
        state["extra"] = _Evil()
    torch.save(state, str(folder / "pytorch_model.bin"))
    return sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("kind", ["clip", "st_text"])
def test_a_config_far_larger_than_pickled_weights_is_refused_before_allocating(copy_of, kind):
    """The same guard for ``pytorch_model.bin``: its tensors are counted memory-mapped (the guard covered
    safetensors only, and 10**7 words of vocabulary allocated 2.7 GB before the mismatch)."""
    folder = copy_of(kind)
    held = _as_pickle(folder)
    edit_json(folder / "config.json", **({"text_config": {"vocab_size": 10 ** 7}} if kind == "clip"
                                         else {"vocab_size": 10 ** 7}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ArchitectureMismatchError, match=rf"builds a model of 3\d\d,\d{{3}},\d{{3}} parameters where "
                                                        rf"the weights hold {held:,};"):
        clipzoo.load(str(folder))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024  # KB


def test_pickled_weights_asking_for_code_are_named_so_even_under_an_oversized_config(copy_of):
    """The size guard does not hide why a pickle is refused: a pickle asking for code is never counted (nor run)."""
    folder = copy_of("clip")
    _as_pickle(folder, evil=True)
    edit_json(folder / "config.json", text_config={"vocab_size": 10 ** 7})
    with pytest.raises(UnsafePickleError, match="loading it can run arbitrary code"):
        clipzoo.load(str(folder))


# ------------------------------------------------------------------------------------ 5. configs of wrong types
@pytest.mark.parametrize("change, said", [
    ({"model_type": ["clip"]}, r"its config.json cannot be built \(model_type is \['clip'\], not a name such as "
                               r"'clip'\); check the config's values$"),
    ({"projection_dim": "abc"}, r"its config.json cannot be built \(StrictDataclassFieldValidationError: "
                                r"Validation error for field 'projection_dim'"),
    ({"text_config": [1]}, r"its config.json cannot be built \(StrictDataclassFieldValidationError: Validation "
                           r"error for field 'text_config'"),
])
def test_a_config_of_wrong_types_is_one_line(copy_of, change, said):
    """A list model_type was an unhashable-type TypeError; the others huggingface_hub's validation tracebacks."""
    folder = copy_of("clip")
    edit_json(folder / "config.json", **change)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(folder))}: {said}"):
        clipzoo.load(str(folder))


def test_a_deeply_nested_config_is_one_line(copy_of):
    """A RecursionError traceback from the JSON reader."""
    folder = copy_of("clip")
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(folder / 'config.json'))}: its JSON nests too deeply "
                                              r"\(RecursionError\), so its config cannot be built; check the file$"):
        clipzoo.load(str(folder))


# ------------------------------------------------------------------------------------ 6. image processors
def _image_processor(folder, **settings):
    path = folder / "processor_config.json"
    edit_json(path, image_processor=settings)
    return path


def test_an_image_processor_of_another_size_than_the_model_is_refused_at_load(copy_of):
    """It loaded, then every image encode was a raw ValueError: Input image size (224*224) doesn't match model."""
    folder = copy_of("clip")
    path = _image_processor(folder, size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    at = re.escape(str(path))
    with pytest.raises(CheckpointError, match=rf"^{at} makes images of 224x224 pixels but the model takes 32x32 "
                                              r"\(config.json vision_config.image_size\); save the image processor "
                                              r"that came with the model$"):
        clipzoo.load(str(folder))


@pytest.mark.parametrize("size, said", [(0, "ValueError: Size must contain"), (-5, "RuntimeError: Input and output "
                                                                                    "sizes should be greater than 0")])
def test_an_image_processor_of_no_size_is_one_line_at_load(copy_of, size, said):
    folder = copy_of("clip")
    path = _image_processor(folder, size={"shortest_edge": size})
    at = re.escape(str(path))
    with pytest.raises(CheckpointError, match=rf"^{at} cannot preprocess an image \({said}.*\); check its size "
                                              r"settings, or save the image processor that came with the model$"):
        clipzoo.load(str(folder))


# ------------------------------------------------------------------------------------ 7. sentence-transformers files
class _Evil:
    def __reduce__(self):
        return os.system, ("true",)


def test_a_sentence_transformers_pickle_asking_for_code_is_unsafe_pickle_error(copy_of):
    """A raw UnpicklingError (nothing ran: torch's weights-only load refused it)."""
    folder = copy_of("st_text")
    torch.save({"linear.weight": _Evil()}, str(folder / "2_Dense" / "pytorch_model.bin"))
    at = re.escape(str(folder))
    with pytest.raises(UnsafePickleError, match=rf"^{at}: its weights are a pickle that needs more than tensors "
                                                r"to load \(it asks for posix.system, which weights-only loading does "
                                                r"not allow\); loading it can run arbitrary code, and the "
                                                r"sentence_transformers backend reads weights only: convert it to "
                                                r"safetensors where it was written$"):
        clipzoo.load(str(folder))


@pytest.mark.parametrize("name, text, said", [
    ("2_Dense/pytorch_model.bin", "garbage" * 10, r"a weights file in it is not a PyTorch checkpoint \(Unsupported "
                                                  r"operand 103\); is it truncated or another format\? Save the model "
                                                  r"again$"),
    ("2_Dense/config.json", json.dumps({"in_features": 32}), r"cannot load .* as a SentenceTransformer \(TypeError: "
                                                             r".*missing 1 required positional argument: "
                                                             r"'out_features'\)$"),
    ("1_Pooling/config.json", "[]", r"cannot load .* as a SentenceTransformer \(TypeError: .*argument after \*\* "
                                    r"must be a mapping, not list\)$"),
    ("modules.json", "[1]", r"modules.json is not a list of modules \(objects with a 'path' and a 'type'\); save "
                            r"the model again with SentenceTransformer.save$"),
])
def test_a_broken_sentence_transformers_module_file_is_one_line(copy_of, name, text, said):
    """Raw UnpicklingError and TypeError tracebacks from inside sentence-transformers."""
    folder = copy_of("st_text")
    (folder / name).write_text(text)
    with pytest.raises(CheckpointError, match=said) as err:
        clipzoo.load(str(folder))
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ 8. default prompts
@pytest.mark.parametrize("include_prompt", [True, False])
def test_a_default_prompt_is_applied_as_sentence_transformers_encode_does(copy_of, include_prompt):
    """config_sentence_transformers.json's prompts and default_prompt_name were ignored: clipzoo's features
    differed from SentenceTransformer.encode by 0.437."""
    from sentence_transformers import SentenceTransformer

    folder = copy_of("st_current")
    edit_json(folder / "config_sentence_transformers.json", prompts={"query": "query: ", "document": ""},
              default_prompt_name="query")
    pooling = next(p for p in folder.iterdir() if p.name.endswith("_Pooling")) / "config.json"
    edit_json(pooling, include_prompt=include_prompt)
    texts = ["a photo of a cat", "une photo d'un chat", "x"]
    reference = torch.as_tensor(SentenceTransformer(str(folder), device="cpu").encode(texts))
    ours = clipzoo.load(str(folder)).encode_text(texts, normalize=False)
    assert (ours - reference).abs().max().item() < 1e-5


# ------------------------------------------------------------------------------------ 9. tokenizer files
def test_a_tokenizer_json_that_is_a_folder_is_refused(copy_of):
    """It gave an empty tokenizer: every text had the same embedding."""
    folder = copy_of("clip")
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").mkdir()
    at = re.escape(str(folder / "tokenizer.json"))
    with pytest.raises(CheckpointError, match=rf"^{at} is a folder, not a tokenizer file; "
                                              r"save the tokenizer with the model"):
        clipzoo.load(str(folder))


# ------------------------------------------------------------------------------------ 10. hf_class
@pytest.mark.parametrize("hf_class, said", [
    ("pipeline", "is not a transformers model class"), ("__version__", "is not a transformers model class"),
    ("AutoTokenizer", "is not a transformers model class"),
    ("CLIPVisionModel", "has no get_image_features or get_text_features"),
])
def test_an_hf_class_that_is_no_image_text_model_is_one_line(originals, hf_class, said):
    """Raw AttributeError / TypeError; CLIPVisionModel loaded, claimed image and text, and both encodes failed."""
    with pytest.raises(BadOptionError, match=rf"^hf_class {hf_class!r} {said}"):
        clipzoo.load(str(originals["clip"]), hf_class=hf_class)


# ------------------------------------------------------------------------------------ 11, 12. the registry
def test_register_without_overwrite_sees_built_in_aliases_before_the_catalogue_is_read(originals):
    """It silently shadowed the built-in card; after len(registry) the same call raised."""
    registry = Registry()
    with pytest.raises(ValueError, match=r"^\[clip - openai - ViT-B/32\] is already registered; pass "
                                         r"overwrite=True to replace it$"):
        registry.register(architecture="clip", publisher="openai", id="ViT-B/32", path=str(originals["clip"]),
                          overwrite=False)
    assert registry.resolve("[clip - openai - ViT-B/32]").source.path is None


@pytest.mark.parametrize("spec", ["hf-hub:", "hf-hub:/", "hf-hub:../../etc", "hf-hub:a/b/c", "hf-hub:org//name"])
def test_an_hf_hub_spec_that_names_no_repo_is_unknown(spec):
    """Each became a card that could only fail later with 'not in the local Hugging Face cache'."""
    with pytest.raises(UnknownModelError, match=rf"^model spec {spec!r} names no Hugging Face repo \(.*\); write "
                                                r"'hf-hub:org/name'$"):
        Registry(builtin=False).resolve(spec)


def test_an_hf_hub_spec_is_stripped():
    card = Registry(builtin=False).resolve("hf-hub: org/name ")
    assert card.source.hf_repo == "org/name"
