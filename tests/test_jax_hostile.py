"""Hostile input to the JAX engine: parameter files (shared or deep sub-trees, truncated, garbage, malformed
values), training options out of range, damaged orbax checkpoints, and the open_clip_jax drop-in's temperature
as the original has it. Each is one line from clipzoo.errors, in bounded time."""
from __future__ import annotations

import copy
import os
import pickle
import shutil
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
jnp = jax.numpy
from flax.core import FrozenDict  # noqa: E402

import clipzoo  # noqa: E402
from clipzoo.cli import app  # noqa: E402
from clipzoo.convert.jax import config_from_open_clip, open_clip_to_jax, write_params_with_config  # noqa: E402
from clipzoo.errors import CheckpointError, ClipzooError, UnsafePickleError  # noqa: E402
from clipzoo.models.jax_params import read_params  # noqa: E402
from clipzoo.testing import tiny  # noqa: E402
from clipzoo.train.jax.config import jax_from_mapping  # noqa: E402

GOOD_CONFIG = {"train_path": "x.csv", "model_name": "vit-eps-patch32", "image_size": 64}


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    """The tiny open_clip model as a JAX parameter file (with its config file), and its tree."""
    sd = {k: v.detach() for k, v in tiny.tiny_model(0).state_dict().items()}
    cfg = config_from_open_clip(tiny.TINY_CONFIG, sd)
    path = tmp_path_factory.mktemp("jax-hostile") / "tiny.pkl"
    write_params_with_config(path, open_clip_to_jax(sd, cfg), cfg, 32, 77)
    return path, read_params(path)


def _dump(path, obj, depth_needed: int = 0):
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, depth_needed * 4))  # pickling a deep dict recurses in the pickler
    try:
        path.write_bytes(pickle.dumps(obj))
    finally:
        sys.setrecursionlimit(limit)
    return path


# ------------------------------------------------------------------ the shape of the tree
def test_shared_subtrees_are_refused_at_once(tmp_path):
    """A 2 KB pickle of 20 references to one dict, 12 levels deep, stood for 20**12 paths (never read); 4 levels
    here, which the old code did read (160,000 paths), so that it fails rather than hangs there."""
    d = {"x": np.zeros(1, np.float32)}
    for _ in range(4):
        d = {f"k{j}": d for j in range(20)}
    path = _dump(tmp_path / "shared.pkl", {"params": d})
    assert path.stat().st_size < 1000
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"^cannot read JAX parameters from {path}: k0(/k0){{2}}/k1 repeats a "
                                              r"sub-tree met before; it is not a parameter file$"):
        read_params(path)
    assert time.perf_counter() - start < 1


class SharedFrozenDict:
    """Pickles as Flax's ``FrozenDict(d)``, whose constructor deep-copies ``d`` (shared sub-dicts and all)."""

    def __init__(self, d):
        self.d = d

    def __reduce__(self):
        return FrozenDict, (self.d,)


@pytest.mark.parametrize("trust", [False, True])
def test_frozen_dicts_of_shared_dicts_are_refused_at_once(tmp_path, trust):
    d = {"x": np.zeros(1, np.float32)}
    for _ in range(4):
        d = {f"k{j}": d for j in range(20)}
    path = _dump(tmp_path / "frozen.pkl", {"params": SharedFrozenDict(d)})
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"^cannot read JAX parameters from {path}: k0(/k0){{2}}/k1 repeats a "
                                              r"sub-tree met before; it is not a parameter file$"):
        read_params(path, trust_pickle=trust)
    assert time.perf_counter() - start < 1


def test_deep_nesting_is_refused(tmp_path):
    deep = {"x": np.zeros(1, np.float32)}
    for _ in range(5000):
        deep = {"a": deep}
    path = _dump(tmp_path / "deep.pkl", {"params": deep}, 5000)
    with pytest.raises(CheckpointError, match=rf"^cannot read JAX parameters from {path}: its dicts nest more than "
                                              r"64 deep at a(/a)+…; it is not a parameter file$"):
        read_params(path)


# ------------------------------------------------------------------ files that are not pickles
@pytest.mark.parametrize("trust", [False, True])
def test_truncated_and_garbage_files_are_not_called_unsafe(params_file, tmp_path, trust):
    data = params_file[0].read_bytes()
    cases = {"cut.pkl": (data[: len(data) // 2], r"UnpicklingError: pickle data was truncated"),
             "noise.pkl": (b"\xffgarbage", r"UnpicklingError: invalid load key, '\\xff'\."),
             "empty.pkl": (b"", r"EOFError: Ran out of input")}
    for name, (body, why) in cases.items():
        (tmp_path / name).write_bytes(body)
        with pytest.raises(CheckpointError, match=rf"^cannot read JAX parameters from {tmp_path / name}: it is "
                                                  rf"truncated or not a pickle \({why}\); write it again or download "
                                                  r"it again$") as info:
            read_params(tmp_path / name, trust_pickle=trust)
        assert not isinstance(info.value, UnsafePickleError)


def test_a_disallowed_global_is_still_unsafe(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"params": {"x": os.getcwd}}))
    with pytest.raises(UnsafePickleError, match=rf"^{path} is a pickle that holds more than arrays \(it refers to "
                                                r"posix\.getcwd\); loading it can run arbitrary code\. If you trust "
                                                r"its source, pass trust_pickle=True \(CLI: --trust-pickle\)$"):
        read_params(path)


