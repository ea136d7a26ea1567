"""Where a conversion writes: the checks on ``DST`` (never the source, never a folder of other files) and the
temporary name each output is written under, renamed into place when complete and removed when anything fails."""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..backends.onnx_format import IMAGE_PROCESSOR_DIR, TOKENIZER_DIR
from ..errors import ClipzooError

# files a model folder holds (open_clip's hub layout, HF's save_pretrained, clipzoo's ONNX export, a composite):
# a folder of these, with weights or a clipzoo / open_clip config among them, is one ``--overwrite`` may replace
MODEL_FOLDER_FILES = frozenset({
    "open_clip_config.json", "config.json", "clipzoo_onnx.json", "clipzoo_composite.json", "preprocessor_config.json",
    "processor_config.json", "video_preprocessor_config.json", "generation_config.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "chat_template.json", "model.safetensors.index.json",
    "pytorch_model.bin.index.json", "README.md", ".gitattributes"})
MODEL_SUBFOLDERS = frozenset({TOKENIZER_DIR, IMAGE_PROCESSOR_DIR})  # an ONNX export's, of an HF model
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx.data", ".pt", ".pth", ".msgpack", ".h5", ".ckpt")
# what makes a folder a model's: weights, or a config only a model folder has (config.json alone is any project's)
MODEL_MARKERS = frozenset({"open_clip_config.json", "clipzoo_onnx.json", "clipzoo_composite.json"})


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove(path: Path) -> None:
    """``path`` gone, whatever it is (a link itself, never its target)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def replace(tmp: Path, dst: Path) -> None:
    """``tmp`` renamed to ``dst`` (``--overwrite``): a folder there is removed first; a file or link there is
    replaced itself — a link's target is never written — and removed first when a folder takes its place."""
    if dst.is_symlink() or dst.is_file():
        if tmp.is_dir():
            dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


@contextlib.contextmanager
def staged(dst: Path) -> Iterator[Path]:
    """The temporary name to write ``dst`` under; renamed to ``dst`` when the block completes, removed when it
    fails (a refusal halfway through an HF folder left a full-size hidden ``.DST.tmp-PID`` folder behind)."""
    tmp = tmp_path(dst)
    try:
        yield tmp
        replace(tmp, dst)
    except BaseException:
        remove(tmp)
        raise


def check_not_source(dst: Path, source: "str | os.PathLike | None") -> None:
    """A ``dst`` that is the source model's file or folder, a folder holding it, or anything inside its folder
    would overwrite it, or land in it (a catalogued model's cache folder, pruned with it): refused, whatever
    ``--overwrite`` says — a ``dst`` that does not exist yet too."""
    if source is None or not os.path.exists(source):
        return
    where = dst.parent.resolve() / dst.name  # a link at dst is replaced itself, not followed
    src = Path(source).resolve()
    if where == src or where in src.parents or (src.is_dir() and src in where.parents):
        raise ClipzooError(f"{dst} overlaps the model being converted ({source}): writing there would destroy "
                           "it; choose another destination")


def is_model_entry(entry: Path) -> bool:
    """A model folder's file, or the subfolder of an ONNX export holding an HF tokenizer / image processor."""
    if entry.is_dir() and not entry.is_symlink():
        return entry.name in MODEL_SUBFOLDERS and all(is_model_entry(p) for p in entry.iterdir())
    return entry.is_file() and (entry.name in MODEL_FOLDER_FILES or entry.name.endswith(WEIGHT_SUFFIXES))


def check_replaceable(dst: Path) -> None:
    """``--overwrite`` replaces a file or a model folder — only a model's files, with weights or a model config
    among them — never a folder of other files (a project folder with a ``config.json``, ``src/`` and ``.git/``
    was removed whole) nor the current folder (``DST`` ``sub/..`` removed everything in the current folder)."""
    if dst.is_symlink() or not dst.is_dir():
        return
    if dst == Path.cwd() or dst in Path.cwd().parents:
        raise ClipzooError(f"{dst} is the current folder or holds it: writing there would remove it; choose "
                           "another destination")
    entries = sorted(dst.iterdir())
    other = [p.name for p in entries if not is_model_entry(p)]
    if entries and not other and not any(p.name in MODEL_MARKERS or p.name.endswith(WEIGHT_SUFFIXES)
                                         for p in entries):
        other = [p.name for p in entries]  # model-folder names, but no model in them
    if other:
        raise ClipzooError(f"{dst} is a folder of other files ({', '.join(other[:3])}"
                           f"{', …' if len(other) > 3 else ''}), not a model folder: --overwrite would remove "
                           "them; choose another destination")
