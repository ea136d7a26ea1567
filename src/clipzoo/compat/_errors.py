"""The drop-ins' errors: clipzoo's, and also the ``RuntimeError`` the originals raise for the same mistake.

openai's ``clip.load`` and open_clip's factory raise ``RuntimeError`` for an unknown or unreadable model, a bad
device, a failed download or checksum; code written for them catches ``RuntimeError``. Each class here is one
of clipzoo's errors and a ``RuntimeError``, so both ``except RuntimeError`` and ``except CheckpointError`` (…)
catch it; the message is clipzoo's one line, unchanged.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import (
    AmbiguousModelError,
    ArchitectureMismatchError,
    CheckpointError,
    ClipzooError,
    DownloadError,
    ModelNotCachedError,
    UnknownModelError,
    UnsafePickleError,
    UnsupportedError,
)

__all__ = ["ModelNotFoundError", "LoadError", "AmbiguousNameError", "CheckpointLoadError", "UnsafePickleLoadError",
           "ArchitectureLoadError", "NotCachedError", "DownloadFailedError", "UnsupportedOptionError",
           "as_runtime_error", "runtime_errors"]


class ModelNotFoundError(UnknownModelError, RuntimeError):
    """openai raises RuntimeError for an unknown name; this is both that and clipzoo's error."""


class LoadError(ClipzooError, RuntimeError):
    """A model that cannot be placed where asked (a device that is not one, CUDA without a GPU)."""


class AmbiguousNameError(AmbiguousModelError, RuntimeError):
    """A name that matches several registry models (open_clip and openai: a name they do not know)."""


class CheckpointLoadError(CheckpointError, RuntimeError):
    """A file or folder that is no checkpoint clipzoo reads."""


class UnsafePickleLoadError(UnsafePickleError, RuntimeError):
    """A pickle that needs code to load (torch.load with weights_only refuses it as well)."""


class ArchitectureLoadError(ArchitectureMismatchError, RuntimeError):
    """Weights that do not fit the architecture (torch's load_state_dict raises RuntimeError)."""


class NotCachedError(ModelNotCachedError, RuntimeError):
    """Weights that are not cached while the hub or URL cannot be reached (open_clip: "Failed to download …")."""


class DownloadFailedError(DownloadError, RuntimeError):
    """A download that failed or whose SHA-256 does not match (openai's ``_download``: RuntimeError)."""


class UnsupportedOptionError(UnsupportedError, RuntimeError):
    """An option the model cannot take (a pretrained tag that contradicts the model named)."""


_TWINS: dict[type, type] = {
    ClipzooError: LoadError, UnknownModelError: ModelNotFoundError, AmbiguousModelError: AmbiguousNameError,
    CheckpointError: CheckpointLoadError, UnsafePickleError: UnsafePickleLoadError,
    ArchitectureMismatchError: ArchitectureLoadError, ModelNotCachedError: NotCachedError,
    DownloadError: DownloadFailedError, UnsupportedError: UnsupportedOptionError,
}
_OTHER_BUILTINS = (ValueError, ImportError, LookupError, OSError, TypeError)


def as_runtime_error(exc: ClipzooError) -> BaseException:
    """``exc`` as its RuntimeError twin (same message and attributes); ``exc`` itself when it already is a
    RuntimeError, or a ValueError / ImportError / … that the originals raise as such too."""
    if isinstance(exc, RuntimeError):
        return exc
    twin = _TWINS.get(type(exc))
    if twin is None:
        if isinstance(exc, _OTHER_BUILTINS):
            return exc
        twin = next((_TWINS[cls] for cls in type(exc).__mro__ if cls in _TWINS), LoadError)
    out = twin(*exc.args)
    out.__dict__.update(exc.__dict__)
    return out


@contextlib.contextmanager
def runtime_errors() -> Iterator[None]:
    """Re-raise clipzoo's errors from the block as their RuntimeError twins (the originals' exception type)."""
    try:
        yield
    except ClipzooError as exc:
        twin = as_runtime_error(exc)
        if twin is exc:
            raise
        raise twin from None
