"""MindSpore engine §2–§5: ``.ckpt`` files both ways (ours and MindSpore-CLIP's ``ckpt_transform.py`` layout),
``clipzoo convert --to mindspore`` / ``--from mindspore``, the backend's options and cards, Graph mode, and
``clipzoo parity MODEL --engines torch,mindspore``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

ms = pytest.importorskip("mindspore")

import clipzoo  # noqa: E402
from clipzoo.backends import mindspore as ms_backend  # noqa: E402
from clipzoo.cli import app  # noqa: E402
from clipzoo.errors import CheckpointError, ClipzooError, DownloadError, UnsupportedError  # noqa: E402
from clipzoo.models.mindspore_names import read_ckpt  # noqa: E402
from clipzoo.testing.tiny import state_dict  # noqa: E402
from test_mindspore_names import ckpt_transform_name  # noqa: E402
from test_mindspore_parity import open_clip_file  # noqa: E402

TEXTS = ["a red circle", "a blue square", "two dogs"]


def run(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def images():
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (48, 40 + 8 * i, 3), dtype=np.uint8)) for i in range(2)]


def max_diff(a, b) -> float:
    fa, fb = a.encode_image(images(), normalize=False), b.encode_image(images(), normalize=False)
    ta, tb = a.encode_text(TEXTS, normalize=False), b.encode_text(TEXTS, normalize=False)
    return max(float((fa - fb).abs().max()), float((ta - tb).abs().max()))


@pytest.fixture(scope="module")
def rn_file(tmp_path_factory):
    """An open_clip ResNet (GELU) with random batch-norm statistics, as .safetensors with its config."""
    return open_clip_file(tmp_path_factory.mktemp("ms"), "tiny-RN", seed=3)


def test_ckpt_transform_file_loads_as_it_is(tmp_path):
    """A .ckpt laid out as MindSpore-CLIP's ckpt_transform.py writes OpenAI's weights (fp16 tensors, every key
    renamed by its rule, num_batches_tracked and input_resolution / context_length / vocab_size kept) loads
    without model= (config read from the shapes) and matches the torch model of the same .pt."""
    sd = state_dict(4, fp16=True)
    sd.pop("attn_mask", None)
    openai = {**sd, "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
              "vocab_size": torch.tensor(49408)}
    torch.save(openai, tmp_path / "tiny.pt")
    ms.save_checkpoint([{"name": ckpt_transform_name(k), "data": ms.Tensor(v.numpy())} for k, v in openai.items()],
                       str(tmp_path / "tiny.ckpt"))
    theirs = clipzoo.load(str(tmp_path / "tiny.ckpt"))
    assert theirs.card.backend == "mindspore" and theirs.model_config["quick_gelu"] is True
    assert max_diff(theirs, clipzoo.load(str(tmp_path / "tiny.pt"))) <= 1e-5


def test_convert_to_mindspore_and_back_cli(rn_file, tmp_path):
    path, sd = rn_file
    code, _, err = run("convert", path, "--to", "mindspore", "-o", tmp_path / "rn.ckpt")
    assert code == 0, err
    params = read_ckpt(tmp_path / "rn.ckpt")
    expected = {ckpt_transform_name(k) for k in sd if not k.endswith("num_batches_tracked")}
    assert set(params) == expected and all(v.dtype == np.float32 for v in params.values())
    assert np.array_equal(params["visual.layer1.0.downsample.1.moving_variance"],
                          sd["visual.layer1.0.downsample.1.running_var"].numpy())
    code, _, err = run("convert", tmp_path / "rn.ckpt", "--from", "mindspore", "--model", "tiny-RN", "--to",
                       "open_clip", "-o", tmp_path / "back.safetensors")
    assert code == 0, err
    from safetensors.torch import load_file

    back = load_file(tmp_path / "back.safetensors")
    assert set(back) == set(sd) and all(torch.equal(back[k].to(v.dtype), v) for k, v in sd.items())
    assert max_diff(clipzoo.load(str(tmp_path / "back.safetensors")), clipzoo.load(str(path))) <= 1e-5


def test_wrong_config_and_options_are_one_line_errors(rn_file, tmp_path):
    path, _ = rn_file
    assert run("convert", path, "--to", "mindspore", "-o", tmp_path / "rn.ckpt")[0] == 0
    ckpt = str(tmp_path / "rn.ckpt")
    with pytest.raises(CheckpointError, match=r"^these weights do not fit the MindSpore CLIP config \(missing "
                       r"visual\.class_embedding, .*; unexpected visual\.attnpool\.c_proj\.bias, .*; shape of "
                       r"visual\.conv1\.weight \(8, 3, 3, 3\) != \(128, 3, 8, 8\)\); name the matching config with "
                       r"model=$"):
        clipzoo.load(ckpt, model="tiny-ViT")
    with pytest.raises(UnsupportedError, match=r"^precision 'fp16': clipzoo's MindSpore engine runs fp32 only$"):
        clipzoo.load(ckpt, precision="fp16")
    with pytest.raises(UnsupportedError, match=r"^device 'cuda': clipzoo's MindSpore engine runs on the CPU"):
        clipzoo.load(ckpt, device="cuda")
    with pytest.raises(ClipzooError, match=r"^unknown engine 'tensorflow'; use torch or mindspore$"):
        clipzoo.load(str(path), engine="tensorflow")
    code, _, err = run("convert", path, "--to", "mindspore", "-o", tmp_path / "rn.bin")
    assert code == 2 and "a MindSpore checkpoint is one .ckpt file: name the destination like rn.bin.ckpt" in err


def test_graph_mode_equals_pynative(rn_file, tmp_path):
    path, _ = rn_file
    eager = clipzoo.load(str(path), engine="mindspore")
    graph = clipzoo.load(str(path), engine="mindspore", mode="graph")
    assert graph.runtime == "mindspore-graph"
    assert max_diff(graph, eager) <= 1e-6


def test_cell_outputs_are_open_clip_and_openai_ones(rn_file):
    """``net(image, text)``: open_clip's (image_features, text_features, logit_scale), normalised;
    ``net.logits(image, text)``: OpenAI's (logits_per_image, logits_per_text)."""
    path, _ = rn_file
    m = clipzoo.load(str(path), engine="mindspore")
    pixels, tokens = m.pixels(images()), m.tokenize(TEXTS)
    px, tk = ms.Tensor(pixels.numpy()), ms.Tensor(tokens.numpy().astype(np.int32))
    fi, ft, scale = (t.asnumpy() for t in m.net(px, tk))
    ref_i = torch.nn.functional.normalize(m.encode_pixels(pixels), dim=-1).numpy()
    ref_t = torch.nn.functional.normalize(m.encode_tokens(tokens), dim=-1).numpy()
    assert np.abs(fi - ref_i).max() <= 1e-6 and np.abs(ft - ref_t).max() <= 1e-6
    assert float(scale) == pytest.approx(m.logit_scale, rel=1e-6)
    per_image, per_text = (t.asnumpy() for t in m.net.logits(px, tk))
    assert per_image.shape == (2, 3) and np.array_equal(per_text, per_image.T)
    assert np.abs(per_image - m.logit_scale * ref_i @ ref_t.T).max() <= 1e-4