# ------------------------------------------------------------------ malformed values
def _set(path: str, value):
    def change(params):
        *parents, leaf = path.split("/")
        node = params
        for p in parents:
            node = node[p]
        node[leaf] = value(node.get(leaf)) if callable(value) else value
    return change


BAD_VALUES = [
    (_set("temp", np.zeros(5, np.float32)), r"JAX parameter temp is \[0\.0, 0\.0, 0\.0, 0\.0, 0\.0\]; it must be "
     r"one finite number up to 88\.0 \(the log of the logit scale\)"),
    (_set("temp", np.array(np.inf, np.float32)), r"JAX parameter temp is inf; it must be one finite number"),
    (_set("temp", np.array(1000.0, np.float32)), r"JAX parameter temp is 1000\.0; it must be one finite number"),
    (_set("temp", "abc"), r"parameter temp is a str, not an array"),
    (_set("image_model/PosEmbed_0/pos_embed", np.zeros((0, 64), np.float32)),
     r"JAX parameters: image_model/PosEmbed_0/pos_embed is of shape \(0, 64\); a position embedding is "
     r"\(positions, width\) with at least one position"),
    (_set("text_model/PosEmbed_0/pos_embed", np.zeros((0, 64), np.float32)),
     r"JAX parameters: text_model/PosEmbed_0/pos_embed is of shape \(0, 64\)"),
    (_set("Dense_0/kernel", lambda k: k.astype(np.complex64)),
     r"parameter Dense_0/kernel holds complex64 values; parameters are arrays of real floats \(float32, bfloat16, …\)"),
    (_set("Dense_0/kernel", lambda k: k.astype(np.int64)), r"parameter Dense_0/kernel holds int64 values"),
    (_set("Dense_0/kernel", lambda k: k.astype(object)), r"parameter Dense_0/kernel holds object values"),
    (_set("Dense_0/kernel", lambda k: k.tolist()), r"parameter Dense_0/kernel is a list, not an array"),
]


@pytest.mark.parametrize("change,message", BAD_VALUES)
def test_malformed_values_are_one_line(params_file, tmp_path, change, message):
    good_path, good = params_file
    tree = copy.deepcopy(good)
    change(tree["params"])
    path = _dump(tmp_path / "bad.pkl", tree)
    shutil.copy(good_path.with_name("tiny.config.json"), tmp_path / "bad.config.json")
    with pytest.raises(CheckpointError, match=rf"^(cannot read JAX parameters from )?{path}: {message}"):
        clipzoo.load(str(path))  # the file is named, whether the reader or the model's checks refuse it


def test_build_checks_values_it_is_handed(params_file):
    """The same checks hold for a tree passed to the backend directly (no file)."""
    from clipzoo.backends.jax import build
    from clipzoo.cards import ModelCard

    tree = copy.deepcopy(params_file[1])
    tree["params"]["temp"] = np.zeros((2, 2), np.float32)
    card = ModelCard(architecture="vit-eps-patch32", publisher="test", id="tiny", backend="jax")
    with pytest.raises(CheckpointError, match=r"^JAX parameter temp is \[\[0\.0, 0\.0\], \[0\.0, 0\.0\]\]; it must "
                                              r"be one finite number up to 88\.0 \(the log of the logit scale\)$"):
        build(card, tree, "vit-eps-patch32")


# ------------------------------------------------------------------ training options
@pytest.mark.parametrize("key,value,message", [
    ("log_freq", 0, "log_freq must be at least 1, got 0"),
    ("log_freq", -1, "log_freq must be at least 1, got -1"),
    ("save_every", 0, "save_every must be at least 1, got 0"),
    ("save_every", -5, "save_every must be at least 1, got -5"),
    ("eval_every", -1, "eval_every must be 0 or more, got -1"),
    ("workers", -1, "workers must be 0 or more, got -1"),
    ("image_size", 50, "image_size 50 is not a multiple of the model's patch size 32"),
    ("context_len", 0, "context_len must be at least 1, got 0"),
    ("context_len", -1, "context_len must be at least 1, got -1"),
    ("train_n_samples", 0, "train_n_samples must be at least 1, got 0"),
    ("train_n_samples", -3, "train_n_samples must be at least 1, got -3"),
    ("beta1", 2.0, r"beta1 must be in \[0, 1\), got 2.0"),
    ("beta2", -1, r"beta2 must be in \[0, 1\), got -1.0"),
    ("eps", -1, "eps must be a positive number, got -1.0"),
    ("weight_decay", -1, "weight_decay must be 0 or more, got -1.0"),
    ("warmup_init", -1, "warmup_init must be 0 or more, got -1.0"),
    ("devices", 0, "devices must be at least 1, got 0"),
    ("shuffle_buffer_size", -1, "shuffle_buffer_size must be at least 1, got -1"),
])
def test_training_options_out_of_range(key, value, message):
    with pytest.raises(ClipzooError, match=rf"^config: {message}$"):
        jax_from_mapping({**GOOD_CONFIG, key: value})


