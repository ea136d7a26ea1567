"""Switching to the drop-ins changes nothing a user relies on: each rule beside the original on the same files.

openai's ``clip`` (clip-anytorch) and open_clip are installed and run side by side with the shims; mmc and
open_clip_jax are not, so their rules are held to the original's recipe and source (quoted where used).
"""
from __future__ import annotations

import collections
import hashlib
import http.server
import os
import pickle
import threading
import tracemalloc
import types
import warnings
from pathlib import Path

import numpy as np
import open_clip as real_open_clip
import pytest
import torch
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip-anytorch imports pkg_resources
    import clip as openai_clip

import clipzoo
import clipzoo.download
from _compat_common import maxdiff, quiet, register_tiny_config
from clipzoo.comparator import Comparator
from clipzoo.compat import clip, mmc
from clipzoo.compat import open_clip as shim
from clipzoo.errors import (
    AmbiguousModelError,
    CheckpointError,
    ClipzooError,
    DownloadError,
    ModelNotCachedError,
    UnsupportedError,
)

CFG_NAME = "tiny-compat-switching"
TEXTS = ["a photo of a cat", "<|endoftext|>", "<|startoftext|> hi", "Ünïcödé &amp; emoji 🐈 猫"]
OPENAI_NAMES = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14",
                "ViT-L/14@336px"]
OVERRIDES = dict(image_mean=(0.5, 0.5, 0.5), image_std=(0.2, 0.2, 0.2), image_interpolation="bilinear",
                 image_resize_mode="squash")


@pytest.fixture(autouse=True)
def reset_active_tokenizer(monkeypatch):
    """clip.tokenize follows the last clip.load (module state): keep each test's own."""
    monkeypatch.setattr(clip, "_active_comparator", None)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """The tiny config registered with open_clip under its own name (as a user's add_model_config)."""
    return register_tiny_config(real_open_clip, tmp_path_factory.mktemp("cfg"), CFG_NAME)


@pytest.fixture(scope="module")
def pil_images():
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(48, 64), (70, 33)]]


