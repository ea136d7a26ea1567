"""Modalities as objects: :data:`IMAGE`, :data:`TEXT`, :data:`AUDIO`.

Each is a ``str`` subclass, so it *is* the string it was before (``IMAGE == "image"``, same hash, JSON
writes ``"image"``, ``"image" in card.modalities`` still works) and it owns two things:

- ``coerce(inputs, comparator)``: a user's input -> what the comparator's encoder takes (a list of image
  items or a float pixel tensor; a token tensor; a list of audio items), with the clear errors of
  :mod:`clipzoo.inputs`;
- ``encoder``: the name of the Comparator method that encodes it (``encode_image``, ``encode_text``,
  ``encode_audio``).

``Comparator.encode(modality, inputs)`` dispatches through these. This module imports nothing heavy, so
``import clipzoo`` stays fast.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .audio import audio_list, read_audio_file
from .errors import BadAudioError, BadImageError, BadTextError, ClipzooError
from .extras import require
from .files import checked_file
from .inputs import check_pixel_tensor, image_items, is_float_tensor, open_image, text_items, to_pil
from .video import read_all_frames, video_items, write_video


class Modality(str):
    """One input modality. Compares equal to its name; ``coerce`` normalises inputs for a comparator."""

    encoder: str = ""

    def __new__(cls, name: str):
        self = super().__new__(cls, name)
        self.encoder = f"encode_{name}"
        return self

    @property
    def name(self) -> str:
        return str.__str__(self)

    def coerce(self, inputs: Any, comparator: Any = None) -> Any:  # pragma: no cover - overridden
        return inputs

    # reading and writing one item (mmc's Modality API); a registered modality may bring its own functions
    reader: "Callable[[Path], Any] | None" = None
    writer: "Callable[[Path, Any], Any] | None" = None

    def read_from_disk(self, path: "str | os.PathLike") -> Any:
        """One item of this modality from a file, as its encoder takes it. The default (mmc's) is text: the
        file's contents as a ``str``; image and audio override it; a registered modality uses its ``read``."""
        path = existing_file(path, self)
        if self.reader is not None:
            return self.reader(path)
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise BadTextError(f"{self.name} file {str(path)!r} is not UTF-8 text; save it as UTF-8") from None

    def write_to_disk(self, path: "str | os.PathLike", obj: Any) -> Path:
        """Write one item of this modality to ``path`` (the inverse of :meth:`read_from_disk`); returns the path."""
        path = Path(os.fspath(path))
        if self.writer is not None:
            self.writer(path, obj)
            return path
        if not isinstance(obj, str):
            raise BadTextError(f"cannot write a {type(obj).__name__} as {self.name} to {str(path)!r}; pass a str")
        path.write_text(obj, encoding="utf-8")
        return path

    # the three objects are singletons: copying or pickling gives back the same object
    def __reduce__(self):
        return (get_modality, (str.__str__(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


class _Image(Modality):
    def read_from_disk(self, path: "str | os.PathLike") -> Any:
        """An image file -> an RGB PIL image (EXIF orientation applied), as ``encode_image`` takes it."""
        return open_image(existing_file(path, self))

    def write_to_disk(self, path: "str | os.PathLike", obj: Any) -> Path:
        """A PIL image or uint8 HWC array -> an image file whose format follows the suffix (.png, .jpg, …)."""
        path = Path(os.fspath(path))
        try:
            to_pil(obj).save(path)
        except (ValueError, KeyError) as exc:
            raise BadImageError(f"cannot write an image to {str(path)!r} ({exc}); use a suffix such as .png "
                                "or .jpg") from None
        return path

    def coerce(self, inputs: Any, comparator: Any = None) -> Any:
        """A float tensor -> checked pixels (N, 3, H, W) at the model's size (already preprocessed);
        anything else -> a list of image items (paths, PIL images, uint8 arrays)."""
        if is_float_tensor(inputs):
            return check_pixel_tensor(inputs, getattr(comparator, "image_size", None))
        return image_items(inputs)


class _Text(Modality):
    def coerce(self, inputs: Any, comparator: Any = None) -> Any:
        """Strings -> the comparator's token tensor (a list of strings without a comparator);
        a token tensor passes through as (N, L)."""
        import torch

        if isinstance(inputs, torch.Tensor):
            return inputs if inputs.ndim == 2 else inputs.unsqueeze(0)
        texts = text_items(inputs)
        return comparator.tokenize(texts) if comparator is not None else texts


class _Audio(Modality):
    def read_from_disk(self, path: "str | os.PathLike") -> Any:
        """An audio file -> ``(samples, sample_rate)``: float64 samples (frames, channels), as ``encode_audio``
        takes them."""
        return read_audio_file(existing_file(path, self))  # undecodable: BadAudioError naming it

    def write_to_disk(self, path: "str | os.PathLike", obj: Any) -> Path:
        """A ``(samples, sample_rate)`` pair -> an audio file whose format follows the suffix (.wav, .flac, .ogg)."""
        path = Path(os.fspath(path))
        if not (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], (int, float))):
            raise BadAudioError(f"cannot write a {type(obj).__name__} as audio to {str(path)!r}; pass a "
                                "(samples, sample_rate) pair")
        samples, rate = obj
        samples = samples.detach().cpu().numpy() if hasattr(samples, "detach") else samples
        try:
            require("soundfile", "writing audio files").write(str(path), samples, int(rate))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise BadAudioError(f"cannot write audio to {str(path)!r} ({exc}); use .wav, .flac or .ogg") from None
        return path

    def coerce(self, inputs: Any, comparator: Any = None) -> Any:
        """A path, an array / tensor, or a ``(array, sample_rate)`` pair -> a list of such items
        (:func:`clipzoo.audio.audio_list`). Decoding and resampling belong to the audio backend (its
        ``encode_audio``)."""
        return audio_list(inputs)


class _Video(Modality):
    def read_from_disk(self, path: "str | os.PathLike") -> Any:
        """A video file -> its frames, in order, as RGB PIL images (:func:`clipzoo.video.read_all_frames`)."""
        return read_all_frames(path)  # missing / folder / undecodable: BadVideoError naming it

    def write_to_disk(self, path: "str | os.PathLike", obj: Any) -> Path:
        """Frames (a list, or a (T, H, W, C) uint8 array) -> a video file; the codec follows the suffix."""
        return write_video(path, obj)

    def coerce(self, inputs: Any, comparator: Any = None) -> Any:
        """A video file path, a list of frames, a uint8 array (T, H, W, C), or a list of those -> a list of
        video items (paths or frame lists); decoding and sampling belong to :mod:`clipzoo.video`."""
        return video_items(inputs)


IMAGE = _Image("image")
TEXT = _Text("text")
AUDIO = _Audio("audio")
VIDEO = _Video("video")  # any image–text model encodes it by its frames; X-CLIP & co natively (clipzoo.video)
MODALITIES = {m.name: m for m in (IMAGE, TEXT, AUDIO, VIDEO)}


def get_modality(name: "str | Modality") -> Modality:
    """``"image"`` / ``IMAGE`` / ``"Image"`` -> the :data:`IMAGE` object; unknown names raise ClipzooError."""
    if isinstance(name, Modality):
        return name
    key = str(getattr(name, "name", name)).strip().lower()
    try:
        return MODALITIES[key]
    except KeyError:
        raise ClipzooError(f"unknown modality {name!r}; use one of {', '.join(MODALITIES)}") from None


# ------------------------------------------------------------------ files and custom modalities
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
BUILTIN_MODALITIES = frozenset(MODALITIES)


def existing_file(path: "str | os.PathLike", modality: "Modality") -> Path:
    """``path`` as a Path when it is a file; a one-line error naming it otherwise."""
    name = str.__str__(modality)
    error = {"image": BadImageError, "audio": BadAudioError}.get(name, BadTextError)
    return checked_file(path, f"{name} file", error, "pass a file")[0]


def register_modality(modality: "str | Modality", *, encoder: str | None = None,
                      read: "Callable[[Path], Any] | None" = None, write: "Callable[[Path, Any], Any] | None" = None,
                      coerce: "Callable[[Any, Any], Any] | None" = None, overwrite: bool = False) -> Modality:
    """Make a new modality known (mmc's custom modalities): ``get_modality(name)``, cards' ``modalities`` and
    ``Comparator.encode(name, …)`` then accept it.

    ``modality``: a name (lower-case letters, digits, ``_``) or a :class:`Modality` object made by the caller.
    ``encoder``: the Comparator method that encodes it (default ``encode_<name>``); ``read`` / ``write``: how one
    item is read from / written to a file (default: text, as mmc's); ``coerce(inputs, comparator)``: how a
    user's input is normalised (default: as given). Returns the registered object. The built-in modalities
    cannot be replaced; another registered name needs ``overwrite=True``.
    """
    obj = modality if isinstance(modality, Modality) else None
    name = str.__str__(modality).strip().lower() if obj is not None else str(modality).strip().lower()
    if not _NAME.match(name):
        raise ClipzooError(f"modality name {str(modality)!r} is not a lower-case identifier; use letters, "
                           "digits and '_', starting with a letter (e.g. 'depth_map')")
    if name in BUILTIN_MODALITIES:
        raise ClipzooError(f"modality {name!r} is built in and cannot be re-registered; choose another name")
    if name in MODALITIES and not overwrite:
        raise ClipzooError(f"modality {name!r} is already registered; pass overwrite=True to replace it")
    if obj is None or str.__str__(obj) != name:
        obj = Modality(name)
    if encoder is not None:
        obj.encoder = encoder
    if read is not None:
        obj.reader = read
    if write is not None:
        obj.writer = write
    if coerce is not None:
        obj.coerce = coerce  # an instance attribute: called as coerce(inputs, comparator)
    MODALITIES[name] = obj
    return obj


def unregister_modality(name: "str | Modality") -> None:
    """Forget a registered modality (built-in ones stay)."""
    key = str.__str__(name) if isinstance(name, Modality) else str(name).strip().lower()
    if key in BUILTIN_MODALITIES:
        raise ClipzooError(f"modality {key!r} is built in and cannot be unregistered")
    MODALITIES.pop(key, None)


def supports_modality(modalities: "tuple | list", modality: "str | Modality") -> bool:
    """Whether ``modalities`` (a card's or a comparator's) include ``modality`` (a name or object; an unknown
    name is simply not supported)."""
    key = str.__str__(modality) if isinstance(modality, Modality) else str(getattr(modality, "name", modality))
    return key.strip().lower() in {str(m).lower() for m in modalities}
