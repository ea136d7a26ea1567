"""issue 20 §6: the drop-ins under the original module names, checked the way the originals check themselves.

Each check runs in a subprocess that aliases the shim (``sys.modules["open_clip"]`` / ``["clip"]``), so
the aliasing never leaks into other tests:

- open_clip's ``tests/test_inference.py``: the model list it parametrises over, ``create_model_and_transforms``
  with ``pretrained_hf=False``, text / image features and ``forward`` (tuple and ``output_dict``) — equal,
  bit for bit, to open_clip's own on the same config and seed, and for a model only clipzoo loads;
- openai's ``tests/test_consistency.py``: ``clip.load(jit=True)`` against ``clip.load(jit=False)``;
- CLIP_benchmark's CLI (``clip_benchmark eval --model_type open_clip``) on a tiny local data set, through
  the shim, against CLIP_benchmark's own evaluation of open_clip's model on the same weights.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import open_clip as real_open_clip
import pytest
import torch
from PIL import Image

from clipzoo.compat import open_clip as shim
from clipzoo.testing import tiny

HEADER = """
import json, os, sys, traceback, warnings
warnings.simplefilter("ignore")
import clipzoo.compat.open_clip as shim
sys.modules["open_clip"] = shim   # the alias, before the registry has loaded
RESULTS = {}
"""
PART = """
def part_{name}():
{body}
try:
    RESULTS[{name!r}] = part_{name}()
except BaseException:
    RESULTS[{name!r}] = {{"error": traceback.format_exc()[-4000:]}}