def _raised(fn, *args, **kwargs) -> BaseException:
    try:
        quiet(fn, *args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the test compares what each library raises
        return exc
    raise AssertionError(f"{getattr(fn, '__qualname__', fn)} raised nothing")


# --------------------------------------------------------------------------- finding 1: OpenAI's names
def _vouch_for(monkeypatch, path: Path, expected: str) -> None:
    """Both libraries trust ``path`` as the file of SHA-256 ``expected`` (only the checksum is faked)."""
    real_sha256_of = clipzoo.download.sha256_of
    monkeypatch.setattr(clipzoo.download, "sha256_of",
                        lambda p, *a, **k: expected if Path(p) == path else real_sha256_of(p, *a, **k))
    data_sha = hashlib.sha256(path.read_bytes()).hexdigest()

    def sha256(data=b""):
        digest = hashlib.sha256(data).hexdigest()
        return types.SimpleNamespace(hexdigest=lambda: expected if digest == data_sha else digest)

    monkeypatch.setattr(openai_clip.clip, "hashlib", types.SimpleNamespace(sha256=sha256))


@pytest.mark.parametrize("name", OPENAI_NAMES)
def test_clip_load_of_each_openai_name_is_openais_model(name, tiny_files, pil_images, tmp_path, monkeypatch):
    """``clip.load("ViT-B/32")`` was AmbiguousModelError (KELIP has a ViT-B/32 too); now each of OpenAI's nine
    names loads OpenAI's file, as openai's does: the same archive in ``download_root``, the same model."""
    url = openai_clip.clip._MODELS[name]
    target = tmp_path / os.path.basename(url)
    target.write_bytes(tiny_files["openai_jit"].read_bytes())
    _vouch_for(monkeypatch, target, url.split("/")[-2])
    assert clip._MODELS[name] == url
    ref, ref_pre = quiet(openai_clip.load, name, device="cpu", jit=True, download_root=str(tmp_path))
    model, preprocess = quiet(clip.load, name, device="cpu", jit=True, download_root=str(tmp_path))
    assert isinstance(model, torch.jit.ScriptModule)
    pixels = torch.stack([ref_pre(im) for im in pil_images])
    assert torch.equal(torch.stack([preprocess(im) for im in pil_images]), pixels)
    tokens = openai_clip.tokenize(TEXTS)
    assert torch.equal(clip.tokenize(TEXTS), tokens)
    with torch.no_grad():
        assert maxdiff(model.encode_image(pixels), ref.encode_image(pixels)) == 0.0
        assert maxdiff(model.encode_text(tokens), ref.encode_text(tokens)) == 0.0
        assert maxdiff(model(pixels, tokens)[0], ref(pixels, tokens)[0]) == 0.0


def test_clip_load_openai_name_without_jit_is_openais_card(tiny_files, tmp_path, monkeypatch):
    """jit=False reads the same file through OpenAI's card, whose config is the real ViT-B-32: the tiny archive
    does not fit it, and the error says so — about OpenAI's config and file, not an ambiguity."""
    url = openai_clip.clip._MODELS["ViT-B/32"]
    target = tmp_path / "ViT-B-32.pt"
    target.write_bytes(tiny_files["openai_jit"].read_bytes())
    _vouch_for(monkeypatch, target, url.split("/")[-2])
    err = _raised(clip.load, "ViT-B/32", device="cpu", download_root=str(tmp_path))
    assert isinstance(err, RuntimeError) and isinstance(err, CheckpointError), type(err).__mro__
    assert str(err).startswith(f"{target}: model config 'ViT-B-32' builds a model of 151,277,313 parameters "
                               "where the weights hold")


# --------------------------------------------------------------------------- findings 2 and 9: precision
def _dtypes(model) -> dict[str, torch.dtype]:
    return {k: v.dtype for k, v in model.state_dict().items()}


@pytest.mark.parametrize("precision", ["pure_fp16", "pure_bf16", "fp16", "bf16", "amp", "bogus"])
def test_open_clip_precision_casts_as_open_clip(precision, tiny_config, tiny_files):
    """pure_fp16 / pure_bf16 cast every tensor (they left 27 of 62 in float32: norms, embeddings); an unknown
    precision builds float32 as open_clip does (it was UnsupportedError)."""
    path = str(tiny_files["open_clip_safetensors"])
    ref = quiet(real_open_clip.create_model, tiny_config, pretrained=path, precision=precision)
    model = quiet(shim.create_model, path, precision=precision)
    assert _dtypes(model) == _dtypes(ref)
    counts = collections.Counter(str(d) for d in _dtypes(model).values())
    if precision.startswith("pure_"):
        assert counts == {f"torch.{'float16' if precision == 'pure_fp16' else 'bfloat16'}": 62}
    if precision == "bogus":
        assert counts == {"torch.float32": 62}


# --------------------------------------------------------------------------- finding 3: preprocess config
def test_image_options_are_recorded_on_the_model_as_open_clip_does(tiny_config, tiny_files, pil_images):
    """The image_* options were applied to the transforms only; the model kept the checkpoint's config
    (code that rebuilds transforms from the model, push_to_hf_hub, used the old one), ``size`` an int."""
    path = str(tiny_files["open_clip_safetensors"])
    expected = {"size": (32, 32), "mode": "RGB", "mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2),
                "interpolation": "bilinear", "resize_mode": "squash", "fill_color": 0}
    ref, _, ref_val = quiet(real_open_clip.create_model_and_transforms, tiny_config, pretrained=path, **OVERRIDES)
    model, _, val = quiet(shim.create_model_and_transforms, path, **OVERRIDES)
    assert real_open_clip.get_model_preprocess_cfg(model) == real_open_clip.get_model_preprocess_cfg(ref) == expected
    assert torch.equal(torch.stack([val(im) for im in pil_images]), torch.stack([ref_val(im) for im in pil_images]))
    ref, ref_pre = quiet(real_open_clip.create_model_from_pretrained, tiny_config, pretrained=path, **OVERRIDES)
    model, pre = quiet(shim.create_model_from_pretrained, path, **OVERRIDES)
    assert real_open_clip.get_model_preprocess_cfg(model) == real_open_clip.get_model_preprocess_cfg(ref) == expected
    assert torch.equal(torch.stack([pre(im) for im in pil_images]), torch.stack([ref_pre(im) for im in pil_images]))


def test_preprocess_config_without_options_is_open_clips(tiny_config, tiny_files):
    """Exactly open_clip's values, types included: a file's config as open_clip builds it for the architecture
    (tuples), a folder's as ``local-dir:`` reads its JSON (lists); ``size`` the tower's 2-tuple."""
    path = str(tiny_files["open_clip_safetensors"])
    ref = quiet(real_open_clip.create_model, tiny_config, pretrained=path)
    model = quiet(shim.create_model, path)
    assert real_open_clip.get_model_preprocess_cfg(model) == real_open_clip.get_model_preprocess_cfg(ref)
    assert real_open_clip.get_model_preprocess_cfg(model)["mean"] == (0.48145466, 0.4578275, 0.40821073)
    folder = str(tiny_files["open_clip_hub"])
    ref = quiet(real_open_clip.create_model, f"local-dir:{folder}")
    model = quiet(shim.create_model, folder, force_preprocess_cfg={"std": [0.3, 0.3, 0.3]})
    ref_forced = quiet(real_open_clip.create_model, f"local-dir:{folder}", force_preprocess_cfg={"std": [0.3] * 3})
    assert real_open_clip.get_model_preprocess_cfg(quiet(shim.create_model, folder)) == \
        real_open_clip.get_model_preprocess_cfg(ref)
    assert real_open_clip.get_model_preprocess_cfg(model) == real_open_clip.get_model_preprocess_cfg(ref_forced)
    assert real_open_clip.get_model_preprocess_cfg(model)["size"] == (32, 32)


# --------------------------------------------------------------------------- finding 7: tokenizer
def test_get_tokenizer_of_an_openai_layout_file_is_open_clips(tiny_config, tiny_files):
    """open_clip pairs OpenAI's weights with its own SimpleTokenizer; the shim gave clipzoo's OpenAI tokenizer,
    which reads a literal ``<|endoftext|>`` as the special token (``[49406, 49407, 49407]``)."""
    path = str(tiny_files["openai_state_dict"])
    tokenizer = quiet(shim.get_tokenizer, path)
    ref = real_open_clip.get_tokenizer(tiny_config)
    assert type(tokenizer) is real_open_clip.tokenizer.SimpleTokenizer
    assert torch.equal(tokenizer(TEXTS), ref(TEXTS))
    assert tokenizer(["<|endoftext|>"])[0, :8].tolist() == [49406, 27, 347, 40786, 4160, 91, 285, 49407]
    assert torch.equal(shim.get_tokenizer(path, context_length=10)(TEXTS),
                       real_open_clip.get_tokenizer(tiny_config, context_length=10)(TEXTS))
    quiet(shim.create_model, str(tiny_files["openai_jit"]))  # a created model's tokenizer is the same kind
    assert type(shim.get_tokenizer(str(tiny_files["openai_jit"]))) is real_open_clip.tokenizer.SimpleTokenizer


# --------------------------------------------------------------------------- finding 8: exception types
def test_a_bad_device_is_a_runtime_error_as_in_the_originals(tiny_config, tiny_files):
    path = str(tiny_files["open_clip_safetensors"])
    ref = _raised(real_open_clip.create_model, tiny_config, pretrained=path, device="bogus")
    err = _raised(shim.create_model, path, device="bogus")
    assert isinstance(ref, RuntimeError) and isinstance(err, RuntimeError) and isinstance(err, ClipzooError)
    assert str(err) == "device 'bogus' is not a device; use 'cpu', 'cuda', 'cuda:1', 'mps', …"
    if not torch.cuda.is_available():
        sd = str(tiny_files["openai_state_dict"])
        for ref, err in [(_raised(openai_clip.load, sd, device="cuda"), _raised(clip.load, sd, device="cuda")),
                         (_raised(real_open_clip.create_model, tiny_config, device="cuda"),
                          _raised(shim.create_model, path, device="cuda"))]:
            assert isinstance(ref, RuntimeError) and isinstance(err, RuntimeError) and isinstance(err, ClipzooError)
            assert str(err).startswith("device 'cuda': torch sees 0 CUDA device(s) here; use device='cpu'")


def test_what_is_no_checkpoint_is_a_runtime_error_in_clip_load(tiny_files, tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    ref = _raised(openai_clip.load, str(folder), device="cpu")
    err = _raised(clip.load, str(folder), device="cpu")
    assert isinstance(ref, RuntimeError) and isinstance(err, RuntimeError) and isinstance(err, CheckpointError)
    assert str(err).startswith(f"folder {folder} is not a model folder clipzoo knows") and "\n" not in str(err)
    err = _raised(clip.load, str(folder / "notes.txt"), device="cpu")
    assert isinstance(err, RuntimeError) and isinstance(err, CheckpointError)


def test_weights_that_cannot_be_fetched_are_a_runtime_error(offline):
    """open_clip: ``RuntimeError("Failed … from HF Hub …")``; the shim's ModelNotCachedError is one too."""
    ref = _raised(real_open_clip.create_model, "hf-hub:nobody-compat/nothing")
    card = clipzoo.register(architecture="clip", publisher="nobody-compat", id="uncached", backend="open_clip",
                            hf_repo="nobody-compat/uncached")
    try:
        err = _raised(shim.create_model, card.alias)
        clip_err = _raised(clip.load, card.alias, device="cpu")
    finally:
        clipzoo.REGISTRY.unregister(card.alias)
    assert isinstance(ref, RuntimeError)
    for exc in (err, clip_err):
        assert isinstance(exc, RuntimeError) and isinstance(exc, ModelNotCachedError), type(exc).__mro__
        assert "'nobody-compat/uncached'" in str(exc) and "\n" not in str(exc)


def test_a_contradicting_tag_and_an_ambiguous_name_are_runtime_errors(tiny_config, tiny_files):
    path = str(tiny_files["open_clip_safetensors"])
    assert isinstance(_raised(real_open_clip.create_model, path, pretrained="openai"), RuntimeError)
    err = _raised(shim.create_model, path, pretrained="openai")
    assert isinstance(err, RuntimeError) and isinstance(err, UnsupportedError)
    assert "pretrained='openai' does not apply to it" in str(err)
    cards = [clipzoo.register(architecture="clip", publisher=p, id="twin-compat", path=path) for p in ("pa", "pb")]
    try:
        err = _raised(clip.load, "twin-compat", device="cpu")
    finally:
        for card in cards:
            clipzoo.REGISTRY.unregister(card.alias)
    assert isinstance(_raised(openai_clip.load, "twin-compat", device="cpu"), RuntimeError)
    assert isinstance(err, RuntimeError) and isinstance(err, AmbiguousModelError)
    assert str(err).startswith("model spec 'twin-compat' matches 2 models")


@pytest.fixture
def http_files():
    """A server on 127.0.0.1 serving ``files[path]`` (with its Content-Length)."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            data = files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", files
    server.shutdown()
    server.server_close()


def test_download_checksum_mismatch_is_a_runtime_error_as_in_openai(http_files, tmp_path):
    base, files = http_files
    path = "/" + "a" * 64 + "/ViT-B-32.pt"  # OpenAI's URL layout: the SHA-256 is the folder
    files[path] = b"not the model"
    ref = _raised(openai_clip.clip._download, base + path, str(tmp_path / "openai"))
    err = _raised(clip._download, base + path, str(tmp_path / "shim"))
    assert isinstance(ref, RuntimeError) and "SHA256 checksum does not not match" in str(ref)
    assert isinstance(err, RuntimeError) and isinstance(err, DownloadError), type(err).__mro__
    assert str(err).startswith(f"checksum mismatch for {base + path}: expected sha256 {'a' * 64}, got ")
    assert not list((tmp_path / "shim").iterdir())  # nothing kept


# --------------------------------------------------------------------------- finding 6: mmc
@pytest.fixture(scope="module")
def mmc_card(tiny_files):
    card = clipzoo.register(architecture="clip", publisher="mmcswitch", id="tiny-openai",
                            path=str(tiny_files["openai_state_dict"]))
    yield card
    clipzoo.REGISTRY.unregister(card.alias)


def test_mmc_loader_gives_mmcs_perceptor_api(mmc_card, tiny_files, pil_images):
    """``Loader.load()`` lacked project_text / project_image / supports_* / modes. Held to mmc's OpenAI loader
    (mmc/loaders/openaicliploader.py): ``projector=model.encode_text, preprocessor=clip.tokenize`` and
    ``projector=model.encode_image, preprocessor=preprocess`` + a batch axis, with openai's clip on the file."""
    perceptor = quiet(mmc.REGISTRY.find(publisher="mmcswitch", id="tiny-openai")[0].load)
    model, preprocess = quiet(openai_clip.load, str(tiny_files["openai_state_dict"]), device="cpu", jit=False)
    assert isinstance(perceptor, Comparator) and isinstance(perceptor, mmc.MultiModalComparator)
    assert perceptor.supports_text and perceptor.supports_image and not perceptor.supports_audio
    assert sorted(perceptor.modes) == ["image", "text"]
    assert set(perceptor.modes["text"]) == {"modality_obj", "projector", "preprocessor", "postprocessor"}
    with torch.no_grad():
        text = perceptor.project_text("a red circle")
        assert text.shape == (1, 32)
        assert maxdiff(text, model.encode_text(openai_clip.tokenize("a red circle"))) <= 1e-5
        image = perceptor.project_image(pil_images[0])
        assert maxdiff(image, model.encode_image(preprocess(pil_images[0]).unsqueeze(0))) <= 1e-5
        tokens = perceptor.modes["text"]["preprocessor"](TEXTS[:1])
        assert torch.equal(perceptor.project_text(tokens, preprocess=False), perceptor.project_text(TEXTS[0]))
    with pytest.raises(UnsupportedError, match=r"has no audio modality \(it has: image, text\)"):
        perceptor.project_audio(np.zeros(16000))
    again = pickle.loads(pickle.dumps(perceptor))
    assert type(again) is type(perceptor) and torch.equal(again.project_text("a red circle"), text)
    assert type(perceptor).__name__ == "OpenClipComparator"  # still the Comparator it was


def test_mmc_ez_clip_is_openais_api_over_every_model(mmc_card, pil_images):
    """mmc's README entry point, ``from mmc.ez.CLIP import clip`` (was missing): OpenAI's names and mmc aliases."""
    from clipzoo.compat.mmc.ez.CLIP import clip as ez_clip

    assert ez_clip is clip
    assert ez_clip.available_models()[:9] == OPENAI_NAMES and mmc_card.alias in ez_clip.available_models()
    model, preprocess = quiet(ez_clip.load, mmc_card.alias, "cpu")
    with torch.no_grad():
        logits, _ = model(preprocess(pil_images[0]).unsqueeze(0), ez_clip.tokenize(["a cat", "a dog"]))
    assert logits.shape == (1, 2)


# --------------------------------------------------------------------------- findings 4 and 5: open_clip_jax
def test_open_clip_jax_clip_takes_the_originals_parameter_names():
    """open_clip_jax's ``CLIP.__call__(self, image_input, text_input)``, called by name in its main.py:
    ``model.init(rngs=…, image_input=…, text_input=…)`` raised TypeError (the parameters were images, tokens)."""
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    import inspect

    import jax
    import jax.numpy as jnp

    from clipzoo.compat.open_clip_jax import create_model

    model = create_model("vit-eps-patch32")
    assert list(inspect.signature(type(model).__call__).parameters) == ["self", "image_input", "text_input"]
    images, tokens = jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 77), dtype=jnp.int32)
    variables = model.init(rngs=jax.random.PRNGKey(0), image_input=images, text_input=tokens)
    by_name = model.apply(variables, image_input=images, text_input=tokens)
    by_position = model.apply(variables, images, tokens)
    assert all(np.array_equal(a, b) for a, b in zip(by_name, by_position))


