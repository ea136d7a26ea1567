"""Issue 18 §3: ``clipzoo convert … --to jax`` / ``--from jax``, ``clipzoo parity MODEL --engines torch,jax``
and their one-line errors (tiny ConvNeXt, tiny ViT, OpenAI-layout ViT; fp32 on CPU)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("timm")

import clipzoo  # noqa: E402
from clipzoo.backends.jax import read_params  # noqa: E402
from clipzoo.cli import app  # noqa: E402
from clipzoo.convert.jax import open_clip_config, open_clip_to_jax, write_params  # noqa: E402
from clipzoo.models.jax_config import flatten, list_configs  # noqa: E402
from clipzoo.testing.tiny import tiny_model  # noqa: E402
from clipzoo.testing.tiny_convnext import tiny_convnext_model, write_convnext_hub_folder  # noqa: E402

TEXTS = ["a red circle", "a blue square", "two dogs"]


def run(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def _same_tree(a: dict, b: dict) -> bool:
    fa, fb = flatten(a), flatten(b)
    return set(fa) == set(fb) and all(np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)


def test_convnext_converts_to_jax_and_back_with_parity(tmp_path):
    """open_clip ConvNeXt folder -> params.pkl (+ config file) -> parity torch vs jax ≤ 1e-5 -> open_clip again."""
    folder = write_convnext_hub_folder(tmp_path / "cnx", seed=1, proj="mlp")
    code, _, err = run("convert", folder, "--to", "jax", "-o", tmp_path / "params.pkl")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnx", "params.config.json", "params.pkl"]
    source = tiny_convnext_model(1, "mlp").state_dict()
    recorded = json.loads((tmp_path / "params.config.json").read_text())
    assert recorded["image_size"] == 64 and recorded["context_length"] == 77
    assert recorded["model"]["image_model"] == {"depths": [1, 1, 2, 1], "out_dims": [8, 16, 24, 32],
                                                "head_hidden_dim": 64, "timm_model_name": "clipzoo_tiny_convnext"}
    assert _same_tree(read_params(tmp_path / "params.pkl")["params"],
                      open_clip_to_jax(source, recorded["model"])["params"])

    code, out, err = run("parity", tmp_path / "params.pkl", "--engines", "torch,jax", "--tol", "1e-5", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["engines"] == ["torch", "jax"] and report["ok"] is True
    assert set(report["rows"]) == {"image_features", "text_features", "probs"}
    for row in report["rows"].values():
        assert set(row) == {"max_abs", "mean_abs", "mean_rel"}
        assert 0 < row["max_abs"] <= 1e-5 and 0 < row["mean_abs"] <= row["max_abs"] and row["mean_rel"] < 1e-3

    # back to open_clip: the config file names the model, so --model is not needed; the weights are the source's
    code, _, err = run("convert", tmp_path / "params.pkl", "--from", "jax", "--to", "open_clip",
                       "-o", tmp_path / "back.safetensors")
    assert code == 0, err
    from safetensors import safe_open
    from safetensors.torch import load_file

    back = load_file(str(tmp_path / "back.safetensors"))
    assert set(back) == set(source) - {"attn_mask"} and all(torch.equal(back[k], source[k]) for k in back)
    with safe_open(str(tmp_path / "back.safetensors"), "pt") as f:
        cfg = json.loads(f.metadata()["open_clip_config"])["model_cfg"]
    assert cfg["vision_cfg"]["timm_model_name"] == "clipzoo_tiny_convnext" and cfg["vision_cfg"]["timm_proj"] == "mlp"


def test_openai_vit_converts_to_jax(tiny_files, images, tmp_path):
    """OpenAI's TorchScript archive and state dict -> params.pkl (the same tree from both); clipzoo.load of it
    gives the OpenAI model's features and probabilities within 1e-5."""
    for fmt in ("openai_jit", "openai_state_dict"):
        code, _, err = run("convert", tiny_files[fmt], "--to", "jax", "-o", tmp_path / f"{fmt}.pkl")
        assert code == 0, err
    assert _same_tree(read_params(tmp_path / "openai_jit.pkl"), read_params(tmp_path / "openai_state_dict.pkl"))
    model = json.loads((tmp_path / "openai_jit.config.json").read_text())["model"]
    assert model["act"] == "quick_gelu" and model["image_model"]["patch_size"] == 8
    torch_side, jax_side = clipzoo.load(str(tiny_files["openai_jit"])), clipzoo.load(str(tmp_path / "openai_jit.pkl"))
    assert jax_side.card.backend == "jax" and jax_side.image_size == 32
    with torch.no_grad():
        a = [torch_side.encode_image(images), torch_side.encode_text(TEXTS)]
        b = [jax_side.encode_image(images), jax_side.encode_text(TEXTS)]
    a.append(torch_side.probabilities(torch_side.similarity(*a)))
    b.append(jax_side.probabilities(jax_side.similarity(*b)))
    for x, y in zip(a, b):
        assert (x.float() - y).abs().max() <= 1e-5
    assert a[2].max() > 0.34  # not three uniform columns


