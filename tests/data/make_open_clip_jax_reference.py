"""Writes open_clip_jax_reference.npz: open_clip_jax's own TensorFlow outputs, for tests/test_compat_open_clip_jax.py.

Run where TensorFlow and tensorflow-text are installed (not in clipzoo's environments), with the original's
``open_clip_jax/clip`` folder (BobMcDear/open-clip-jax, commit 89bab59) on the path:

    PYTHONPATH=path/to/open-clip-jax/open_clip_jax/clip python tests/data/make_open_clip_jax_reference.py

Its ``image_transforms.py`` imports ``jax`` (for ``tf_to_np`` only) and ``.constants``; a stub ``jax`` and a
top-level ``constants`` are enough. Stored: random uint8 pictures, their eval transform at ``SIZE`` (resize,
crop, normalise: float32) and the tokens of ``TEXTS`` (int32 [n, 77]).
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np

SIZE = 32
SHAPES = [(32, 32), (40, 80), (81, 47), (20, 30), (37, 36), (100, 23), (15, 15)]
TEXTS = ["A diagram", "A dog", "a  photo of a CAT!!", "it's 2024, don't   worry", "", "  hello\tworld\n",
         "emoji 😀 ok", "ÄRGER über Straße", "fish &amp; chips", "a\u00a0b c\u3000d", "<|endoftext|> x", "x६y",
         "Hello,World...", "tab\there\vvert", "e\u0301cole", "日本語のテキスト", "O'Neil's 3.14 $100",
         " ".join(["word"] * 100), "longword" * 40]


def main(out: Path) -> None:
    from tokenizer import tokenize  # the original's clip/tokenizer.py (TensorFlow + tensorflow_text)

    sys.modules.setdefault("jax", types.ModuleType("jax"))  # after TensorFlow, which probes for a real jax
    import constants  # the original's clip/constants.py, imported as ``.constants`` there
    source = (Path(constants.__file__).parent / "image_transforms.py").read_text()
    module = types.ModuleType("image_transforms")
    exec(compile(source.replace("from .constants import", "from constants import"), "image_transforms.py", "exec"),
         module.__dict__)

    transform = module.create_image_transforms(train=False, input_format="image", do_batch_transforms=False,
                                               size=SIZE)
    rng = np.random.default_rng(0)
    arrays = {}
    for i, (h, w) in enumerate(SHAPES):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arrays[f"image_{i}"] = image
        arrays[f"eval_{i}"] = transform(image).numpy()
    arrays["texts"] = np.array(TEXTS)
    arrays["tokens"] = tokenize(TEXTS).numpy()
    np.savez_compressed(out, size=np.array(SIZE), **arrays)


if __name__ == "__main__":
    main(Path(__file__).with_name("open_clip_jax_reference.npz"))