def test_parity_engines_torch_mindspore_cli(tmp_path):
    path, _ = open_clip_file(tmp_path, "tiny-ViT", seed=5)
    code, out, err = run("parity", path, "--engines", "torch,mindspore", "--tol", "1e-5", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["engines"] == ["torch", "mindspore"] and report["ok"] is True
    for row in report["rows"].values():
        assert 0 < row["max_abs"] <= 1e-5 and row["mean_abs"] <= row["max_abs"] and row["mean_rel"] < 1e-3


def test_cards_name_mindspore_clip_downloads(monkeypatch, tmp_path):
    card = clipzoo.REGISTRY.resolve("mindspore:ViT-B/32")
    assert (card.backend, card.embed_dim, card.config["model"]) == ("mindspore", 512, "ViT-B/32")
    assert card.source.url == "https://download.mindspore.cn/toolkits/mindcv/mindspore-clip/clip/ViT_B_32-34c32b89.ckpt"
    assert clipzoo.REGISTRY.resolve("mindspore:ViT-bigG-14/laion2b_s39b_b160k").embed_dim == 1280
    assert clipzoo.REGISTRY.resolve("mindspore:RN50/yfcc15m").config["model"] == "RN50-quickgelu"
    fake = tmp_path / "ViT_B_32-34c32b89.ckpt"
    fake.write_bytes(b"not the released file")
    monkeypatch.setattr(ms_backend, "download_url", lambda *a, **k: fake)
    with pytest.raises(DownloadError, match=r"its SHA-256 does not start with 34c32b89; the download was removed"):
        ms_backend.ckpt_path(card, tmp_path)
    assert not fake.exists()