def test_named_jax_params_convert_to_open_clip(tmp_path):
    """`clipzoo convert params.pkl --from jax --model vit-eps-patch32 --to open_clip -o model.safetensors`."""
    model = tiny_model(3, open_clip_config("vit-eps-patch32", 64, 77))
    write_params(tmp_path / "params.pkl", open_clip_to_jax(model.state_dict(), "vit-eps-patch32"))
    code, _, err = run("convert", tmp_path / "params.pkl", "--from", "jax", "--model", "vit-eps-patch32",
                       "--to", "open_clip", "-o", tmp_path / "model.safetensors")
    assert (code, err.strip()) == (0, f"wrote {tmp_path / 'model.safetensors'} (open_clip)")
    loaded = clipzoo.load(str(tmp_path / "model.safetensors"))
    assert loaded.card.backend == "open_clip"
    sd = model.state_dict()
    assert all(torch.equal(v.float(), sd[k]) for k, v in loaded.model.state_dict().items() if k in sd)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_text(loaded.tokenize(TEXTS)), dim=-1)
    assert (loaded.encode_text(TEXTS) - ref).abs().max() <= 1e-6


def test_cli_errors_are_one_line(tmp_path):
    model = tiny_model(3, open_clip_config("vit-eps-patch32", 64, 77))
    pkl = tmp_path / "params.pkl"
    write_params(pkl, open_clip_to_jax(model.state_dict(), "vit-eps-patch32"))
    out = tmp_path / "m.safetensors"
    known = ", ".join(list_configs())
    assert "convnext-large-d" in known
    cases = {
        ("convert", pkl, "--from", "jax", "--model", "vit-giant", "--to", "open_clip", "-o", out):
            f"error: unknown JAX model config 'vit-giant'; use one of: {known}",
        ("convert", pkl, "--from", "jax", "--to", "open_clip", "-o", out):
            f"error: --from jax needs --model: name the JAX config of {pkl} (one of {known})",
        ("convert", pkl, "--from", "tf", "--model", "vit-eps-patch32", "--to", "open_clip", "-o", out):
            "error: unknown format 'tf' for --from: choose from jax, mindspore",
        ("convert", tmp_path / "none.pkl", "--from", "jax", "--model", "vit-eps-patch32", "--to", "open_clip",
         "-o", out): f"error: --from jax reads a local open_clip_jax .pkl, and {tmp_path / 'none.pkl'} is no such file",
        ("convert", pkl, out, "--to", "open_clip", "-o", out):
            "error: name the output once: as DST or with -o/--output",
        ("convert", pkl, "--to", "jax", "-o", tmp_path / "x.npz"):
            "error: JAX parameters are one open_clip_jax .pkl file: name the destination like x.npz.pkl",
        ("parity", pkl, "--engines", "torch,tf"):
            "error: --engines takes two different engines, the reference first, e.g. torch,jax (known: torch, jax, "
            "mindspore), not torch,tf",
        ("parity", pkl): "error: compare with one of --against IMPL (another library) or --engines A,B (e.g. "
                         "torch,jax)",
        ("convert", tmp_path / "m.pt", "--model", "vit-eps-patch32", "--to", "open_clip", "-o", out):
            "error: --model names the JAX config of a JAX parameter file: pass it with --from jax",
    }
    not_params = tmp_path / "list.pkl"
    not_params.write_bytes(pickle.dumps([1, 2]))
    cases[("convert", not_params, "--from", "jax", "--model", "vit-eps-patch32", "--to", "open_clip", "-o", out)] = \
        f"error: {not_params} is not an open_clip_jax parameter file (a pickled {{'params': {{...}}}})"
    wrong_tree = tmp_path / "wrong.pkl"
    wrong_tree.write_bytes(pickle.dumps({"params": {"Dense_0": {"kernel": np.zeros((2, 2), np.float32)}}}))
    cases[("convert", wrong_tree, "--from", "jax", "--model", "vit-eps-patch32", "--to", "open_clip", "-o", out)] = \
        f"error: {wrong_tree}: JAX parameters lack 'text_model/PosEmbed_0/pos_embed'; is this an open_clip_jax CLIP?"
    for args, message in cases.items():
        code, stdout, err = run(*args)
        assert (code, err.strip()) == (2, message), args
    assert not out.exists()