def _peak_bytes(fn, *args):
    tracemalloc.start()
    try:
        out = fn(*args)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_open_clip_jax_resize_of_a_thin_image_is_bounded():
    """A 1 × 300 picture took a 224·300 × 300 × 3 float32 intermediate (242 MB; N² in the width): the shrinking
    axis goes first now, and a picture longer than 32 : 1 keeps its central part as every clipzoo decode does."""
    pytest.importorskip("jax")
    from clipzoo.compat.open_clip_jax.clip import image_transforms as T

    thin = np.random.default_rng(0).integers(0, 255, (1, 300, 3), dtype=np.uint8)
    out, peak = _peak_bytes(T.resize_smallest_edge, thin)
    assert out.shape == (224 * 32, 224, 3) and peak < 32 * 2**20, peak  # the quirk's 224·32 × 224, 19 MB
    left = (300 - 32) // 2
    assert np.array_equal(out, T.resize_smallest_edge(thin[:, left:left + 32]))
    resized, peak = _peak_bytes(T.resize, thin, (672, 224))  # no crop in resize itself: only the order
    assert resized.shape == (672, 224, 3) and peak < 4 * 2**20, peak
    encoded = Image.fromarray(thin)
    transform = T.create_image_transforms(train=False, input_format="image", do_batch_transforms=False)
    pixels, peak = _peak_bytes(transform, encoded)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32 and peak < 48 * 2**20, peak


def test_open_clip_jax_resize_order_keeps_tensorflows_values():
    """Within 32 : 1 the output is TensorFlow's ``tf.image.resize(…, 'bicubic', antialias=True)`` — here
    ``jax.image.resize``, a port of it — whichever axis goes first."""
    jax = pytest.importorskip("jax")
    from clipzoo.compat.open_clip_jax.clip import image_transforms as T

    rng = np.random.default_rng(1)
    for h, w in [(4, 100), (100, 4), (30, 7)]:
        image = rng.integers(0, 255, (h, w, 3)).astype(np.float32)
        out = T.resize_smallest_edge(image)
        via_jax = jax.image.resize(image, out.shape, "bicubic", antialias=True)
        assert np.abs(np.asarray(via_jax) - out).max() <= 1e-2, (h, w)
