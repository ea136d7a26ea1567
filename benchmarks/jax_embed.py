"""Image and text embedding, JAX (jit; fp32 and bf16) vs torch eager (fp32), on one ViT-B/32 with random weights.

The JAX parameters are initialised (open_clip_jax's ``vit-base-patch32`` tree) and converted with
``clipzoo.convert.jax.jax_to_open_clip`` into an open_clip ``CLIP`` for torch, so both run the same weights; the
fp32 features are compared (max abs diff) before timing. Each encoder gets one warm-up call (JAX: the jit
compilation), then ``--repeats`` timed calls on the same batch; images/s and texts/s are batch × repeats / time
(JAX timed until ``block_until_ready``; torch under ``inference_mode``). Ratios are JAX over torch, same run.

    python benchmarks/jax_embed.py --image-batch 8 --text-batch 32 --repeats 3 --out benchmarks/results/jax_embed.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def _rate(fn, n: int, repeats: int) -> float:
    fn()  # warm-up (JAX: compile)
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n * repeats / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vit-base-patch32")
    ap.add_argument("--image-batch", type=int, default=8)
    ap.add_argument("--text-batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import open_clip
    import torch

    from clipzoo.convert.jax import jax_to_open_clip, open_clip_config
    from clipzoo.models.jax_clip import create_model, init_variables

    variables = init_variables(create_model(args.model), 224, 77, seed=0)
    variables = {"params": {k: v for k, v in variables["params"].items() if k != "temp"}}
    tm = open_clip.CLIP(**open_clip_config(args.model, 224, 77)).eval()
    tm.load_state_dict(jax_to_open_clip(variables, args.model))

    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.image_batch, 224, 224, 3)).astype(np.float32)
    tokens = rng.integers(1, 49000, size=(args.text_batch, 77)).astype(np.int32)
    tokens[:, 0], tokens[:, 20], tokens[:, 21:] = 49406, 49407, 0
    timg, ttok = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(tokens).long()

    out: dict = {"benchmark": "jax_embed", "model": args.model, "image_batch": args.image_batch,
                 "text_batch": args.text_batch, "repeats": args.repeats, "jax": jax.__version__,
                 "torch": torch.__version__, "jax_devices": [str(d) for d in jax.devices()],
                 "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    for precision, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        module = create_model(args.model, dtype=dtype)
        enc_i = jax.jit(lambda v, x, m=module: m.apply(v, x, method="encode_image"))
        enc_t = jax.jit(lambda v, t, m=module: m.apply(v, t, method="encode_text"))
        xi, xt = jnp.asarray(images), jnp.asarray(tokens)
        if precision == "fp32":
            with torch.inference_mode():
                out["fp32_max_abs_diff"] = {
                    "image": float(np.abs(np.asarray(enc_i(variables, xi)) - tm.encode_image(timg).numpy()).max()),
                    "text": float(np.abs(np.asarray(enc_t(variables, xt)) - tm.encode_text(ttok).numpy()).max())}
        out[f"jax_{precision}"] = {
            "images_per_s": _rate(lambda f=enc_i, x=xi: f(variables, x).block_until_ready(), args.image_batch,
                                  args.repeats),
            "texts_per_s": _rate(lambda f=enc_t, x=xt: f(variables, x).block_until_ready(), args.text_batch,
                                 args.repeats)}
    with torch.inference_mode():
        out["torch_fp32"] = {"images_per_s": _rate(lambda: tm.encode_image(timg), args.image_batch, args.repeats),
                             "texts_per_s": _rate(lambda: tm.encode_text(ttok), args.text_batch, args.repeats)}
    for precision in ("fp32", "bf16"):
        for what in ("images_per_s", "texts_per_s"):
            out[f"jax_{precision}_over_torch_{what.split('_')[0]}"] = round(
                out[f"jax_{precision}"][what] / out["torch_fp32"][what], 3)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
