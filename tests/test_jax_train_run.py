"""Issue 18 §5: the JAX engine trains on CSV data, resumes exactly from orbax checkpoints (N steps straight ==
N/2 + resume + N/2), evaluates through the Evaluator, and its parameters convert to a torch model that predicts
the same."""
from __future__ import annotations

import json

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("orbax.checkpoint")
torch = pytest.importorskip("torch")

from clipzoo.datasets import write_shapes  # noqa: E402
from clipzoo.train.jax import JaxTrainConfig, train_jax  # noqa: E402
from clipzoo.train.jax.config import jax_from_mapping  # noqa: E402

TINY = {"image_model": {"depth": 1, "embed_dim": 32, "n_heads": 2, "patch_size": 8},
        "text_model": {"depth": 1, "embed_dim": 32, "n_heads": 2}, "proj_dim": 16}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """The runs of this module compile the same step: JAX's persistent cache compiles it once."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (str(tmp_path_factory.mktemp("xla-cache")), 0, 0)):
        jax.config.update(k, v)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


@pytest.fixture(scope="module")
def shapes_csv(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, 40, seed=3, image_size=16, formats=("csv",), two_object_prob=0.0, label_key="shape")
    return root


@pytest.fixture(scope="module")
def straight(shapes_csv, tmp_path_factory):
    """8 steps in one go (5 per epoch: it crosses an epoch), evaluated zero-shot at the end; (output, losses)."""
    out = tmp_path_factory.mktemp("straight")
    losses: dict[int, float] = {}
    result = train_jax(_cfg(shapes_csv, out, eval_data=str(shapes_csv)),
                       on_step=lambda s, r: losses.__setitem__(s, r["loss"]))
    return out, losses, result


def _cfg(data, out, **kw) -> JaxTrainConfig:
    base = {"train_path": str(data), "model_config": TINY, "image_size": 16, "context_len": 12,
            "global_batch_size": 8, "learning_rate": 3e-3, "n_warmup_steps": 2, "steps": 8, "weight_decay": 0.1,
            "output": str(out), "progress": False, "log_freq": 4, "workers": 2}
    return jax_from_mapping({**base, **kw})


class Stop(Exception):
    pass


def test_jax_train_exact_resume_from_orbax_checkpoint(shapes_csv, straight, tmp_path):
    out_a, straight, result = straight
    assert sorted(straight) == list(range(1, 9)) and result.steps == 8

    first: dict[int, float] = {}

    def stop_after_checkpoint(step, record):
        if step == 5:  # the step-4 checkpoint is written; the run "dies" here
            raise Stop
        first[step] = record["loss"]

    with pytest.raises(Stop):
        train_jax(_cfg(shapes_csv, tmp_path / "b", save_every=4), on_step=stop_after_checkpoint)
    assert (tmp_path / "b" / "checkpoints" / "4").is_dir()
    second: dict[int, float] = {}
    train_jax(_cfg(shapes_csv, tmp_path / "b", resume_from_checkpoint="latest"),
              on_step=lambda s, r: second.__setitem__(s, r["loss"]))
    assert sorted(second) == [5, 6, 7, 8]
    resumed = {**first, **second}
    assert resumed.keys() == straight.keys()
    for step in straight:
        assert resumed[step] == pytest.approx(straight[step], abs=1e-6), step
    assert straight[8] < straight[1]  # it learns
    a = _params(out_a)
    b = _params(tmp_path / "b")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def _params(out):
    from clipzoo.backends.jax import read_params

    return read_params(out / "model" / "params.pkl")


def test_jax_trained_params_convert_to_torch_with_same_predictions(shapes_csv, straight):
    """A short run's params.pkl: JAX (clipzoo.load, jit) and the converted open_clip model agree on every
    zero-shot prediction of the held-out shapes; the in-training evaluation reports the same acc1."""
    import open_clip

    import clipzoo
    from clipzoo.convert.jax import jax_to_open_clip, open_clip_config
    from clipzoo.datasets.readers import open_dataset

    out, _, result = straight
    info = json.loads((out / "model" / "config.json").read_text())
    assert info["engine"] == "jax" and info["steps"] == 8 and info["model"] == TINY
    jx = clipzoo.load(str(out / "model" / "params.pkl"))  # params.config.json beside it names the config
    sd = jax_to_open_clip(_params(out), TINY)
    tm = open_clip.CLIP(**open_clip_config(TINY, 16, 12)).eval()
    tm.load_state_dict(sd)

    data = open_dataset(str(shapes_csv))
    pixels = torch.stack([jx.transform(clipzoo_image(r)) for r in list(data)[:24]])
    prompts = jx.tokenize([f"a photo of a {c}." for c in data.classnames])
    with torch.no_grad():
        ji, jt = jx.encode_pixels(pixels), jx.encode_tokens(prompts)
        ti, tt = tm.encode_image(pixels), tm.encode_text(prompts)
    np.testing.assert_allclose(ji.numpy(), ti.numpy(), atol=1e-4)
    np.testing.assert_allclose(jt.numpy(), tt.numpy(), atol=1e-4)
    jpred = (torch.nn.functional.normalize(ji, dim=-1) @ torch.nn.functional.normalize(jt, dim=-1).T).argmax(1)
    tpred = (torch.nn.functional.normalize(ti, dim=-1) @ torch.nn.functional.normalize(tt, dim=-1).T).argmax(1)
    assert torch.equal(jpred, tpred)
    # the in-training evaluation (the Evaluator over the parameters in training) is the torch model's acc1
    labels = torch.tensor([r.label for r in list(data)[:24]])
    final = [e for e in result.evals if e["step"] == 8]
    assert final and "acc5" in final[0]
    full = _torch_acc1(tm, jx, data)
    assert final[0]["acc1"] == pytest.approx(full, abs=1e-6)
    assert labels.numel() == 24


def _torch_acc1(model, jx, data) -> float:
    """Zero-shot acc1 of the converted torch model over the whole data set, with the Evaluator's templates."""
    from clipzoo.backends.open_clip import OpenClipComparator
    from clipzoo.cards import ModelCard
    from clipzoo.eval.runner import Evaluator

    card = ModelCard(architecture="clip", publisher="local", id="converted", backend="open_clip")
    torch_cmp = OpenClipComparator(card, model, transform=jx.transform, tokenizer=jx.tokenizer, precision="fp32",
                                   model_name=None, model_config=None, preprocess_config={"size": 16})
    return Evaluator(torch_cmp, workers=0, batch_size=256).zeroshot(data).metrics["acc1"]