"""
FOOTER = """
print(json.dumps(RESULTS))
"""


def _script(parts: dict[str, str]) -> str:
    """One interpreter runs every part in order (its start-up is most of the time); each part returns a
    JSON-able dict, or its traceback is recorded, so one failing part does not hide the others."""
    body = [PART.format(name=name, body=textwrap.indent(textwrap.dedent(code).strip(), "    "))
            for name, code in parts.items()]
    return HEADER + "".join(body) + FOOTER


def _run(parts: dict[str, str], cwd, timeout: int = 300) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", _script(parts)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(cwd))
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _part(aliased: dict, name: str) -> dict:
    out = aliased[name]
    assert "error" not in out, out["error"]
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_files):
    root = tmp_path_factory.mktemp("dropin")
    cfg = root / "tiny-dropin.json"
    cfg.write_text(json.dumps(tiny.TINY_CONFIG))
    rng = np.random.default_rng(5)
    image = root / "CLIP.png"
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(image)
    cb_root = root / "imagenet-r"
    for wnid in ("n01443537", "n01484850", "n01494475"):  # three of imagenet-r's classes
        (cb_root / wnid).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (36, 30 + i, 3), dtype=np.uint8)).save(cb_root / wnid / f"{i}.png")
    classes, templates = root / "classes.json", root / "templates.json"
    classes.write_text(json.dumps({"imagenet-r": ["goldfish", "great white shark", "hammerhead"]}))
    templates.write_text(json.dumps({"imagenet-r": ["a photo of a {c}.", "a drawing of a {c}."]}))
    return {"root": root, "config": cfg, "image": image, "cb_root": cb_root, "classes": classes,
            "templates": templates, "jit": tiny_files["openai_jit"], "state_dict": tiny_files["openai_state_dict"],
            "open_clip_pt": tiny_files["open_clip_pt"]}


def _alias_part(files) -> str:
    return """
        import open_clip
        names = open_clip.list_models()
        pairs = open_clip.list_pretrained()
        import clip_benchmark.cli
        from clip_benchmark.models import open_clip as cb_open_clip
        import clipzoo
        return ({"is_shim": open_clip is shim, "names": names, "pairs": [list(p) for p in pairs],
                 "ref_names": shim.REAL.list_models(), "ref_pairs": [list(p) for p in shim.REAL.list_pretrained()],
                          "cb_uses_shim": cb_open_clip.open_clip is shim,
                          "registry": len(clipzoo.REGISTRY) > 0})
        """


def _submodules_part(files) -> str:
    return f"""
        import torch
        from open_clip.tokenizer import SimpleTokenizer, tokenize
        from open_clip.factory import create_model as plain_create_model
        from open_clip.pretrained import list_pretrained
        from open_clip import factory
        shim.install()
        from open_clip.factory import create_model, get_tokenizer
        from open_clip.pretrained import list_pretrained as installed_list_pretrained
        from open_clip.model import CLIP
        from open_clip.transform import image_transform_v2
        model = create_model({str(files["state_dict"])!r})
        tokens = get_tokenizer({str(files["state_dict"])!r})(["a diagram", "a cat"])
        with torch.no_grad():
            feats = model.encode_text(tokens)
        return ({{
            "tokenizer": SimpleTokenizer is shim.REAL.SimpleTokenizer and tokenize is shim.REAL.tokenize,
            "plain": plain_create_model is shim.REAL.factory.create_model and factory is shim.factory,
            "installed": create_model is shim.create_model and installed_list_pretrained is shim.list_pretrained,
            "same_listing": list_pretrained() == installed_list_pretrained(),
            "clip": type(model) is CLIP and CLIP is shim.REAL.CLIP,
            "tokens": tokens.tolist(), "feats": feats.tolist()}})
        """


def _inference_part(files) -> str:
    return f"""
        import random
        import numpy as np, torch
        import open_clip
        REAL = shim.REAL
        open_clip.add_model_config({str(files["config"])!r})
        models = {{m for m in open_clip.list_models() if not (open_clip.get_model_config(m) or {{}}).get("audio_cfg")}}
        ref_models = {{m for m in REAL.list_models() if not (REAL.get_model_config(m) or {{}}).get("audio_cfg")}}

        def seed_all(seed=0):
            random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)

        def run(lib, name, pretrained=None):
            seed_all()
            model, _, preprocess_val = lib.create_model_and_transforms(
                name, pretrained=pretrained, precision="fp32", force_quick_gelu=False, pretrained_hf=False)
            model.eval()
            tokenizer = lib.get_tokenizer(name if pretrained is None else {str(files["config"].stem)!r})
            g = torch.Generator().manual_seed(1)
            text = tokenizer(["a diagram", "a dog", "a cat on a mat with a hat"])
            image = torch.rand(2, 3, 32, 32, generator=g)
            with torch.no_grad():
                y_text, y_image = model.encode_text(text), model.encode_image(image)
                out = model(image, text)
                model.output_dict = True
                out_dict = model(image, text)
                model.output_dict = None
            same = all(bool((out_dict[k] == out[i]).all()) for i, k in
                       enumerate(["image_features", "text_features", "logit_scale"]))
            return y_text, y_image, same, type(model).__name__

        name = {str(files["config"].stem)!r}
        a, b = run(open_clip, name), run(REAL, name)
        c, d = run(open_clip, {str(files["open_clip_pt"])!r}), run(REAL, name, {str(files["open_clip_pt"])!r})
        return ({{
            "collected": sorted(models) == sorted(ref_models) and name in models,
            "random_init_equal": bool((a[0] == b[0]).all() and (a[1] == b[1]).all()),
            "dict_equal": a[2] and b[2] and c[2],
            "types": [a[3], b[3], c[3]],
            "clipzoo_route_maxdiff": max(float((c[0] - d[0]).abs().max()), float((c[1] - d[1]).abs().max()))}})
        """


def _consistency_part(files) -> str:
    return f"""
        import clipzoo.compat.clip as clip_shim
        sys.modules["clip"] = clip_shim
        import numpy as np, torch
        from PIL import Image
        import clip
        names = clip.available_models()
        probs = {{}}
        for model_name in [{str(files["jit"])!r}, {str(files["state_dict"])!r}]:
            jit_model, transform = clip.load(model_name, device="cpu", jit=True)
            py_model, _ = clip.load(model_name, device="cpu", jit=False)
            image = transform(Image.open({str(files["image"])!r})).unsqueeze(0)
            text = clip.tokenize(["a diagram", "a dog", "a cat"])
            with torch.no_grad():
                logits_per_image, _ = jit_model(image, text)
                jit_probs = logits_per_image.softmax(dim=-1).cpu().numpy()
                logits_per_image, _ = py_model(image, text)
                py_probs = logits_per_image.softmax(dim=-1).cpu().numpy()
            assert isinstance(jit_model, torch.jit.ScriptModule)
            assert np.allclose(jit_probs, py_probs, atol=0.01, rtol=0.1)
            probs[model_name] = [jit_probs.tolist(), py_probs.tolist()]
        return ({{"probs": probs, "names": names}})
        """


def _cli_part(files) -> str:
    return f"""
        import numpy as np, torch
        import clipzoo
        from clip_benchmark import cli
        from clip_benchmark.metrics import zeroshot_classification as zsc

        def accuracy(output, target, topk=(1,)):  # clip-benchmark 1.6.2's float(array) fails on NumPy >= 2.4
            pred = output.topk(max(topk), 1, True, True)[1].t()
            correct = pred.eq(target.view(1, -1).expand_as(pred))
            return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]

        zsc.accuracy = accuracy
        card = clipzoo.register(architecture="clip", publisher="tiny", id="dropin-cb",
                                path={str(files["open_clip_pt"])!r}, model_name={str(files["config"].stem)!r})
        shim.add_model_config({str(files["config"])!r})
        sys.argv = ["clip_benchmark", "eval", "--model_type", "open_clip", "--model", card.alias,
                    "--pretrained", "tiny", "--dataset", "imagenet-r", "--dataset_root", {str(files["cb_root"])!r},
                    "--custom_classname_file", {str(files["classes"])!r},
                    "--custom_template_file", {str(files["templates"])!r},
                    "--output", "result.json", "--no_amp", "--num_workers", "0", "--batch_size", "4", "--quiet"]
        cli.main()
        result = json.load(open("result.json"))

        from clip_benchmark.datasets.builder import build_dataset
        model, _, transform = shim.REAL.create_model_and_transforms({str(files["config"].stem)!r},
                                                                   pretrained={str(files["open_clip_pt"])!r})
        ds = build_dataset("imagenet-r", root={str(files["cb_root"])!r}, transform=transform, split="test",
                           custom_classname_file={str(files["classes"])!r},
                           custom_template_file={str(files["templates"])!r})
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)
        ref = zsc.evaluate(model.eval(), loader, shim.REAL.get_tokenizer({str(files["config"].stem)!r}), ds.classes,
                           ds.templates, device="cpu", amp=False)
        return ({{"metrics": result["metrics"], "model": result["model"], "ref": ref}})
        """


@pytest.fixture(scope="module")
def aliased(files):
    """Every part below, in one interpreter that aliased the shim before anything else."""
    return _run({"alias": _alias_part(files), "submodules": _submodules_part(files),
                 "inference": _inference_part(files), "consistency": _consistency_part(files),
                 "cli": _cli_part(files)}, files["root"])


# --------------------------------------------------------------------------- §6 item 1
def test_alias_before_the_registry_loads_has_no_recursion(aliased):
    """``sys.modules['open_clip'] = clipzoo.compat.open_clip`` first thing: ``list_models()`` and
    ``import clip_benchmark.cli`` work (a RecursionError before)."""
    out = _part(aliased, "alias")
    assert out["is_shim"] and out["cb_uses_shim"] and out["registry"]
    assert out["names"] == out["ref_names"] and len(out["names"]) > 100
    assert out["pairs"] == out["ref_pairs"]


# --------------------------------------------------------------------------- §6 item 2
def test_compat_open_clip_is_a_package_with_open_clips_submodules():
    real_subs = {name for name in dir(real_open_clip)
                 if getattr(sys.modules.get(f"open_clip.{name}"), "__name__", "") == f"open_clip.{name}"}
    real_subs |= {"push_to_hf_hub"}  # open_clip's package attribute of that name is the function
    assert {"tokenizer", "factory", "pretrained", "transform", "model", "loss", "constants"} <= real_subs
    for name in real_subs:
        ours = sys.modules[f"clipzoo.compat.open_clip.{name}"]
        real = sys.modules[f"open_clip.{name}"]
        public = [k for k in vars(real) if not k.startswith("_")]
        missing = [k for k in public if not hasattr(ours, k)]
        assert not missing, (name, missing)
    assert shim.factory.create_model is shim.create_model and shim.factory.list_models is shim.list_models
    assert shim.pretrained.list_pretrained is shim.list_pretrained
    assert shim.tokenizer.SimpleTokenizer is real_open_clip.SimpleTokenizer
    assert shim.tokenizer.tokenize is real_open_clip.tokenize
    assert shim.model.CLIP is real_open_clip.CLIP and shim.loss.ClipLoss is real_open_clip.ClipLoss
    assert shim.constants.OPENAI_DATASET_MEAN == real_open_clip.OPENAI_DATASET_MEAN
    assert shim.transform.image_transform_v2 is real_open_clip.transform.image_transform_v2
    assert shim.push_to_hf_hub is real_open_clip.push_to_hf_hub  # the function, as open_clip's attribute


def test_submodule_imports_work_against_the_shim(aliased, files):
    """``from open_clip.tokenizer import …`` with the alias; with ``install()`` every submodule import is
    the shim's (``from open_clip.factory import create_model`` loads what only clipzoo can)."""
    out = _part(aliased, "submodules")
    assert out["tokenizer"] and out["plain"] and out["installed"] and out["same_listing"] and out["clip"]
    ref = real_open_clip.load_openai_model(str(files["state_dict"]), precision="fp32", device="cpu").eval()
    tokens = real_open_clip.tokenize(["a diagram", "a cat"])
    assert out["tokens"] == tokens.tolist()
    with torch.no_grad():
        assert float((torch.tensor(out["feats"]) - ref.encode_text(tokens)).abs().max()) <= 1e-5


