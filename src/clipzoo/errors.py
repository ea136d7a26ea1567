"""Errors a user can cause. Each message names the input and says what to do.

The CLI prints ``str(err)`` on one line and exits with status 2 for any :class:`ClipzooError`.
"""
from __future__ import annotations

import errno
import os
import sys
import warnings

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class ClipzooError(Exception):
    """Base class of every error caused by user input."""


class UnknownModelError(ClipzooError, KeyError):
    """A model spec that matches no card, file or folder."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class AmbiguousModelError(ClipzooError):
    """A query that matches more than one card where exactly one is needed."""


class CheckpointError(ClipzooError):
    """A checkpoint file or folder that cannot be read as any supported format."""


class UnsafePickleError(CheckpointError):
    """A pickle that needs arbitrary code execution to load, refused without ``trust_pickle=True``."""


class ArchitectureMismatchError(CheckpointError):
    """Weights that do not fit the architecture they are loaded into."""


class ModelNotCachedError(ClipzooError):
    """A hub model that is not in the local cache while the hub cannot be reached."""


class DownloadError(ClipzooError):
    """A download that failed or whose checksum does not match."""


class BadImageError(ClipzooError, ValueError):
    """An image input that cannot be decoded or has the wrong shape or type."""


class BadAudioError(ClipzooError, ValueError):
    """An audio input that cannot be decoded, is empty, has the wrong shape, or lacks a sample rate."""


class BadTextError(ClipzooError, ValueError):
    """A text input of the wrong type, or too long for the model's context."""


class BackendMissingError(ClipzooError, ImportError):
    """An optional dependency that a backend needs is not installed."""


class UnsupportedError(ClipzooError):
    """An operation that the model or backend cannot do (e.g. a modality it lacks)."""


class DatasetError(ClipzooError, ValueError):
    """A data set that cannot be read: missing files or columns, empty, unknown layout, bad records."""


class EvalInputError(ClipzooError, ValueError):
    """Evaluation input that cannot be scored: empty, mismatched lengths, wrong shape."""


class BadOptionError(ClipzooError, ValueError):
    """An argument outside what it can be: a batch size of 0, a cutout of size 0, a weight that is not a number."""


class NotFoundError(ClipzooError, LookupError):
    """Something asked for by id or name that does not exist (an index item, a partition)."""


class MissingExtraError(BackendMissingError):
    """A feature whose optional extra (``pip install 'clipzoo[NAME]'``) is not installed."""


def one_line(exc: object, limit: "int | None" = None) -> str:
    """An exception's message (or any text) on one line, cut at ``limit`` characters; its type's name when it has
    none. What an error quoting another library's error shows of it (theirs run to several lines and kilobytes)."""
    text = " ".join(str(exc).split())
    return (text[:limit] if limit is not None else text) or type(exc).__name__


def shown_text(text: str, width: int = 60) -> str:
    """``text`` as an error quotes it: its repr, cut to ``width`` characters with ``...`` (a prompt, a template)."""
    return repr(text if len(text) <= width else text[:width - 3] + "...")


def write_refused(path: object, exc: BaseException, *, elsewhere: str = "", kept: str = "") -> ClipzooError:
    """The one line for a write the file system refused: ``no space left`` for a full disk or quota, else (a file
    size limit, a read-only or failing disk, the folder's permissions) what was refused and what to check before
    rerunning. ``elsewhere``: where else it may go (``" (or pass another cache_dir)"``); ``kept``: what stays intact
    (``" (the previous index is unchanged)"``)."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return ClipzooError(f"no space left writing {path}; free some space{elsewhere} and rerun{kept}")
    reason = one_line(getattr(exc, "strerror", None) or exc, 200)
    return ClipzooError(f"cannot write {path} ({reason}): check the disk, the file size limit (ulimit -f) and the "
                        f"folder's permissions{elsewhere}, then rerun{kept}")


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside clipzoo (what Python 3.12's ``skip_file_prefixes``
    does), so that the warning names the user's line whichever path through the library led to it — a fixed
    ``stacklevel`` names a line inside clipzoo as soon as another function calls the one that warns."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level - 1 if frame is None else level)
