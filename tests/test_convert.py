"""clipzoo convert to open_clip / openai / safetensors, and the parity report against open_clip and openai."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import clipzoo
from clipzoo.cli import app
from clipzoo.convert import convert
from clipzoo.convert.parity import difference, parity
from clipzoo.errors import ClipzooError, UnsupportedError

TEXTS = ["a red circle", "a blue square", "Un café!"]


def _outputs(m, images):
    with torch.no_grad():
        return m.encode_image(images), m.encode_text(TEXTS)


def run(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def test_pickle_to_safetensors_loads_alone_with_equal_outputs(tiny_files, images, tmp_path):
    from safetensors import safe_open

    src = tiny_files["open_clip_pt"]
    dst = convert(src, tmp_path / "m.safetensors", "safetensors")
    with safe_open(str(dst), "pt") as f:
        cfg = json.loads(f.metadata()["open_clip_config"])
    assert cfg["model_cfg"]["vision_cfg"]["width"] == 64 and cfg["model_cfg"]["quick_gelu"] is True
    a, b = _outputs(clipzoo.load(str(src)), images), _outputs(clipzoo.load(str(dst)), images)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_open_clip_folder_loads_in_open_clip_with_identical_weights(tiny_files, images, tmp_path):
    import open_clip

    src = tiny_files["openai_state_dict"]
    ours = clipzoo.load(str(src))
    folder = convert(src, tmp_path / "oc", "open_clip")
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    for k, v in model.state_dict().items():
        assert torch.equal(v, ours.model.state_dict()[k].float()), k
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True)
    assert torch.allclose(img, ours.encode_image(images), atol=1e-6)
    # and a bare state dict file that open_clip reads with the config name given
    sd_file = convert(src, tmp_path / "oc.pt", "open_clip")
    assert set(torch.load(sd_file, weights_only=True)) == set(ours.model.state_dict())


def test_openai_file_loads_in_openai_clip(tiny_files, images, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip

    dst = convert(tiny_files["open_clip_safetensors"], tmp_path / "m.pt", "openai")
    model, preprocess = clip.load(str(dst), device="cpu", jit=False)
    model = model.float().eval()
    ours = clipzoo.load(str(tiny_files["open_clip_safetensors"]))
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(i) for i in images])).float()
        txt = model.encode_text(clip.tokenize(TEXTS)).float()
    a = _outputs(ours, images)
    # OpenAI's build_model rounds the weights through fp16 (convert_weights): compare at fp16 precision
    assert difference(torch.nn.functional.normalize(img, dim=-1), a[0])["max_abs"] < 2e-3
    assert difference(torch.nn.functional.normalize(txt, dim=-1), a[1])["max_abs"] < 2e-3


def test_openai_refuses_what_its_code_cannot_build(tmp_path):
    from safetensors.torch import save_file

    from clipzoo.testing.tiny import TINY_CONFIG, state_dict

    cfg = {**TINY_CONFIG, "quick_gelu": False}
    save_file({k: v.contiguous() for k, v in state_dict(0, config=cfg).items()}, str(tmp_path / "gelu.safetensors"),
              metadata={"format": "pt", "open_clip_config": json.dumps({"model_cfg": cfg})})
    with pytest.raises(UnsupportedError, match=r"cannot be written in OpenAI's format: it uses GELU \(OpenAI's code "
                                               r"always builds QuickGELU\)\. Convert it to open_clip, hf or "
                                               r"safetensors instead"):
        convert(tmp_path / "gelu.safetensors", tmp_path / "x.pt", "openai")
    assert not (tmp_path / "x.pt").exists()
    # heads 32 wide: OpenAI's code (and its reader) infer width // 64 heads — image features came back 0.19 off
    cfg = {**TINY_CONFIG, "quick_gelu": True, "vision_cfg": {**TINY_CONFIG["vision_cfg"], "head_width": 32}}
    save_file({k: v.contiguous() for k, v in state_dict(0, config=cfg).items()}, str(tmp_path / "hw.safetensors"),
              metadata={"format": "pt", "open_clip_config": json.dumps({"model_cfg": cfg})})
    with pytest.raises(UnsupportedError, match=r"cannot be written in OpenAI's format: its image tower's heads are "
                                               r"32 wide where OpenAI's code infers 64\."):
        convert(tmp_path / "hw.safetensors", tmp_path / "x.pt", "openai")


def test_parity_tables_against_open_clip_and_openai(tiny_files):
    for spec, against in [(tiny_files["open_clip_safetensors"], "open_clip"), (tiny_files["openai_jit"], "openai"),
                          (tiny_files["openai_state_dict"], "openai")]:
        report = parity(str(spec), against)
        assert set(report.rows) == {"image features", "text features", "probabilities"}
        assert report.ok and report.max_abs < 1e-6, (spec, report.rows)
        assert report.n_images == 4 and report.n_texts == 5


def test_parity_cli_table_json_and_exit_status(tiny_files, image_files):
    model = tiny_files["open_clip_safetensors"]
    code, stdout, stderr = run("parity", model, "--against", "open_clip", "--image", image_files[0], "--text", "a cat",
                               "--text", "a dog")
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == "| output | mean abs diff | max abs diff | mean rel diff | max rel diff |"
    assert [ln.split(" | ")[0] for ln in lines[2:5]] == ["| image features", "| text features", "| probabilities"]
    assert "on the same 1 preprocessed images and 2 tokenized texts" in stdout and "within tolerance 0.0001" in stdout
    assert "| preprocessed pixels (each side's own) | 0.00e+00 | 0.00e+00 |" in stdout
    assert "token ids (each side's own tokenizer, padding aside): 0 of 2 texts differ" in stdout
    code, stdout, stderr = run("parity", model, "--against", "open_clip", "--tol", "0", "--json")
    report = json.loads(stdout)
    worst = max(r["max_abs"] for r in report["rows"].values())
    assert report["ok"] == (worst == 0) and code == (0 if worst == 0 else 1)


@pytest.mark.parametrize("args, message", [
    (["convert", "MODEL", "OUT/x", "--to", "keras"], "error: unknown format 'keras' for --to: choose from open_clip, "
                                                      "hf, openai, safetensors, onnx"),
    (["convert", "MODEL", "OUT/x.bin", "--to", "openai"], "error: an OpenAI checkpoint is one .pt file"),
    (["convert", "MODEL", "MODEL", "--to", "safetensors"], "error: MODEL already exists: choose another destination "
                                                            "or pass --overwrite"),
    (["parity", "MODEL", "--against", "jax"], "error: unknown implementation 'jax' for --against"),
    (["convert", "MODEL", "OUT/x", "--to", "hf", "--vit-layout", "standard"],
     "error: --vit-layout applies to --to onnx, not --to hf"),
    (["convert", "MODEL", "OUT/x", "--to", "onnx", "--vit-layout", "fused"],
     "error: unknown ViT layout 'fused'; use one of plain, contrib, standard"),
])
def test_convert_errors_are_one_line(tiny_files, tmp_path, args, message):
    model = str(tiny_files["open_clip_safetensors"])
    args = [a.replace("MODEL", model).replace("OUT", str(tmp_path)) for a in args]
    code, stdout, stderr = run(*args)
    assert code == 2 and stderr.startswith(message.replace("MODEL", model)), stderr
    assert len(stderr.strip().splitlines()) == 1


def test_overwrite_never_destroys_the_source_and_replaces_a_file_or_link_itself(tiny_files, images, tmp_path):
    import shutil

    models = tmp_path / "models"
    hub = shutil.copytree(tiny_files["open_clip_hub"], models / "hub")
    single = shutil.copy(tiny_files["open_clip_safetensors"], models / "m.safetensors")
    cache = tmp_path / "cache"
    cache.mkdir()
    before = {p: p.read_bytes() for p in models.rglob("*") if p.is_file()}
    cases = [(hub, hub, "onnx", hub), (hub, models, "onnx", hub),
             (hub, hub / "open_clip_model.safetensors", "safetensors", hub), (single, single, "safetensors", single),
             ("clipzoo/tiny-shapes", cache, "onnx", None)]  # a catalogued model's files in the cache
    for src, dst, to, shown in cases:
        code, _, stderr = run("convert", src, dst, "--to", to, "--overwrite", "--cache-dir", cache)
        shown = shown or next((cache / "embedded").iterdir())
        assert code == 2 and stderr == (f"error: {dst} overlaps the model being converted ({shown}): writing there "
                                        "would destroy it; choose another destination\n"), stderr
    assert {p: p.read_bytes() for p in models.rglob("*") if p.is_file()} == before
    assert (next((cache / "embedded").iterdir()) / "open_clip_model.safetensors").is_file()

    folder_here = tmp_path / "was-a-file"  # a file where the ONNX folder goes: replaced by it
    folder_here.write_text("old")
    assert run("convert", single, folder_here, "--to", "onnx", "--overwrite")[0] == 0
    assert sorted(p.name for p in folder_here.iterdir()) == ["clipzoo_onnx.json", "image.onnx", "text.onnx"]
    precious = tmp_path / "precious.safetensors"  # a link at DST is replaced itself; its target is not written
    precious.write_bytes(b"keep me")
    link = tmp_path / "link.safetensors"
    link.symlink_to(precious)
    assert run("convert", single, link, "--to", "safetensors", "--overwrite")[0] == 0
    assert not link.is_symlink() and precious.read_bytes() == b"keep me"
    assert torch.equal(_outputs(clipzoo.load(str(link)), images)[1], _outputs(clipzoo.load(str(single)), images)[1])


def test_overwrite_replaces_model_folders_only(tiny_files, tmp_path, monkeypatch):
    """DST `sub/..` with --overwrite removed everything in the current folder, then failed; `.` was a traceback;
    --to jax replaced DST-stem.config.json without --overwrite."""
    single = str(tiny_files["open_clip_safetensors"])
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for dst in ("sub/..", "."):
        code, _, stderr = run("convert", single, dst, "--to", "onnx", "--overwrite")
        assert code == 2 and stderr == (f"error: {work} is the current folder or holds it: writing there would "
                                        "remove it; choose another destination\n"), stderr
    code, _, stderr = run("convert", single, work / "sub" / "..", "--to", "hf", "--overwrite")
    assert code == 2 and "is the current folder or holds it" in stderr
    assert (work / "notes.txt").read_text() == "mine" and (work / "sub").is_dir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("keep")
    code, _, stderr = run("convert", single, other, "--to", "onnx", "--overwrite")
    assert code == 2 and stderr == (f"error: {other} is a folder of other files (a.txt), not a model folder: "
                                    "--overwrite would remove them; choose another destination\n"), stderr
    assert (other / "a.txt").read_text() == "keep"
    assert run("convert", single, tmp_path / "ox", "--to", "onnx")[0] == 0  # a model folder: replaced
    assert run("convert", single, tmp_path / "ox", "--to", "onnx", "--overwrite")[0] == 0
    pytest.importorskip("flax")
    (tmp_path / "p.config.json").write_text("{}")
    code, _, stderr = run("convert", single, tmp_path / "p.pkl", "--to", "jax")
    assert code == 2 and stderr.startswith(f"error: {tmp_path / 'p.config.json'} already exists"), stderr
    assert (tmp_path / "p.config.json").read_text() == "{}"


def test_an_onnx_export_as_source_names_itself_and_what_it_was_exported_from(tiny_files, tmp_path):
    model = str(tiny_files["open_clip_safetensors"])
    assert run("convert", model, tmp_path / "ox", "--to", "onnx")[0] == 0
    code, _, stderr = run("convert", tmp_path / "ox", tmp_path / "again", "--to", "onnx")
    assert code == 2 and stderr == (f"error: {tmp_path / 'ox'} is already an ONNX export (of [clip - local - "
                                    f"{model}]); export the PyTorch model it came from\n"), stderr
    assert not (tmp_path / "again").exists()


def test_interrupted_conversion_leaves_nothing(tiny_files, tmp_path, monkeypatch):
    import clipzoo.convert.targets as mod

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "_write_safetensors", boom)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_files["open_clip_pt"], tmp_path / "m.safetensors", "safetensors")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ClipzooError, match="unknown target format"):
        convert(tiny_files["open_clip_pt"], tmp_path / "m", "tflite")


def test_cli_converts_to_hf_and_onnx_and_parity_holds(tiny_files, tmp_path):
    from transformers import CLIPModel

    src = tiny_files["openai_state_dict"]
    code, stdout, stderr = run("convert", src, tmp_path / "hf", "--to", "hf")
    assert code == 0 and stderr.strip().endswith(f"wrote {tmp_path / 'hf'} (hf)"), stderr
    assert isinstance(CLIPModel.from_pretrained(tmp_path / "hf"), CLIPModel)
    code, stdout, stderr = run("convert", src, tmp_path / "onnx", "--to", "onnx")
    assert code == 0, stderr
    assert clipzoo.load(str(tmp_path / "onnx")).card.backend == "onnx"
    for against, tol in (("hf", 1e-5), ("onnx", 1e-4)):
        code, stdout, stderr = run("parity", src, "--against", against, "--tol", tol, "--json")
        report = json.loads(stdout)
        assert code == 0 and report["ok"], (against, report)
        assert max(r["max_abs"] for r in report["rows"].values()) <= tol
    assert report["preprocessing"]["token ids"]["differing"] == 0  # HF's CLIPTokenizer = OpenAI's BPE


def test_models_without_an_hf_form_are_refused(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
    model = open_clip.CLIP(**cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "rn.safetensors"),
              metadata={"format": "pt", "open_clip_config": json.dumps({"model_cfg": cfg})})
    code, stdout, stderr = run("convert", tmp_path / "rn.safetensors", tmp_path / "hf", "--to", "hf")
    assert code == 2 and "ModifiedResNet" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "hf").exists()