def clipzoo_image(record):
    from clipzoo.datasets.records import decode_image

    return decode_image(record)


def test_jax_train_siglip_bf16_grad_checkpoint(shapes_csv, tmp_path):
    """SigLIP (learnable bias, scale 10 and bias -10 at the start), bf16 towers and rematerialised blocks: the
    first loss is the fp32 SigLIP loss of the initial parameters on the first batch (within bf16's error)."""
    from clipzoo.train.jax.data import open_batches
    from clipzoo.train.jax.mesh import Shardings, make_mesh
    from clipzoo.train.jax.state import build_model, build_optimiser, init_state
    from clipzoo.train.jax.step import make_loss_fn

    cfg = _cfg(shapes_csv, tmp_path, loss="siglip", dtype="bf16", grad_checkpoint=True, steps=2, log_freq=1,
               n_warmup_steps=1)
    losses: list[float] = []
    train_jax(cfg, on_step=lambda s, r: losses.append(r["loss"]))
    ref_cfg = cfg.replace(dtype="float32", grad_checkpoint=False)
    module = build_model(ref_cfg)
    state = init_state(ref_cfg, module, build_optimiser(ref_cfg, 2)[0])
    images, tokens = next(open_batches(str(shapes_csv), ref_cfg, train=True, n_samples=None, process_count=1,
                                       process_index=0).batches(0))
    sh = Shardings(make_mesh())
    expected = float(make_loss_fn(module, "siglip")(state["params"], *sh.put_batch(images, tokens))[0])
    assert float(state["params"]["logit_bias"]) == -10.0
    assert losses[0] == pytest.approx(expected, rel=0.02)
    saved = _params(tmp_path)["params"]
    assert "logit_bias" not in saved and float(np.exp(saved["temp"])) == pytest.approx(10.0, rel=0.05)
