"""JPEG decode + resize candidates (issue 22 §4): images/s on one core, and whether they decode alike.

Every candidate turns the same generated photo-like 640×480 JPEGs (quality 90, ``embed_folder.write_photos``)
into the model's input: an RGB uint8 ``SIZE×SIZE`` array (shorter side resized to ``SIZE`` with an
antialiased bicubic filter, then a centre crop; ``SIZE`` = 224, ViT-B/32's). Candidates:

- ``pil_full``: ``PIL.Image.open`` -> full decode -> ``resize`` (the reference);
- ``pil_draft``: PIL's draft mode (DCT scaling by 2/4/8 while decoding, both sides kept >= SIZE) -> resize
  (what clipzoo's embed path does today, ``clipzoo.image_bytes.decode_rgb(draft_size=...)``);
- ``torchvision``: ``torchvision.io.decode_jpeg`` (libjpeg-turbo) -> PIL resize;
- ``simplejpeg``, ``simplejpeg_scaled``: ``simplejpeg.decode_jpeg`` (libjpeg-turbo; the scaled one with
  ``min_width/min_height`` = SIZE, its DCT scaling) -> PIL resize;
- ``pillow_simd``, ``pillow_simd_draft``: the two PIL paths under pillow-simd, when ``--pillow-simd-python``
  names an interpreter that has it (it replaces Pillow, so it cannot share this process);
- ``pil_draft_2x``: PIL's draft mode kept to power-of-two scales that leave both sides >= 2 × SIZE;
- ``clipzoo_pil_resize``: what ``clipzoo embed`` decodes with (``clipzoo.embed.decode.decode_bytes``: simplejpeg
  when installed, else PIL; DCT scaling only while both sides stay >= 2 × SIZE) -> the same PIL resize;
- ``clipzoo``: that decode -> torch's antialiased uint8 resize (``clipzoo.embed.handover.resize_uint8``, the
  kernel of ``fast_resize_crop``, same geometry as the others): what ``clipzoo embed`` does with fast decoding,
  its default.

The photos come in each of ``--photo-sizes`` (default 640×480, the issue's, and 1280×960, where DCT scaling with
the 2× margin applies); every figure is per photo size.

Every candidate but ``clipzoo`` resizes with the same PIL filter, so those figures compare the decoders;
``clipzoo`` against ``clipzoo_pil_resize`` compares the resizes. Speed: one process,
one thread (``torch.set_num_threads(1)``), files read from the page cache, a warm-up call, best of
``--repeats`` interleaved passes, in images per CPU second of the process -> images/s per core. Fidelity,
against ``pil_full`` on the same files: the largest and mean absolute pixel difference, and the min cosine
of the embeddings through the embedded model (``clipzoo/tiny-shapes``, ``encode_image01`` on the SIZE×SIZE
pixels); usable at cosine >= 0.9999.

    python benchmarks/decode.py                                   # results/decode.json
    python benchmarks/decode.py --images 32 --repeats 1 --out /tmp/decode.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from tables import RESULTS, machine_info, scratch_dir, write_result

MIN_COSINE = 0.9999
CANDIDATES = ("pil_full", "pil_draft", "pil_draft_2x", "torchvision", "simplejpeg", "simplejpeg_scaled",
              "clipzoo_pil_resize", "clipzoo")
PILLOW_SIMD_NOTE = ("pillow-simd builds from source only (no wheel); it replaces Pillow, so it runs in a "
                    "separate interpreter given by --pillow-simd-python")


def fit(im, size: int):
    """A PIL image -> shorter side ``size`` (bicubic, antialiased) -> centre crop ``size×size``, uint8 array."""
    import numpy as np
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def pil_full(data: bytes, size: int):
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return fit(im.convert("RGB"), size)


def pil_draft(data: bytes, size: int):
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))
        return fit(im.convert("RGB"), size)


def pil_draft_2x(data: bytes, size: int):
    import io

    from PIL import Image

    from clipzoo.embed.decode import dct_scale

    with Image.open(io.BytesIO(data)) as im:
        div = dct_scale(*im.size, size)
        if div > 1:
            im.draft("RGB", (im.size[0] // div, im.size[1] // div))
        return fit(im.convert("RGB"), size)


def clipzoo_pil_resize(data: bytes, size: int):
    from clipzoo.embed.decode import decode_bytes

    return fit(decode_bytes(data, size), size)


def clipzoo_decode(data: bytes, size: int):
    """clipzoo's decode, then :func:`fit`'s geometry resized by clipzoo's fast path (torch's antialiased
    bicubic on the uint8 pixels, ``clipzoo.embed.handover.resize_uint8``)."""
    from clipzoo.embed.decode import decode_bytes
    from clipzoo.embed.handover import resize_uint8

    im = decode_bytes(data, size)
    w, h = im.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    x = resize_uint8(im, new_w, new_h, "bicubic")
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return x[:, top:top + size, left:left + size].permute(1, 2, 0).numpy()


def torchvision_decode(data: bytes, size: int):
    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg

    t = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return fit(Image.fromarray(t.permute(1, 2, 0).numpy()), size)


def simplejpeg_decode(data: bytes, size: int, scaled: bool = False):
    import simplejpeg
    from PIL import Image

    kw = {"min_width": size, "min_height": size} if scaled else {}
    return fit(Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", **kw)), size)


DECODERS = {"pil_full": pil_full, "pil_draft": pil_draft, "pil_draft_2x": pil_draft_2x,
            "torchvision": torchvision_decode, "simplejpeg": simplejpeg_decode,
            "simplejpeg_scaled": lambda d, s: simplejpeg_decode(d, s, True), "clipzoo_pil_resize": clipzoo_pil_resize,
            "clipzoo": clipzoo_decode}


def speed(decode, blobs: list[bytes], size: int, repeats: int) -> tuple[float, list]:
    """Best images per CPU second of ``repeats`` passes of ``decode`` over ``blobs``, and the last pass's arrays.

    CPU time of this one-thread process (``time.process_time``), not wall time: on a machine whose cores
    other jobs share, it still counts only the work of the decoder — images/s of one core."""
    decode(blobs[0], size)  # warm-up: first-call imports and library set-up are not the decoder's speed
    best, out = 0.0, []
    for _ in range(repeats):
        t = time.process_time()
        out = [decode(b, size) for b in blobs]
        best = max(best, len(blobs) / max(time.process_time() - t, 1e-9))
    return best, out


def run_worker(names: list[str], files: list[str], size: int, repeats: int, out_dir: Path) -> dict:
    """Decode ``files`` with each of ``names``, passes interleaved (a change of load hits each alike); save
    each one's arrays as ``out_dir/NAME.npy``; images per CPU second by name."""
    import numpy as np

    blobs = [Path(f).read_bytes() for f in files]
    rates = dict.fromkeys(names, 0.0)
    for _ in range(repeats):
        for name in names:
            rate, _ = speed(DECODERS[name], blobs, size, 1)
            rates[name] = max(rates[name], rate)
    for name in names:
        np.save(out_dir / f"{name}.npy", np.stack([DECODERS[name](b, size) for b in blobs]))
    return rates


