"""Coercion of user inputs (paths, PIL images, arrays, tensors, strings) with clear errors."""
from __future__ import annotations

import numbers
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .constants import COUNTED_TOKENS_MAX, LONG_TEXT_POLICIES, SIDECAR_TEXT_CHARS
from .errors import BadImageError, BadOptionError, BadTextError, shown_text
from .files import NOT_REGULAR, special_file
from .image_bytes import decode_rgb, within_aspect
from .json_text import LONE_SURROGATE


def load_rgb(source, draft_size: int | None = None):
    """Decode ``source`` (a path or a binary file object) to an RGB PIL image; PIL's errors propagate.

    ``draft_size``: for a JPEG whose sides are both at least twice this, let the decoder scale it down
    by 2, 4 or 8 while decoding (PIL's draft mode, DCT scaling) so that both sides stay ≥ ``draft_size``
    — several times faster than a full decode, and a model that resizes to ``draft_size`` sees nearly
    the same pixels (see docs/embedding.md for the measured difference).
    """
    return decode_rgb(source, draft_size)  # EXIF orientation applied, as at query time


def open_image(path: "str | os.PathLike", draft_size: int | None = None):
    """Open an image file as RGB PIL, raising :class:`BadImageError` naming the file on failure.
    ``draft_size``: reduced-size JPEG decoding, see :func:`load_rgb`."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadImageError(f"image {path!r} does not exist; check the path")
    if os.path.isdir(path):
        raise BadImageError(f"image {path!r} is a folder; pass the image files in it "
                            "(or use `clipzoo embed --images DIR`)")
    if special_file(path):
        raise BadImageError(f"image {path!r} {NOT_REGULAR}; pass an image file")
    try:
        return load_rgb(path, draft_size)
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"image {path!r} is refused as a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"image {path!r} cannot be decoded ({exc.__class__.__name__}: {exc}); "
                            "is it a corrupt or non-image file?") from None


def to_pil(item: Any, index: int = 0):
    """One image-like item (path, PIL image, uint8 HWC array / tensor) -> RGB PIL image (its central part when
    it is longer than :data:`~clipzoo.constants.MAX_ASPECT_RATIO` : 1, as a decoded file: :func:`within_aspect`)."""
    from PIL import Image

    if isinstance(item, (str, Path)):
        return open_image(item)
    if isinstance(item, Image.Image):
        check_has_pixels(item.size, index)
        item = within_aspect(item)
        return item.convert("RGB") if item.mode != "RGB" else item
    array = _as_numpy(item)
    if array is not None:
        import numpy as np

        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            raise BadImageError(f"image {index}: an array of shape {tuple(array.shape)} is not an HxWxC image "
                                "(C = 1, 3 or 4); pass uint8 HWC arrays, or preprocessed float tensors (N, 3, H, W)")
        if array.dtype != np.uint8:
            raise BadImageError(f"image {index}: array dtype {array.dtype} is not uint8; pass uint8 HWC pixels "
                                "or a preprocessed float tensor (N, 3, H, W)")
        check_has_pixels((array.shape[1], array.shape[0]), index)
        if array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        return within_aspect(Image.fromarray(np.ascontiguousarray(array[..., :3]), "RGB"))
    if type(item).__name__ == "Tensor":  # a float tensor among a list's items: preprocessed pixels
        raise BadImageError(f"image {index}: a {str(item.dtype).replace('torch.', '')} tensor in a list; pass "
                            "preprocessed tensors stacked as one (N, 3, H, W) tensor (torch.stack), and images in "
                            "a list as file paths, PIL images or uint8 HWC arrays")
    raise BadImageError(f"image {index}: cannot use a {type(item).__name__} as an image; pass a file path, "
                        "a PIL image, a uint8 HWC array or a preprocessed float tensor")


def check_has_pixels(size: "tuple[int, int]", index: int = 0) -> None:
    """A :class:`BadImageError` for an image of width or height 0 (its resize divided by zero)."""
    if min(size) < 1:
        raise BadImageError(f"image {index} is {size[0]}×{size[1]}: it has no pixels")


def _as_numpy(item: Any):
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return None
    if isinstance(item, np.ndarray):
        return item
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if isinstance(item, torch.Tensor) and item.dtype == torch.uint8:
        return item.cpu().numpy()
    return None


def is_float_tensor(x: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def image_items(images: Any) -> list:
    """Normalise an image argument to a list of items (a single path or image becomes a list of one)."""
    from PIL import Image

    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    array = _as_numpy(images)
    if array is not None:
        if array.ndim == 4:
            return list(array)
        return [array]
    if isinstance(images, (list, tuple)):
        if not images:
            raise BadImageError("no images given; pass at least one path, PIL image or array")
        return list(images)
    raise BadImageError(f"cannot use a {type(images).__name__} as images; pass paths, PIL images, "
                        "uint8 arrays or a preprocessed float tensor (N, 3, H, W)")


def check_finite_pixels(x) -> None:
    """A :class:`BadImageError` when a float image tensor holds NaN or an infinity (its rows came back NaN)."""
    import torch

    if not bool(torch.isfinite(x.detach()).all()):
        raise BadImageError(f"the image tensor {tuple(x.shape)} holds NaN or infinite values; pass finite pixels")


def check_pixel_tensor(x, image_size: int | tuple[int, int] | None):
    """A preprocessed float tensor: (3, H, W) -> (1, 3, H, W); checks channels and size."""
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise BadImageError(f"a float image tensor must be (N, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
    check_finite_pixels(x)
    if image_size is not None:
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if tuple(x.shape[-2:]) != hw:
            raise BadImageError(f"a preprocessed image tensor must be {hw[0]}x{hw[1]} for this model, got "
                                f"{x.shape[-2]}x{x.shape[-1]}; pass PIL images or paths, or apply "
                                "model.preprocess first")
    return x


def text_items(texts: Any) -> list[str]:
    """A text argument as a list of strings (a string is one text); a :class:`BadTextError` for anything else, for
    no texts, and for a text that is not valid Unicode (:func:`check_unicode`)."""
    if isinstance(texts, str):
        return check_unicode([texts])
    if isinstance(texts, (list, tuple)):
        if not texts:
            raise BadTextError("no texts given; pass a string or a list of strings")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise BadTextError(f"text {i} is a {type(t).__name__}, not a string; pass strings or a token tensor")
        return check_unicode(list(texts))
    raise BadTextError(f"cannot use a {type(texts).__name__} as texts; pass a string, a list of strings "
                       "or a token tensor (N, L)")


def check_unicode(texts: list[str]) -> list[str]:
    """``texts``, each checked to be valid Unicode: a lone surrogate (what Python makes of bytes that are not
    UTF-8 in a command-line argument or a file name) is a one-line :class:`BadTextError` naming the text, where
    the tokenizers failed with a TypeError from deep inside (Hugging Face) or quietly replaced it (CLIP's BPE)."""
    for i, text in enumerate(texts):
        found = None if text.isascii() else LONE_SURROGATE.search(text)
        if found:
            raise BadTextError(f"text {i} {shown_text(text)} holds a lone surrogate (U+{ord(found.group()):04X} at "
                               f"character {found.start()}): it is not valid Unicode, as bytes that are not UTF-8 "
                               "become; pass UTF-8 text")
    return texts


def check_token_tensor(tokens, context_length: "int | None"):
    """Token ids from ``model.tokenize``: (L,) -> (1, L); a :class:`BadTextError` naming what is wrong for a float
    or bool tensor, another shape, no rows, rows longer than the context, or negative ids (each was an error deep
    inside the text tower)."""
    import torch

    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise BadTextError(f"a token tensor holds integer ids (from model.tokenize), not {tokens.dtype}")
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2 or 0 in tokens.shape:
        raise BadTextError(f"a token tensor is (N, L) with N, L >= 1 (from model.tokenize), got {tuple(tokens.shape)}")
    if context_length and tokens.shape[1] > context_length:
        raise BadTextError(f"a token tensor of {tokens.shape[1]} positions is longer than the model's context "
                           f"length {context_length}; make it with model.tokenize")
    if bool((tokens < 0).any()):
        raise BadTextError("a token tensor holds negative ids; make it with model.tokenize")
    return tokens


def too_long_error(text: str, n_tokens: int, context_length: int) -> BadTextError:
    """The error of a text over the context; its ``cli_message`` names the CLI's flags instead of the keywords.
    ``n_tokens`` past :data:`~clipzoo.constants.COUNTED_TOKENS_MAX` is said as "more than" that many."""
    count = f"more than {COUNTED_TOKENS_MAX}" if n_tokens > COUNTED_TOKENS_MAX else str(n_tokens)
    said = f"text {shown_text(text)} is {count} tokens, longer than the model's context length {context_length}; " \
           "shorten it"
    error = BadTextError(f"{said}, pass truncate=True where the call takes it, or load the model with "
                         "long_text='truncate' or 'chunks'")
    error.cli_message = f"{said} or pass --long-text truncate (or --long-text chunks)"
    return error


def check_long_text(policy: Any) -> str:
    """``policy`` if it is one of :data:`~clipzoo.constants.LONG_TEXT_POLICIES`, else a one-line error (``""``
    too: it is not "the model's default", which is ``None``)."""
    if not isinstance(policy, str) or policy not in LONG_TEXT_POLICIES:
        raise BadTextError(f"long_text={policy!r} is not a policy; use one of {', '.join(LONG_TEXT_POLICIES)}")
    return policy


def text_policy(truncate: bool, long_text: "str | None", default: str) -> str:
    """The long-text policy of a call: ``"truncate"`` for ``truncate=True``, else ``long_text``, else ``default``
    (the model's). ``truncate=True`` with another ``long_text`` is a contradiction, refused in one line (its
    ``cli_message`` in the CLI's flags) rather than settled silently."""
    if long_text is not None:
        check_long_text(long_text)
    if truncate and long_text not in (None, "truncate"):
        error = BadTextError(f"truncate=True contradicts long_text={long_text!r}; pass one of them")
        error.cli_message = f"--truncate contradicts --long-text {long_text}; pass one of them"
        raise error
    return "truncate" if truncate else check_long_text(default if long_text is None else long_text)


# a sentence ends at . ! ? ; : before whitespace, or at a full-width mark (CJK writes no space after it) and the
# closing quotes or brackets after that
SENTENCE_END = re.compile("[.!?;:](?=\\s)|[\u3002\uff01\uff1f\uff1b\uff1a\uff0e\uff61]"
                          "[\u300d\u300f\uff09\u3011\u3015\u3009\u300b\u201d\u2019\"')\\]]*")
UNIT_BYTES_PER_TOKEN = 8  # a unit over 8 UTF-8 bytes per token of the context is split before it is counted


def split_long_text(text: str, fits: Callable[[str], bool], count: "Callable[[str], int] | None",
                    context_length: int) -> list[str]:
    """``text`` in pieces that each ``fits`` the context, in time linear in the text: whole sentences packed
    greedily in order; a sentence that does not fit alone is packed word by word, and a word that does not fit
    alone by runs of characters. ``count`` (tokens of a string, special tokens included; None: its UTF-8 bytes,
    never fewer than the tokens) is called once per unit, the packing adds counts, and each piece is checked once
    with ``fits`` (split again should the counts not add up, as they need not across a run without spaces).
    Sentences end at . ! ? ; : before whitespace and at 。！？ even with none after them (CJK). Pieces are the
    units joined with one space where the text had whitespace between them, with none where it had none (a run of
    characters, a CJK sentence); empty pieces never occur."""
    count = count or (lambda s: len(s.encode("utf-8")) + 2)
    overhead = count("")
    budget = max(context_length - overhead, 1)
    units: list[tuple[str, str, int]] = []  # (what joins it to the unit before, the unit, its tokens)
    for glue, sentence in sentences(text):
        n = counted(sentence, count, overhead, context_length)
        if n is not None and n <= budget:
            units.append((glue, sentence, n))
            continue
        for k, word in enumerate(sentence.split()):
            n = counted(word, count, overhead, context_length)
            if n is not None and n <= budget:
                units.append((" " if k else glue, word, n))
            else:
                runs = character_runs(word, max(budget - 1, 1))
                units.extend(("" if j else " " if k else glue, run, count(run) - overhead)
                             for j, run in enumerate(runs))
    pieces: list[list[tuple[str, str, int]]] = []
    total = 0
    for unit in units:
        if pieces and total + unit[2] <= budget:
            pieces[-1].append(unit)
            total += unit[2]
        else:
            pieces.append([unit])
            total = unit[2]
    return [piece for group in pieces for piece in settle(group, fits)]


def sentences(text: str) -> list[tuple[str, str]]:
    """``(glue, sentence)`` of each non-blank sentence of ``text``: glue ``" "`` when whitespace separates it from
    the one before, ``""`` when nothing does (after 。)."""
    out: list[tuple[str, str]] = []
    start = 0
    for end in [m.end() for m in SENTENCE_END.finditer(text)] + [len(text)]:
        chunk, start = text[start:end], end
        if chunk.strip():
            out.append((" " if chunk[:1].isspace() else "", chunk.strip()))
    return out


def counted(unit: str, count: Callable[[str], int], overhead: int, context_length: int) -> "int | None":
    """The tokens of ``unit`` without the special ones; None, uncounted, when it is so long it cannot fit (its BPE
    would cost more than the context: a long run of letters is quadratic)."""
    if len(unit) * 4 > UNIT_BYTES_PER_TOKEN * context_length and \
            len(unit.encode("utf-8")) > UNIT_BYTES_PER_TOKEN * context_length:
        return None
    return count(unit) - overhead


def character_runs(word: str, max_bytes: int) -> list[str]:
    """``word`` in consecutive runs of at most ``max_bytes`` UTF-8 bytes (at least one character each): each
    fits a context of ``max_bytes`` tokens, since a token holds at least one byte."""
    if word.isascii():
        return [word[i:i + max_bytes] for i in range(0, len(word), max_bytes)]
    runs, start, size = [], 0, 0
    for i, char in enumerate(word):
        width = len(char.encode("utf-8"))
        if size + width > max_bytes and i > start:
            runs.append(word[start:i])
            start, size = i, 0
        size += width
    runs.append(word[start:])
    return runs


def settle(group: "list[tuple[str, str, int]]", fits: Callable[[str], bool]) -> list[str]:
    """The piece of a packed ``group`` of units, checked once with ``fits``; split in halves while it does not fit
    (a single unit at its whitespace, else at its middle character)."""
    piece = group[0][1] + "".join(glue + unit for glue, unit, _ in group[1:])
    if fits(piece):
        return [piece]
    if len(group) > 1:
        half = len(group) // 2
        return settle(group[:half], fits) + settle(group[half:], fits)
    words = piece.split()
    if len(words) > 1:
        parts = [(" ", w, 0) for w in words]
    elif len(piece) > 1:
        parts = [("", piece[:len(piece) // 2], 0), ("", piece[len(piece) // 2:], 0)]
    else:
        return [piece]  # one character over the context: the tokenizer cuts it
    return settle(parts[:len(parts) // 2], fits) + settle(parts[len(parts) // 2:], fits)


def group_means(feats, sizes: "list[int]"):
    """The rows of ``feats`` in consecutive groups of ``sizes``: a group of one as it is, a larger one the mean of
    its L2-normalised rows (the features of a text encoded in pieces)."""
    import torch
    import torch.nn.functional as F

    out, start = [], 0
    for n in sizes:
        rows = feats[start:start + n]
        start += n
        out.append(rows[0] if n == 1 else F.normalize(rows, dim=-1).mean(dim=0))
    return torch.stack(out)


def sidecar_text(text: str) -> str:
    """``text`` as an embeddings sidecar lists it: whole up to :data:`~clipzoo.constants.SIDECAR_TEXT_CHARS`
    characters, else its beginning and ``… [N characters]``, the whole no longer than that (so listing it again
    changes nothing)."""
    if len(text) <= SIDECAR_TEXT_CHARS:
        return text
    tail = f"\u2026 [{len(text)} characters]"
    return text[:SIDECAR_TEXT_CHARS - len(tail)] + tail


def real_value(value: Any) -> "int | float | None":
    """``value`` as a Python int or float when it is one real number — Python's, numpy's (``np.float32(0.1)`` from
    a sweep) or a 0-d array or tensor — and not a bool; None for anything else (a string, None, a bool, an array
    of several values). ``10**400`` stays an int: callers that need a float say it is past float's range."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return value if isinstance(value, (int, float)) else float(value)


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` if it is a whole number of at least 1; otherwise a :class:`~clipzoo.errors.BadOptionError`
    naming it (0 was a ``range()`` error, -1 an empty ``torch.cat``, 1.5 a TypeError)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise BadOptionError(f"batch size must be a whole number, got {batch_size!r}")
    if int(batch_size) < 1:
        raise BadOptionError(f"batch size must be at least 1, got {batch_size}")
    return int(batch_size)


def batched(items: Sequence, size: int):
    size = check_batch_size(size)
    for start in range(0, len(items), size):
        yield items[start:start + size]


def map_images(items: list, transform: Callable, workers: int = 0):
    """Decode and preprocess items (in a thread pool when ``workers`` > 0; PIL releases the GIL)."""
    if workers and len(items) > 1:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda p: transform(to_pil(p[1], p[0])), enumerate(items)))
    return [transform(to_pil(item, i)) for i, item in enumerate(items)]
