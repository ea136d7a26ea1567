"""Shards of records: a list known up front (image folder, CSV), a webdataset tar, a TFRecord file,
and :class:`DataSource`, the data set they make up."""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..constants import MAX_RECORD_BYTES
from ..errors import DatasetError
from ..files import NOT_REGULAR, special_file, tar_end_problem
from .locations import open_binary
from .records import IMAGE_EXTENSIONS, Record, is_index
from .tfrecord import iter_tfrecord_records

__all__ = ["CAPTION_EXTENSIONS", "LABEL_EXTENSIONS", "ListShard", "SampleFields", "split_member", "TarShard",
           "is_index", "TFRecordShard", "DataSource", "chunk"]

CAPTION_EXTENSIONS = ("txt", "caption", "text")
LABEL_EXTENSIONS = ("cls", "label")


# ------------------------------------------------------------------ shards
@dataclass
class ListShard:
    """Records known up front (image folder, CSV)."""

    name: str
    records: list[Record]

    def __call__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class SampleFields:
    """Which member / JSON field of a sample holds the image, the captions and the label."""

    image: "str | None" = None
    caption: "str | None" = None
    label: "str | None" = None
    classnames: "list[str] | None" = None
    multi_caption: bool = True  # a caption text holds one caption per line (CLIP_benchmark retrieval sets)

    def label_of(self, value: Any, where: str, by_name: bool = False) -> "int | None":
        """A sample's class index: an integer (a whole float such as 2.0 too) or a digit string is the index, any
        other text a class name; ``by_name``: every text is a name (a CSV column that mixes names and digits)."""
        if value is None:
            return None
        if isinstance(value, bytes):
            value = _utf8(value, where, "label").strip()
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
            if value is None:
                return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():  # 2.9 was taken as class 2; NaN crashed
                raise DatasetError(f"{where}: label {value!r} is not a whole number; labels are class indices")
            return int(value)
        text = str(value).strip()
        if not by_name and is_index(text):
            return int(text)
        if self.classnames is None:
            raise DatasetError(f"{where}: label {text!r} is a class name but no class names are known; "
                               f"add classnames.txt next to the data or pass --classnames")
        try:
            return self.classnames.index(text)
        except ValueError:
            raise DatasetError(f"{where}: label {text!r} is not one of the {len(self.classnames)} class names "
                               f"({', '.join(self.classnames[:6])}{', …' if len(self.classnames) > 6 else ''}); "
                               f"the class names do not match the data") from None

    def wanted_extensions(self) -> frozenset:
        """The members of a tar sample that any field may come from (the rest are skipped unread)."""
        images = (self.image,) if self.image else IMAGE_EXTENSIONS
        captions = (self.caption,) if self.caption else CAPTION_EXTENSIONS
        labels = (self.label,) if self.label else LABEL_EXTENSIONS
        return frozenset((*images, *captions, *labels, "json"))

    def captions_of(self, value: Any, where: str = "sample") -> list[str]:
        if value is None:
            return []
        if isinstance(value, bytes):
            value = _utf8(value, where, "caption")
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        text = str(value)
        lines = text.splitlines() if self.multi_caption else [text]
        return [ln.strip() for ln in lines if ln.strip()]


