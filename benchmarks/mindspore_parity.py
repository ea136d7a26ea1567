"""MindSpore engine inference-difference report (issue 19 §5): torch vs MindSpore on the same weights, fp32 CPU.

MindSpore-CLIP's ``difference.py`` table — mean absolute difference, max absolute difference and mean relative
difference ``|pt - ms| / (|pt| + 1e-6)`` of image features, text features and probabilities — for random-weight
models of every family: tiny OpenAI-style (QuickGELU) and open_clip-style (GELU) ResNets and ViTs, and with
``--full`` the full-size ViT-B-32 and RN50 (open_clip's random init, random batch-norm statistics). Each runs
through ``clipzoo.convert.engines.parity_engines(..., ("torch", "mindspore"))`` on 4 generated images and 5 texts.
Needs the ``mindspore`` extra (its own venv: see docs/mindspore.md).

With ``--mindspore-clip MINDCV`` (a checkout of mindspore-lab/mindcv), the ``.ckpt`` clipzoo writes for each
QuickGELU model is also loaded into MindSpore-CLIP's own classes — ``examples/clip`` ``build_model`` and
``examples/open_clip`` ``CLIP`` — and their features compared with torch's the same way (``reference`` rows). Two
lines of its code do not run on MindSpore 2.10's CPU build as they are: ``ops.ones(())`` without a dtype (patched
here to float32) and open_clip's GELU ``act_layer()`` (so GELU models are left out).

    .venv-ms/bin/python benchmarks/mindspore_parity.py --full --mindspore-clip ../mindcv \
        --out benchmarks/results/mindspore_parity.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

GOAL = 1e-5  # max abs diff, every row, every family
TINY = ("tiny-ViT-quickgelu", "tiny-RN-quickgelu", "tiny-ViT", "tiny-RN")
FULL = ("ViT-B-32", "RN50")


def _model(name: str, seed: int):
    import open_clip
    import torch

    from clipzoo.models.mindspore_config import get_config
    from clipzoo.testing.tiny import tiny_model

    torch.manual_seed(seed)
    model = tiny_model(seed, get_config(name)) if name.startswith("tiny-") else open_clip.create_model(name).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for key, buf in model.named_buffers():
            if key.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif key.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return model


def run(name: str, folder: Path, seed: int = 0) -> dict:
    import clipzoo
    from clipzoo.convert.engines import parity_engines
    from clipzoo.convert.form import OpenClipForm
    from clipzoo.convert.targets import write_safetensors
    from clipzoo.models.mindspore_config import get_config
    from clipzoo.testing.tiny import OPENAI_PREPROCESS

    cfg = get_config(name)
    form = OpenClipForm(_model(name, seed).state_dict(), cfg,
                        {"size": cfg["vision_cfg"]["image_size"], **OPENAI_PREPROCESS}, name)
    path = write_safetensors(form, folder / f"{name}.safetensors")
    start = time.perf_counter()
    report = parity_engines(clipzoo.load(str(path)), ("torch", "mindspore"), tol=GOAL)
    out = report.as_dict()
    out.update(model=name, family=("RN" if "RN" in name else "ViT"),
               activation="quick_gelu" if cfg.get("quick_gelu") else "gelu", seconds=time.perf_counter() - start)
    return out


def _reference_package(mindcv: Path, tmp: Path) -> str:
    """MindSpore-CLIP's model files as an importable package ``mindspore_clip_ref`` (``clip`` and ``open_clip``)."""
    import mindspore
    from mindspore import ops

    if not getattr(ops.ones, "_patched", False):  # MindSpore 2.10 CPU: ops.ones(()) needs a dtype
        ones = ops.ones

        def patched(shape, dtype=None):
            return ones(shape, dtype or mindspore.float32)

        patched._patched = True
        ops.ones = patched
    pkg = tmp / "mindspore_clip_ref"
    (pkg / "oc").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "oc" / "__init__.py").write_text("")
    shutil.copy(mindcv / "examples/clip/clip/model.py", pkg / "clip_model.py")
    for name in ("model", "transformer", "modified_resnet", "utils"):
        shutil.copy(mindcv / f"examples/open_clip/src/open_clip/{name}.py", pkg / "oc" / f"{name}.py")
    sys.path.insert(0, str(tmp))
    return "mindspore_clip_ref"


def reference(name: str, folder: Path, package: str, seed: int = 0) -> dict:
    """Max abs diff of MindSpore-CLIP's own classes (our .ckpt loaded into them) against torch."""
    import mindspore as ms
    import numpy as np
    import open_clip
    import torch

    from clipzoo.models.mindspore_config import get_config
    from clipzoo.models.mindspore_names import torch_to_mindspore, write_ckpt

    cfg = get_config(name)
    model = _model(name, seed)
    path = folder / f"{name}.ckpt"
    write_ckpt(path, torch_to_mindspore(model.state_dict()))
    size = cfg["vision_cfg"]["image_size"]
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    tokens = open_clip.tokenize(["a photo of a cat", "a diagram of a neural network"])
    with torch.no_grad():
        ref = model.encode_image(pixels).numpy(), model.encode_text(tokens).numpy()
    build_model = importlib.import_module(f"{package}.clip_model").build_model
    nets = {"clip.build_model": build_model(ms.load_checkpoint(str(path)))}
    oc = importlib.import_module(f"{package}.oc.model").CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"],
                                                             quick_gelu=True)
    not_loaded, _ = ms.load_param_into_net(oc, ms.load_checkpoint(str(path)))
    nets["open_clip.CLIP"] = oc.set_train(False)
    out = {"model": name, "open_clip_params_not_loaded": list(not_loaded)}
    for label, net in nets.items():
        img = net.encode_image(ms.Tensor(pixels.numpy())).asnumpy()
        txt = net.encode_text(ms.Tensor(tokens.numpy().astype(np.int32))).asnumpy()
        out[label] = {"image_features_max_abs": float(np.abs(img - ref[0]).max()),
                      "text_features_max_abs": float(np.abs(txt - ref[1]).max())}
    # its open_clip TextTransformer declares text_projection float16: the same cell with it float32
    out["open_clip.CLIP text_projection dtype"] = str(oc.text_projection.dtype)
    oc.text_projection.set_dtype(ms.float32)
    oc.text_projection.set_data(ms.Tensor(model.text_projection.detach().numpy()))
    txt = oc.encode_text(ms.Tensor(tokens.numpy().astype(np.int32))).asnumpy()
    out["open_clip.CLIP, text_projection float32"] = {"text_features_max_abs": float(np.abs(txt - ref[1]).max())}
    return out


def main(argv: "list[str] | None" = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="also the full-size ViT-B-32 and RN50")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    ap.add_argument("--mindspore-clip", type=Path, default=None, help="a mindspore-lab/mindcv checkout")
    args = ap.parse_args(argv)
    import mindspore
    import torch

    refs = []
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(name, Path(tmp)) for name in TINY + (FULL if args.full else ())]
        if args.mindspore_clip:
            package = _reference_package(args.mindspore_clip, Path(tmp))
            refs = [reference(name, Path(tmp), package) for name in TINY if name.endswith("quickgelu")]
    summary = {"benchmark": "mindspore_parity", "goal_max_abs": GOAL, "torch": torch.__version__,
               "mindspore": mindspore.__version__, "machine": platform.machine(), "python": platform.python_version(),
               "all_within_goal": all(r["ok"] for r in results), "results": results, "reference": refs}
    text = json.dumps(summary, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return summary


if __name__ == "__main__":
    main()