# --------------------------------------------------------------------------- §6 item 5
def test_open_clip_test_inference_style_checks_pass_against_the_shim(aliased, files):
    """As open_clip's ``tests/test_inference.py``: the parametrised model list, then for each model
    ``create_model_and_transforms(name, pretrained=None, precision='fp32', pretrained_hf=False)``, text and
    image outputs equal to open_clip's own (same config, same seed), ``forward`` and ``output_dict``."""
    out = _part(aliased, "inference")
    assert out["collected"] and out["random_init_equal"] and out["dict_equal"]
    assert out["types"] == ["CLIP", "CLIP", "CLIP"]
    assert out["clipzoo_route_maxdiff"] <= 1e-5


def test_openai_test_consistency_style_checks_pass_against_the_shim(aliased, files):
    """As openai's ``tests/test_consistency.py`` with ``sys.modules['clip']`` = the shim: for the model
    files here, the JIT and non-JIT models give the same probabilities (and openai's own ``clip`` agrees)."""
    out = _part(aliased, "consistency")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip as openai_clip

        ref, pre = openai_clip.load(str(files["jit"]), device="cpu", jit=True)
    image = pre(Image.open(files["image"])).unsqueeze(0)
    with torch.no_grad():
        ref_probs = ref(image, openai_clip.tokenize(["a diagram", "a dog", "a cat"]))[0].softmax(dim=-1).numpy()
    for jit_probs, py_probs in out["probs"].values():
        assert np.abs(np.array(jit_probs) - np.array(py_probs)).max() <= 1e-5
        assert np.abs(np.array(jit_probs) - ref_probs).max() <= 1e-5
    assert out["names"][:9] == openai_clip.available_models()


