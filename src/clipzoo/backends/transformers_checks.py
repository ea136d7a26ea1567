"""Checks run on a transformers or sentence-transformers model folder before its files are handed to those
libraries, whose own answers to a hostile folder were tracebacks, hangs or gigabytes: the model class asked for
(``hf_class``), the weights' safetensors headers, the config built and counted on the meta device against the
parameters the weights hold, and the size of the images the image processor makes against the size the model takes.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..checkpoints import (
    check_built_size,
    load_failure_reason,
    not_a_pickle,
    read_json,
    safetensors_numel,
)
from ..errors import BackendMissingError, BadOptionError, CheckpointError, UnsafePickleError, one_line
from ..extras import require

IMAGE_TEXT = ("get_image_features", "get_text_features")
"""What an image-text model class needs: the transformers backend reads its features through both."""

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
"""Where a folder's image processor settings are, in the order transformers reads them."""


def transformers_module():
    """The transformers package; when it is absent, a MissingExtraError naming ``clipzoo[hf]``."""
    return require("transformers", "the transformers backend")


def model_class(class_name: str, needs: tuple[str, ...] = ()):
    """The transformers model class ``class_name`` (``hf_class``), with each method in ``needs``; one line otherwise
    (``"pipeline"``, ``"__version__"`` or ``"AutoTokenizer"`` were raw AttributeErrors and TypeErrors, and
    ``"CLIPVisionModel"`` loaded as an image-text model whose every encode failed)."""
    transformers = transformers_module()
    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise BackendMissingError(f"transformers {transformers.__version__} has no {class_name}; "
                                  "upgrade transformers (pip install -U transformers)")
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise BadOptionError(f"hf_class {class_name!r} is not a transformers model class (a PreTrainedModel such as "
                             "CLIPModel); pass the class the model was saved with")
    missing = [name for name in needs if not callable(getattr(cls, name, None))]
    if missing:
        raise BadOptionError(f"hf_class {class_name!r} has no {' or '.join(missing)}, which the transformers backend "
                             "reads features through; pass an image-text model class (CLIPModel, SiglipModel, …)")
    return cls


def weights_numel(folder: Path) -> int | None:
    """How many parameters the weights ``from_pretrained`` reads in ``folder`` hold (``model.safetensors`` or
    ``pytorch_model.bin``, or the shards their index names). Safetensors headers are checked:
    :func:`~clipzoo.checkpoints.safetensors_numel`'s one line names an empty, truncated or corrupt one. Pickled
    weights are counted through a memory-mapped weights-only read (nothing allocated). None when they cannot be
    counted that way (a pickle asking for code, an old non-zip file, garbage: the real load's one line says which)
    or there are none (``from_pretrained`` says so)."""
    utils = transformers_module().utils
    safetensors = _listed(folder, utils.SAFE_WEIGHTS_NAME, utils.SAFE_WEIGHTS_INDEX_NAME)
    if safetensors:
        return sum(safetensors_numel(path) for path in safetensors)
    pickles = _listed(folder, utils.WEIGHTS_NAME, utils.WEIGHTS_INDEX_NAME)
    counts = [_pickle_numel(path) for path in pickles]
    return sum(counts) if counts and None not in counts else None


def _pickle_numel(path: Path) -> int | None:
    """The numbers the tensors of the PyTorch checkpoint ``path`` hold, read weights-only and memory-mapped (a zip
    checkpoint's storages are not loaded); None when it cannot be read so (its own load reports why)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - refused pickles, old formats and garbage are the real load's to report
        return None
    if not isinstance(state, dict):
        return None
    return sum(value.numel() for value in state.values() if isinstance(value, torch.Tensor))


def _listed(folder: Path, single: str, index: str) -> list[Path]:
    """``folder/single`` when it is there, else the shard files ``folder/index`` names (those that are there)."""
    if (folder / single).exists():
        return [folder / single]
    if not (folder / index).is_file():
        return []
    weight_map = read_json(folder / index).get("weight_map")
    names = sorted({name for name in weight_map.values() if isinstance(name, str)}) if isinstance(weight_map, dict) \
        else []
    return [folder / name for name in names if (folder / name).is_file()]


def check_config_fits(folder: Path, cls) -> None:
    """``folder``'s config.json built as ``cls`` expects it, then the model built on the meta device and counted
    against :func:`weights_numel`, before anything is allocated: a config of wrong types (``"projection_dim":
    "abc"``, ``"text_config": [1]``) raises one line; one that builds far more parameters than the weights hold
    (``vocab_size: 10**7`` in a 10 MB folder allocated 2.7 GB) raises :class:`ArchitectureMismatchError`. ``cls``: a
    model class, or an auto class (``AutoModel``: a sentence-transformers module)."""
    held = weights_numel(folder)
    transformers = transformers_module()
    auto = not issubclass(cls, transformers.PreTrainedModel)
    try:
        config = (transformers.AutoConfig if auto else cls.config_class).from_pretrained(str(folder))
    except OSError:  # no config.json: from_pretrained says so in its own words
        return
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's strict dataclasses raise their own kinds
        raise CheckpointError(f"{folder}: its config.json cannot be built ({type(exc).__name__}: {one_line(exc, 200)})"
                              "; check the config's values") from None
    if held is None:
        return
    try:
        with torch.device("meta"):
            model = cls.from_config(config) if auto else cls._from_config(config)
        built = sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - a config the meta device cannot build: the real build says what is wrong
        return
    check_built_size(str(folder), "its config.json", built, held)


def pickle_refusal(folder: Path, exc: pickle.UnpicklingError, backend: str) -> CheckpointError:
    """The one line for torch's weights-only refusal of a model folder's pickled weights: bytes that are no pickle
    at all (a CheckpointError), or a pickle asking for code (an UnsafePickleError; nothing of it ran)."""
    if not_a_pickle(exc):
        return CheckpointError(f"{folder}: a weights file in it is not a PyTorch checkpoint ({load_failure_reason(exc)}"
                               "); is it truncated or another format? Save the model again")
    return UnsafePickleError(f"{folder}: its weights are a pickle that needs more than tensors to load "
                             f"({load_failure_reason(exc)}); loading it can run arbitrary code, and the {backend} "
                             "backend reads weights only: convert it to safetensors where it was written")


def processor_source(folder: Path) -> str:
    """The file holding ``folder``'s image processor settings, for messages (the folder when neither is there)."""
    return next((str(folder / name) for name in PROCESSOR_FILES if (folder / name).is_file()),
                f"{folder}'s image processor")


def check_image_fits(image_size: int | tuple[int, int], source: str, model_config) -> None:
    """A CheckpointError naming ``source`` (the processor file) when its images are not the size the model's vision
    tower takes (``vision_config.image_size``): a 224-pixel processor on a 32-pixel model loaded, then every image
    encode was a raw ValueError."""
    side = getattr(getattr(model_config, "vision_config", None), "image_size", None)
    if not isinstance(side, int) or isinstance(side, bool):
        return
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if (h, w) != (side, side):
        raise CheckpointError(f"{source} makes images of {h}x{w} pixels but the model takes {side}x{side} "
                              "(config.json vision_config.image_size); save the image processor that came with the "
                              "model")