def _utf8(data: bytes, where: str, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{where}: the {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def split_member(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first '.' of the basename; extension = the rest."""
    directory, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    return posixpath.join(directory, stem) if directory else stem, ext.lower()


@dataclass
class TarShard:
    """One webdataset tar (local or URL): members ``KEY.ext`` grouped into samples."""

    url: str
    fields: SampleFields = field(default_factory=SampleFields)

    @property
    def name(self) -> str:
        return self.url

    def __call__(self) -> Iterator[Record]:
        if "://" not in self.url and special_file(self.url):  # a fifo named as a shard: reading it waits for ever
            raise DatasetError(f"shard {self.url!r} {NOT_REGULAR}; pass a .tar file")
        try:
            fh = open_binary(self.url)
        except FileNotFoundError:
            raise DatasetError(f"shard {self.url!r} does not exist") from None
        with fh:
            try:
                with tarfile.open(fileobj=fh, mode="r|*") as tar:
                    tar.fileobj = last = _LastRead(tar.fileobj)  # sees the block the walk stopped at
                    yield from self._samples(tar)
                    cut = tar_end_problem(last.data, tar.offset) if last.data is not None else None
            except (tarfile.TarError, EOFError, OSError) as err:
                raise DatasetError(f"shard {self.url!r} is not a readable tar file ({err}); "
                                   f"it may be truncated — rewrite it") from None
        if cut is not None:  # tarfile ends a cut shard's walk without a word: the rest of it was lost silently
            raise DatasetError(f"shard {self.url!r} is not a readable tar file ({cut}); it may be truncated — "
                               "rewrite it")

    def _samples(self, tar: tarfile.TarFile) -> Iterator[Record]:
        """The samples of ``tar`` in order: members ``KEY.ext`` grouped by key; a member no field uses is skipped
        unread, and a sample's members read hold at most MAX_RECORD_BYTES together."""
        wanted = self.fields.wanted_extensions()
        key, parts, held = None, {}, 0
        for member in tar:
            if not member.isfile():
                continue
            k, ext = split_member(member.name)
            if not ext or ("/" not in member.name and member.name.startswith("__") and member.name.endswith("__")):
                continue  # no extension, or webdataset's __meta__: no sample's member (webdataset skips them too)
            if k != key and parts:
                yield self._record(key, parts)
                parts, held = {}, 0
            key = k
            if ext in parts:  # webdataset refuses it too: the second silently replaced the first
                raise DatasetError(f"shard {self.url!r}: {member.name!r} appears twice in sample {k!r}")
            if ext not in wanted:
                parts[ext] = None  # named in messages, never read (120 MiB members nobody uses took memory)
                continue
            held += member.size
            if held > MAX_RECORD_BYTES >= member.size:  # a member over the limit on its own is named as such
                raise DatasetError(f"shard {self.url!r}: sample {k!r} holds more than the {MAX_RECORD_BYTES:,} "
                                   f"bytes a sample may hold (at member {member.name!r})")
            parts[ext] = self._member_bytes(tar, member)
        if parts:
            yield self._record(key, parts)

    def _member_bytes(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
        """A member's bytes, at most MAX_RECORD_BYTES (a .tar.gz's 400 MB caption was read whole)."""
        if member.size > MAX_RECORD_BYTES:
            raise DatasetError(f"shard {self.url!r}: member {member.name!r} is {member.size:,} bytes, more than the "
                               f"{MAX_RECORD_BYTES:,} a sample's member may hold")
        data = tar.extractfile(member)
        return data.read(MAX_RECORD_BYTES) if data is not None else b""

    def _record(self, key: str, parts: "dict[str, bytes | None]") -> Record:
        f = self.fields
        where = f"{self.url}:{key}"
        meta = _LazyJSON(parts.get("json"), where)
        image_ext = f.image or next((e for e in IMAGE_EXTENSIONS if e in parts), None)
        image = parts.get(image_ext) if image_ext else None
        if f.image and image is None:
            raise DatasetError(f"{where}: no member {key}.{f.image}; the sample has {', '.join(sorted(parts))} "
                               f"(choose the image with --img-key)")
        captions = self._field(parts, meta, f.caption, CAPTION_EXTENSIONS, where, "caption", "--caption-key")
        label = self._field(parts, meta, f.label, LABEL_EXTENSIONS, where, "label", "--label-key")
        return Record(key=key, image=image, captions=f.captions_of(captions, where), label=f.label_of(label, where),
                      source=f"{where}.{image_ext}" if image_ext else where, meta=meta.parsed or {})

    @staticmethod
    def _field(parts, meta, name, defaults, where, what, flag):
        if name is None:
            ext = next((e for e in defaults if e in parts), None)
            return parts.get(ext) if ext else None
        if name in parts:
            return parts[name]
        fields = meta.fields()  # the .json member is parsed only here, when a field is looked up in it
        if name in fields:
            return fields[name]
        raise DatasetError(f"{where}: no {what} {name!r}: the sample has members {', '.join(sorted(parts))}"
                           + (f" and JSON fields {', '.join(sorted(fields))}" if fields else "") + f" (set {flag})")


class _LastRead:
    """A tar's file object that keeps the data of its last read: where ``tarfile`` ends a walk, the block read
    there says whether it was the end-of-archive marker or a cut (:func:`clipzoo.files.tar_end_problem`)."""

    def __init__(self, raw):
        self.raw, self.data = raw, None

    def read(self, size: int = -1) -> bytes:
        self.data = self.raw.read(size)
        return self.data

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


class _LazyJSON:
    """A sample's ``.json`` member, parsed at the first look-up (webdataset parses it only when asked to)."""

    def __init__(self, data: "bytes | None", where: str):
        self.data, self.where, self.parsed = data, where, None

    def fields(self) -> dict:
        if self.parsed is None and self.data is not None:
            try:
                meta = json.loads(self.data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise DatasetError(f"{self.where}.json is not valid JSON") from None
            except RecursionError:  # [[[[… a few thousand deep: a 185-line traceback
                raise DatasetError(f"{self.where}.json is not valid JSON (nested too deeply)") from None
            self.parsed = meta if isinstance(meta, dict) else {"json": meta}
        return self.parsed or {}


@dataclass
class TFRecordShard:
    """One TFRecord file of ``tf.train.Example``s (see :mod:`clipzoo.datasets.tfrecord`)."""

    url: str
    fields: SampleFields = field(default_factory=SampleFields)

    @property
    def name(self) -> str:
        return self.url

    def __call__(self) -> Iterator[Record]:
        f = self.fields
        for rec in iter_tfrecord_records(self.url, image_key=f.image, caption_key=f.caption, label_key=f.label):
            captions = rec.captions
            if f.multi_caption and len(captions) == 1:
                captions = f.captions_of(captions[0])
            label = rec.label if rec.label is None or isinstance(rec.label, int) else f.label_of(rec.label, rec.source)
            yield Record(key=rec.key, image=rec.image, captions=captions, label=label, source=rec.source,
                         meta=rec.meta)


# ------------------------------------------------------------------ the data source
@dataclass
class DataSource:
    """A data set: shards of records, plus what the data set says about itself."""

    name: str
    shards: list[Callable[[], Iterator[Record]]]
    classnames: "list[str] | None" = None
    templates: "list[str] | None" = None
    kind: str = "classification"  # or "retrieval"
    location: str = ""
    size: "int | None" = None  # known for folders and CSV; None for streamed shards

    def __iter__(self) -> Iterator[Record]:
        for shard in self.shards:
            yield from shard()

    def __repr__(self) -> str:
        size = "?" if self.size is None else self.size
        classes = "" if self.classnames is None else f", {len(self.classnames)} classes"
        return f"DataSource({self.name!r}, {size} samples in {len(self.shards)} shards{classes}, kind={self.kind!r})"

    def fingerprint(self) -> str:
        """Identifies the data for caches: location, shards, each record of a list (path, label, captions) and the
        size and mtime of every local file read — a tar or TFRecord shard, a folder's or a CSV's image (an image
        rewritten under the same name gave the old features from ``--features-cache``)."""
        h = hashlib.sha256(f"{self.location}|{self.size}".encode("utf-8", "surrogatepass"))
        for s in self.shards:
            name = getattr(s, "name", repr(s))
            h.update(name.encode("utf-8", "surrogatepass"))
            if isinstance(s, ListShard):
                for r in s.records:
                    local = isinstance(r.image, str) and "://" not in r.image
                    h.update(f"{r.image if isinstance(r.image, str) else r.key}|{r.label}|{r.captions}|"
                             f"{_stat_key(r.image) if local else ''}".encode("utf-8", "surrogatepass"))
            elif "://" not in name:
                h.update(_stat_key(name).encode())
        return h.hexdigest()[:16]


def _stat_key(path: str) -> str:
    """``size|mtime_ns`` of a local file ("" when it cannot be stat'ed: reading it will say why)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return ""
    return f"{st.st_size}|{st.st_mtime_ns}"


def chunk(records: list[Record], name: str, shard_size: int) -> list[ListShard]:
    return [ListShard(f"{name}[{i}:{i + shard_size}]", records[i:i + shard_size])
            for i in range(0, len(records), shard_size)]