def pillow_simd(python: str, files: list[str], size: int, repeats: int, out_dir: Path) -> dict:
    """The PIL candidates in another interpreter (with pillow-simd installed): images/s and arrays."""
    simd_dir = out_dir / "pillow_simd"
    simd_dir.mkdir(exist_ok=True)
    cmd = [python, __file__, "--_worker", json.dumps({"files": files, "size": size, "repeats": repeats,
                                                      "out": str(simd_dir)})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"the pillow-simd interpreter failed: {proc.stderr.strip()[-400:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("pil_full", "pil_draft"):
        (simd_dir / f"{name}.npy").rename(out_dir / f"pillow_simd{name[3:]}.npy")
    return {"pillow_simd" + k[3:]: v for k, v in info["rates"].items()} | {"pillow_simd_version": info["pil"]}


def fidelity(arrays: dict, model) -> dict:
    """Per candidate: max / mean abs pixel difference and min embedding cosine against ``pil_full``."""
    import numpy as np
    import torch

    def embed(a):
        with torch.no_grad():
            x = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255
            return model.encode_image01(x).float()

    ref = arrays["pil_full"]
    ref_e = embed(ref)
    out = {}
    for name, a in arrays.items():
        diff = np.abs(a.astype(np.int16) - ref.astype(np.int16))
        cos = torch.nn.functional.cosine_similarity(embed(a), ref_e).min().item()
        out[name] = {"max_abs_pixel_diff": int(diff.max()), "mean_abs_pixel_diff": float(diff.mean()),
                     "min_cosine": cos, "usable": cos >= MIN_COSINE}
    return out


def table(result: dict) -> dict:
    """One row per photo size and decoder, fastest first within a size; then the candidates not run."""
    rows = []
    for photo, res in result["by_photo_size"].items():
        base = res["images_per_s"]["pil_full"]
        block = []
        for name, rate in res["images_per_s"].items():
            f = res["fidelity"][name]
            block.append([photo, f"`{name}`", round(rate, 1), round(rate / base, 2), f["max_abs_pixel_diff"],
                          round(f["mean_abs_pixel_diff"], 3), f"{f['min_cosine']:.6f}", f["usable"]])
        rows += sorted(block, key=lambda r: -r[2])
    for name, o in sorted(result["overall"].items(), key=lambda kv: -kv[1]["x_pil_full_geomean"]):
        rows.append(["every size", f"`{name}`", None, round(o["x_pil_full_geomean"], 2), None, None,
                     f"{o['min_cosine']:.6f}", o["usable"]])
    for name, why in result["not_run"].items():
        rows.append([None, f"`{name}`", None, None, None, None, None, f"not run: {why}"])
    return {"columns": ["photo", "decoder (-> 224×224)", "images/s, one core", "× PIL full", "max abs pixel diff",
                        "mean abs pixel diff", "min cosine vs PIL full", f"usable (cosine >= {MIN_COSINE})"],
            "rows": rows}


def overall(by_size: dict) -> dict:
    """Per decoder, over every photo size: the geometric mean of its speed-up over PIL full, its min cosine, and
    whether it is usable at every size (a decode rule is applied to whatever photos a user has)."""
    import math

    names = set.intersection(*(set(r["images_per_s"]) for r in by_size.values()))
    out = {}
    for n in names:
        ratios = [r["images_per_s"][n] / r["images_per_s"]["pil_full"] for r in by_size.values()]
        cos = min(r["fidelity"][n]["min_cosine"] for r in by_size.values())
        out[n] = {"x_pil_full_geomean": math.exp(sum(map(math.log, ratios)) / len(ratios)), "min_cosine": cos,
                  "usable": cos >= MIN_COSINE}
    return out


def measure_size(photo: str, names: list[str], args, root: Path, model) -> tuple[dict, dict]:
    """Candidates' speed and fidelity on ``args.images`` generated JPEGs of ``photo`` (``WxH``); pillow-simd
    versions too when asked."""
    import numpy as np

    from embed_folder import write_photos

    w, h = (int(v) for v in photo.split("x"))
    files = write_photos(root / f"jpegs-{photo}", args.images, w, h)
    arrays_dir = root / f"arrays-{photo}"
    arrays_dir.mkdir(exist_ok=True)
    rates = run_worker(names, files, args.size, args.repeats, arrays_dir)
    versions = {}
    if args.pillow_simd_python:
        simd = pillow_simd(args.pillow_simd_python, files, args.size, args.repeats, arrays_dir)
        versions["pillow_simd"] = simd.pop("pillow_simd_version")
        rates |= simd
    arrays = {n: np.load(arrays_dir / f"{n}.npy") for n in rates}
    res = {"images": len(files), "images_per_s": rates, "fidelity": fidelity(arrays, model)}
    usable = {n: r for n, r in rates.items() if res["fidelity"][n]["usable"]}
    res["fastest_usable"] = max(usable, key=usable.get)
    in_process = {n: r for n, r in usable.items() if not n.startswith("pillow_simd")}
    res["fastest_usable_in_process"] = max(in_process, key=in_process.get)
    res["clipzoo_vs_fastest_usable_in_process"] = rates.get("clipzoo", 0) / in_process[res["fastest_usable_in_process"]]
    return res, versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="JPEGs per photo size")
    ap.add_argument("--photo-sizes", default="640x480,1280x960", help="comma-separated WxH of the generated photos")
    ap.add_argument("--size", type=int, default=224, help="the model's input side")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pillow-simd-python", default=os.environ.get("PILLOW_SIMD_PYTHON"),
                    help="an interpreter with pillow-simd and numpy [default: $PILLOW_SIMD_PYTHON]")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "decode.json")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:  # inside the pillow-simd interpreter: PIL and numpy only
        import PIL

        w = json.loads(args._worker)
        rates = run_worker(["pil_full", "pil_draft"], w["files"], w["size"], w["repeats"], Path(w["out"]))
        print(json.dumps({"rates": rates, "pil": PIL.__version__}))
        return
    import torch

    import clipzoo
    from clipzoo.embed.decode import SCALE_MARGIN, decoder_name

    torch.set_num_threads(1)
    machine = machine_info()
    root = args.workdir or scratch_dir("clipzoo-decode-")
    names, not_run = list(CANDIDATES), {}
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        names = [n for n in names if not n.startswith("simplejpeg")]
        not_run["simplejpeg"] = "not installed (pip install 'clipzoo[decode]')"
    if not args.pillow_simd_python:
        not_run["pillow_simd"] = PILLOW_SIMD_NOTE
    model = clipzoo.load("clipzoo/tiny-shapes", device="cpu")
    versions = {"pillow": __import__("PIL").__version__, "torch": torch.__version__}
    by_size = {}
    for photo in args.photo_sizes.split(","):
        by_size[photo], more = measure_size(photo.strip(), names, args, root, model)
        versions |= more
    first = next(iter(by_size.values()))
    every = overall(by_size)
    usable = {n: o["x_pil_full_geomean"] for n, o in every.items() if o["usable"]}
    in_process = {n: r for n, r in usable.items() if not n.startswith("pillow_simd")}
    result = {"benchmark": "decode", "machine": machine, "versions": versions,
              "settings": {"images": args.images, "photo_sizes": list(by_size), "size": args.size,
                           "repeats": args.repeats, "source": "photo-like JPEG q90", "threads": 1},
              "clipzoo_decoder": {"decoder": decoder_name(), "dct_scale_margin": SCALE_MARGIN},
              "by_photo_size": by_size, "overall": every, "not_run": not_run,
              "fastest_usable_everywhere": max(usable, key=usable.get),
              "fastest_usable_everywhere_in_process": max(in_process, key=in_process.get),
              # the first photo size's figures at the top level, as before
              "images_per_s": first["images_per_s"], "fidelity": first["fidelity"],
              "fastest_usable": first["fastest_usable"]}
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["table"] = table(result)
    write_result(args.out, result)
    for row in result["table"]["rows"]:
        print("  ".join(str(c) for c in row))
    for photo, res in by_size.items():
        print(f"{photo}: fastest usable {res['fastest_usable']}, in this process {res['fastest_usable_in_process']}; "
              f"clipzoo's decode at {res['clipzoo_vs_fastest_usable_in_process']:.2f}x of it")
    print(f"every size: fastest usable {result['fastest_usable_everywhere']}, in this process "
          f"{result['fastest_usable_everywhere_in_process']}; wrote {args.out}")


if __name__ == "__main__":
    main()
