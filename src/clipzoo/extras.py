"""Optional extras: which pip extra brings which package, and the one way to import one lazily.

>>> faiss = require("faiss", "search", "the search index")   # ImportError -> MissingExtraError, one line
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

# import name -> (pip distribution, clipzoo extra that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "faiss": ("faiss-cpu", "search"),
    "fastapi": ("fastapi", "search"),
    "uvicorn": ("uvicorn", "search"),
    "multipart": ("python-multipart", "search"),
    "sklearn": ("scikit-learn", "eval"),
    "scipy": ("scipy", "eval"),
    "matplotlib": ("matplotlib", "eval"),
    "vision_datasets": ("vision-datasets", "eval"),
    "mteb": ("mteb", "eval"),
    "transformers": ("transformers", "hf"),
    "sentence_transformers": ("sentence-transformers", "sbert"),
    "soundfile": ("soundfile", "audio"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "onnxscript": ("onnxscript", "onnx"),
    "openvino": ("openvino", "openvino"),  # runtime 'openvino-int8'
    "timm": ("timm", "train"),
    "peft": ("peft", "train"),
    "tensorboard": ("tensorboard", "train"),
    "s3fs": ("s3fs", "s3"),
    "webdataset": ("webdataset", "eval"),
    "jax": ("jax", "jax"), "jaxlib": ("jaxlib", "jax"), "flax": ("flax", "jax"), "optax": ("optax", "jax"),
    "orbax": ("orbax-checkpoint", "jax"),
    "pyarrow": ("pyarrow", "search"),
    "fastapi_offline": ("fastapi-offline", "search"),  # /docs and /redoc's files, served offline
    "pymilvus": ("pymilvus", "milvus"),
    "av": ("av", "video"),  # PyAV: video files
    "mindspore": ("mindspore", "mindspore"),
    "milvus_lite": ("milvus-lite", "milvus"),
    "ray": ("ray", "ray"),  # --engine ray (embed/ray_engine.py)
    "simplejpeg": ("simplejpeg", "decode"),  # the embedding path's faster JPEG decode (embed/decode.py); optional
    "clip": ("clip-anytorch", ""),  # openai's own package (`clipzoo parity --against openai`); in no extra
    "open_clip": ("open_clip_torch", ""),  # in the base install
}


def install_hint(name: str) -> str:
    """``pip install 'clipzoo[EXTRA]'`` for import name ``name`` (or ``pip install PACKAGE``)."""
    package, extra = PACKAGES.get(name.split(".")[0], (name.split(".")[0], None))
    return f"pip install 'clipzoo[{extra}]'" if extra else f"pip install {package}"


def missing(name: str, feature: str) -> MissingExtraError:
    """The one-line error for ``feature`` needing the absent package ``name``."""
    package = PACKAGES.get(name.split(".")[0], (name.split(".")[0], None))[0]
    return MissingExtraError(f"{feature} needs {package}, which is not installed; {install_hint(name)}")


def require(name: str, feature: str) -> ModuleType:
    """Import module ``name`` for ``feature``; a missing package raises :class:`MissingExtraError`."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] == name.split(".")[0]:
            raise missing(name, feature) from None
        raise