def test_clip_benchmark_cli_runs_against_the_shim(aliased):
    """``clip_benchmark eval --model_type open_clip`` with the alias, on a tiny local imagenet-r: the model
    (a clipzoo registry alias) resolves to the shim; the metrics equal CLIP_benchmark's own evaluation of
    open_clip's model on the same weights."""
    out = _part(aliased, "cli")
    assert out["model"].startswith("[clip - tiny - dropin-cb]")
    for key in ("acc1", "mean_per_class_recall"):
        assert out["metrics"][key] == pytest.approx(out["ref"][key], abs=1e-12)
    assert 0.0 <= out["metrics"]["acc1"] <= 1.0


# --------------------------------------------------------------------------- §4's default for the drop-ins
def test_long_text_default_openai_clip_raises_open_clip_truncates(tiny_files):
    """issue 20 §4: the default stays what each drop-in API promises — openai's ``clip.tokenize`` raises
    (its exact RuntimeError), open_clip's tokenizers truncate (the same ids as open_clip's)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip as openai_clip

    from clipzoo.compat import clip

    long_text = "a photo of a cat sitting on a red mat " * 12
    with pytest.raises(RuntimeError) as ours:
        clip.tokenize([long_text])
    with pytest.raises(RuntimeError) as theirs:
        openai_clip.tokenize([long_text])
    assert str(ours.value) == str(theirs.value) == f"Input {long_text} is too long for context length 77"
    assert torch.equal(clip.tokenize([long_text], truncate=True), openai_clip.tokenize([long_text], truncate=True))

    expected = real_open_clip.tokenize([long_text])
    assert expected[0, -1].item() == 49407  # truncated, EOT kept last
    assert shim.tokenize([long_text]).tolist() == expected.tolist()
    assert shim.get_tokenizer("ViT-B-32")([long_text]).tolist() == expected.tolist()
    # a model only clipzoo loads: its open_clip-style tokenizer truncates too
    assert shim.get_tokenizer(str(tiny_files["openai_state_dict"]))([long_text]).tolist() == expected.tolist()