def test_cli_refuses_log_freq_0_before_compiling():
    r = CliRunner().invoke(app, ["train", "--engine", "jax", "--train-path", "shapes-classes:64", "--model-name",
                                 "vit-eps-patch32", "--image-size", "32", "--log-freq", "0"],
                           env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == ["error: config: log_freq must be at least 1, got 0"]


# ------------------------------------------------------------------ damaged orbax checkpoints
@pytest.fixture()
def checkpoint(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    from clipzoo.train.jax.checkpoint import Checkpoints

    state = {"step": jnp.array(3), "w": jnp.ones(4)}
    manager = Checkpoints(str(tmp_path / "ck"))
    manager.save(state, {"epoch": 1})
    manager.close()
    return tmp_path / "ck", state


def test_damaged_checkpoint_is_one_line(checkpoint):
    from clipzoo.train.jax.checkpoint import restore
    from clipzoo.train.result import TrainingError

    folder, state = checkpoint
    for f in (folder / "3" / "default" / "d").iterdir():
        f.write_bytes(b"garbage")
    with pytest.raises(TrainingError, match=rf"^cannot restore checkpoint {folder / '3'} \(OUT_OF_RANGE: [^\n]*\); "
                                            r"it is damaged or was written for another model or optimiser: resume "
                                            r"from another step folder, or with the config it was written with$"):
        restore(str(folder), 3, state)


def test_damaged_checkpoint_metadata_is_one_line(checkpoint):
    from clipzoo.train.jax.checkpoint import restore
    from clipzoo.train.result import TrainingError

    folder, state = checkpoint
    meta = folder / "3" / "clipzoo.json"
    meta.write_text("{not json")
    with pytest.raises(TrainingError, match=rf"^cannot read {meta} \(Expecting property name enclosed in double "
                                            r"quotes: line 1 column 2 \(char 1\)\); the checkpoint is damaged: "
                                            r"resume from another step folder$"):
        restore(str(folder), 3, state)
    meta.write_text("[1, 2]")
    with pytest.raises(TrainingError, match=r"\(not a JSON object\); the checkpoint is damaged"):
        restore(str(folder), 3, state)


# ------------------------------------------------------------------ the drop-in's temperature
def test_open_clip_jax_temp_as_the_original():
    """open_clip_jax's CLIP tests ``if self.temp_init:`` (0.0 makes no ``temp``) and makes ``temp`` in the
    projections' dtype (in bfloat16 both outputs are bfloat16)."""
    from clipzoo.compat import open_clip_jax as ocj

    model, variables = ocj.create_model_with_params("vit-eps-patch32", temp_init=0.0, pretrained=False,
                                                    image_size=64, context_len=16)
    assert "temp" not in variables["params"]
    images, tokens = jnp.zeros((2, 64, 64, 3)), jnp.ones((2, 16), jnp.int32)
    image, text = model.apply(variables, images, tokens)
    assert np.allclose(np.linalg.norm(np.asarray(image), axis=-1), 1, atol=1e-5)  # not scaled
    model, variables = ocj.create_model_with_params("vit-eps-patch32", temp_init=2.6593, pretrained=False,
                                                    image_size=64, context_len=16, dtype=jnp.bfloat16)
    assert variables["params"]["temp"].dtype == jnp.bfloat16
    image, text = model.apply(variables, images, tokens)
    assert (image.dtype, text.dtype) == (jnp.bfloat16, jnp.bfloat16)
    assert np.allclose(np.linalg.norm(np.asarray(image, np.float32), axis=-1), np.exp(2.6593), rtol=2e-2)
    assert model.apply(variables, images, method="encode_image").shape == (2, 64)


def test_one_empty_dict_under_two_keys_repeats_nothing(tmp_path):
    """The shared-sub-tree check refused a file whose two keys held one empty dict (it stands for no paths)."""
    empty = {}
    params = {"x": {"w": np.zeros(2, np.float32)}, "y": empty, "z": empty}
    path = _dump(tmp_path / "empty.pkl", {"params": params})
    read = read_params(path)["params"]
    assert (read["y"], read["z"]) == ({}, {}) and np.array_equal(read["x"]["w"], np.zeros(2, np.float32))
