"""Model folders an attacker publishes: loading one never runs its code, never reads files outside it, and never
writes outside the cache (found by probing conversion and loading)."""
from __future__ import annotations

import json

import pytest

from clipzoo.backends.onnx_format import FORMAT, META_FILE, read_meta
from clipzoo.errors import CheckpointError
from clipzoo.models.spec import ConfigError, check_towers


def _onnx_folder(tmp_path, **meta):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "image.onnx").write_bytes(b"not read here")
    (folder / META_FILE).write_text(json.dumps({"format": FORMAT, "graphs": {"image": {"file": "image.onnx"}},
                                                **meta}))
    return folder


def test_an_onnx_export_naming_code_options_is_refused(tmp_path):
    """clipzoo_onnx.json's tokenizer kwargs reached transformers: trust_remote_code ran the folder's tok.py."""
    folder = _onnx_folder(tmp_path, tokenizer={"kind": "open_clip_hf", "dir": "tokenizer", "context_length": 77,
                                               "kwargs": {"trust_remote_code": True, "strip_sep_token": True}})
    with pytest.raises(CheckpointError, match=r"tokenizer options 'trust_remote_code' are refused .*; loading a "
                                              r"model never runs code from its files$"):
        read_meta(folder)


@pytest.mark.parametrize("meta", [
    {"graphs": {"image": {"file": "../outside.onnx"}}},
    {"graphs": {"image": {"file": "/etc/passwd"}}},
    {"tokenizer": {"kind": "hf", "dir": "../../elsewhere", "context_length": 77}},
    {"preprocess": {"kind": "hf", "dir": "/tmp"}},
])
def test_an_onnx_export_naming_files_outside_its_folder_is_refused(tmp_path, meta):
    (tmp_path / "outside.onnx").write_bytes(b"x")
    folder = _onnx_folder(tmp_path, **meta)
    with pytest.raises(CheckpointError, match=r"which is not a file inside the export's folder; export the model "
                                              "again$"):
        read_meta(folder)


def test_a_composite_folder_naming_code_options_is_refused():
    """clipzoo_composite.json's towers.text.kwargs reached AutoModel.from_pretrained: its mod.py ran on load."""
    towers = {"image": {"source": "timm", "name": "resnet18"},
              "text": {"source": "hf", "name": "text", "kwargs": {"trust_remote_code": True}}}
    with pytest.raises(ConfigError, match=r"^towers.text.kwargs: trust_remote_code is refused; loading a model "
                                          "never runs code from its files"):
        check_towers(towers)
    towers["text"]["kwargs"] = "yes"
    with pytest.raises(ConfigError, match=r"^towers.text.kwargs must be a table of keyword arguments, got 'yes'$"):
        check_towers(towers)


@pytest.mark.parametrize("shape", [(10 ** 12,), (10 ** 7,)])
def test_a_parameter_pickle_cannot_allocate_more_than_its_file_holds(tmp_path, shape):
    """A 125-byte .pkl calling numpy.ndarray((10**12,)) was a MemoryError traceback; 10**7 came back as 80 MB of
    uninitialised memory read as weights."""
    import pickle

    import numpy as np

    from clipzoo.models.jax_params import read_params

    class Empty:
        def __reduce__(self):
            return np.ndarray, (shape, np.dtype("f8"))

    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"params": {"w": Empty()}}))
    with pytest.raises(CheckpointError, match=rf"p.pkl: the pickle asks for an array of {shape[0] * 8:,} bytes, "
                                              rf"more than its {path.stat().st_size}-byte file holds"):
        read_params(path)
    path.write_bytes(pickle.dumps({"params": {"w": np.arange(6.0).reshape(2, 3)}}))  # real arrays still read
    assert read_params(path)["params"]["w"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_config_far_larger_than_its_weights_is_refused_before_allocating(tmp_path):
    """A 13 MB safetensors whose embedded config claimed a 100-layer, 2048-wide image tower allocated gigabytes
    (a terabyte for width 1e6) before the weights were compared — a raw RuntimeError at best."""
    import resource

    from safetensors.torch import save_file

    import clipzoo
    from clipzoo.errors import ArchitectureMismatchError
    from clipzoo.testing import tiny

    cfg = json.loads(json.dumps(tiny.TINY_CONFIG))
    cfg["vision_cfg"].update(width=2048, layers=100)
    save_file(tiny.state_dict(), str(tmp_path / "bomb.safetensors"),
              metadata={"format": "pt", "open_clip_config": json.dumps({"model_cfg": cfg})})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ArchitectureMismatchError, match=r"bomb.safetensors: its config builds a model of "
                                                        r"5,\d{3},\d{3},\d{3} parameters where the weights hold "):
        clipzoo.load(str(tmp_path / "bomb.safetensors"))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KB: nothing was allocated


@pytest.mark.parametrize("change, said", [
    ({"vision_cfg": {"layers": "2"}}, r"its model config cannot be built \(TypeError: 'str' object cannot be "
                                      r"interpreted as an integer\); check the config's values$"),
    ({"embed_dim": -1}, r"its model config cannot be built \(RuntimeError: Trying to create tensor with negative "),
    ({"vision_cfg": None}, r"model_cfg.vision_cfg must be a table of settings, got None$"),
])
def test_a_config_of_wrong_types_is_one_line(tmp_path, change, said):
    """Each was a traceback from inside open_clip or torch (AttributeError, TypeError, RuntimeError)."""
    from safetensors.torch import save_file

    import clipzoo
    from clipzoo.testing import tiny

    cfg = json.loads(json.dumps(tiny.TINY_CONFIG))
    for key, value in change.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    save_file(tiny.state_dict(), str(tmp_path / "bad.safetensors"),
              metadata={"format": "pt", "open_clip_config": json.dumps({"model_cfg": cfg})})
    with pytest.raises(CheckpointError, match=said):
        clipzoo.load(str(tmp_path / "bad.safetensors"))
