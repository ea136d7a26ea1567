"""TFRecord files of ``tf.train.Example`` protos, read and written without TensorFlow.

Reads what img2dataset writes with ``--output_format tfrecord`` (and what open_clip_jax trains on).

Framing, per record: ``uint64 length`` (little-endian), ``uint32 masked_crc32c(length bytes)``, ``data``,
``uint32 masked_crc32c(data)``; ``masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)``.
The length CRC is always checked; the data CRC when ``verify=True``, or ``verify="auto"`` and a fast
CRC32C module (``google_crc32c`` or ``crc32c``) is installed (the pure-Python fallback is slow).
Files ending in ``.gz`` (or ``compression="gzip"``) are gzip-compressed. Paths may be fsspec URLs.

Each record is an Example: a map from feature name to a list of bytes, float32 or int64 values.
img2dataset writes ``key`` (bytes), the image under ``jpg`` (or ``png`` / ``webp``: its
``--encode_format``), ``txt`` (the caption, ``""`` if none) and one feature per metadata column
(``url``, ``status``, ``width``, ``height``, ``sha256``, ...). :func:`iter_tfrecord_records` takes the
image from the first of :data:`IMAGE_KEYS` present, the caption from :data:`CAPTION_KEYS`, the label
from :data:`LABEL_KEYS`; other features go to ``Record.meta``.
"""
from __future__ import annotations

import gzip
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from numbers import Integral, Real
from typing import Any

from ..constants import MAX_RECORD_BYTES
from ..errors import DatasetError
from .records import Record, is_index

__all__ = ["IMAGE_KEYS", "CAPTION_KEYS", "LABEL_KEYS", "crc32c", "masked_crc32c", "iter_tfrecord",
           "write_tfrecord", "parse_example", "encode_example", "iter_tfrecord_records", "write_tfrecord_samples"]

IMAGE_KEYS = ("jpg", "png", "webp", "image", "image/encoded", "image_bytes")
CAPTION_KEYS = ("txt", "caption", "text", "image/text")
LABEL_KEYS = ("cls", "label", "image/class/label")

_TABLE = list(range(256))
for _i in range(256):
    for _ in range(8):
        _TABLE[_i] = (_TABLE[_i] >> 1) ^ (0x82F63B78 if _TABLE[_i] & 1 else 0)
try:  # a fast CRC32C, if installed
    from google_crc32c import value as _fast_crc
except ImportError:
    try:
        from crc32c import crc32c as _fast_crc
    except ImportError:
        _fast_crc = None


def _crc32c_py(data: bytes) -> int:
    crc, table = 0xFFFFFFFF, _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of ``data``: a fast module if installed, else pure Python."""
    return int(_fast_crc(bytes(data))) if _fast_crc else _crc32c_py(data)


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@contextmanager
def _open(src: Any, mode: str, compression: "str | None" = "auto"):
    """(binary file, name for messages) for a path, fsspec URL or file object; gzip unwrapped."""
    with ExitStack() as stack:
        if hasattr(src, "read" if mode == "rb" else "write"):
            fh, name = src, str(getattr(src, "name", "<stream>"))
        else:
            name = os.fspath(src)
            if "://" in name:
                import fsspec

                fh = stack.enter_context(fsspec.open(name, mode))
            else:
                fh = stack.enter_context(open(name, mode))
        if compression == "gzip" or (compression in (None, "auto") and name.endswith(".gz")):
            fh = stack.enter_context(gzip.GzipFile(fileobj=fh, mode=mode, filename="", mtime=0))
        yield fh, name


def iter_tfrecord(fileobj_or_path: Any, verify: "bool | str" = "auto",
                  compression: "str | None" = "auto") -> Iterator[bytes]:
    """The payloads of a TFRecord file (path, fsspec URL or binary file object), CRC-checked."""
    check_data = verify is True or (verify == "auto" and _fast_crc is not None)
    with _open(fileobj_or_path, "rb", compression) as (fh, name):
        n = offset = 0
        while True:
            where = f"TFRecord file {name!r}, record {n} at byte {offset}"
            try:
                header = fh.read(12)
                if not header:
                    return
                length, length_crc = struct.unpack("<QI", header) if len(header) == 12 else (-4, None)
                if length_crc is not None and masked_crc32c(header[:8]) != length_crc:
                    hint = ("it looks gzip-compressed: pass compression='gzip' or name it *.gz"
                            if n == 0 and header[:2] == b"\x1f\x8b" else "is it a TFRecord file?")
                    raise DatasetError(f"{where}: bad length CRC, the file is corrupt ({hint})")
                if length > MAX_RECORD_BYTES:  # 2^40 was a MemoryError, 2^63 an OverflowError
                    raise DatasetError(f"{where}: the record claims {length:,} bytes, more than the "
                                       f"{MAX_RECORD_BYTES:,} a record may hold; the file is corrupt")
                body = fh.read(length + 4)
            except (EOFError, OSError) as err:  # a gzip stream cut short or damaged
                raise DatasetError(f"{where}: the file is truncated or corrupt ({type(err).__name__}: {err}); "
                                   f"rewrite or re-download it") from None
            if length_crc is None or len(body) < length + 4:
                raise DatasetError(f"{where}: the file is truncated (a writer killed mid-record?); "
                                   f"rewrite it, or drop the incomplete last record")
            data = body[:length]
            if check_data and masked_crc32c(data) != struct.unpack("<I", body[length:])[0]:
                raise DatasetError(f"{where}: bad data CRC, the record is corrupt; rewrite or re-download the file")
            yield data
            n, offset = n + 1, offset + 16 + length


def write_tfrecord(path: Any, payloads: Iterable[bytes], compression: "str | None" = "auto") -> int:
    """Write payloads as a TFRecord file (gzip if ``*.gz``) via a temporary file and rename; returns the count."""
    name, tmp, n = os.fspath(path), None, 0  # fsspec URLs are written directly: object stores publish on close
    if "://" not in name:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(name)), prefix=".tmp-",
                                   suffix="-" + os.path.basename(name))
        os.close(fd)
    try:
        gz = compression == "gzip" or (compression in (None, "auto") and name.endswith(".gz"))
        with _open(tmp or name, "wb", "gzip" if gz else "none") as (fh, _):
            for data in payloads:
                length = struct.pack("<Q", len(data))
                fh.write(length + struct.pack("<I", masked_crc32c(length)) + data)
                fh.write(struct.pack("<I", masked_crc32c(data)))
                n += 1
        if tmp:
            os.replace(tmp, name)
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
    return n


# --- protobuf wire format of tf.train.Example -------------------------------------------------------

def _varint(buf: Any, pos: int) -> "tuple[int, int]":
    result = shift = 0
    while True:
        b, pos = buf[pos], pos + 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: Any) -> Iterator["tuple[int, int, Any]"]:
    """(field number, wire type, value) of each field of a message, unknown ones included."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        if tag & 7 == 0:
            value, pos = _varint(buf, pos)
        else:
            size = {1: 8, 5: 4}.get(tag & 7)
            if size is None and tag & 7 != 2:
                raise ValueError(f"unsupported wire type {tag & 7}")
            if size is None:
                size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
            if pos > len(buf):
                raise ValueError("message is truncated")
        yield tag >> 3, tag & 7, value


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: Any) -> list:
    values: list = []
    last = None
    for kind, wire, sub in _fields(buf):
        if wire != 2 or kind not in (1, 2, 3):
            continue
        values, last = (values if kind == last else []), kind  # oneof: another kind replaces, the same merges
        for num, wire, v in _fields(sub):
            if num == 1 and kind == 1 and wire == 2:
                values.append(bytes(v))
            elif num == 1 and kind == 2 and wire in (2, 5):
                values.extend(struct.unpack(f"<{len(v) // 4}f", v))
            elif num == 1 and kind == 3 and wire == 0:
                values.append(_int64(v))
            elif num == 1 and kind == 3 and wire == 2:
                pos = 0
                while pos < len(v):
                    x, pos = _varint(v, pos)
                    values.append(_int64(x))
    return values


def parse_example(data: bytes) -> "dict[str, list]":
    """A serialized ``tf.train.Example`` as ``{name: [bytes, ...] | [float, ...] | [int, ...]}``."""
    out: dict[str, list] = {}
    try:
        for num, wire, features in _fields(memoryview(data)):  # views: each value is copied once
            for fnum, fwire, entry in (_fields(features) if (num, wire) == (1, 2) else ()):
                if (fnum, fwire) == (1, 2):
                    parts = {n: v for n, w, v in _fields(entry) if w == 2}
                    out[bytes(parts.get(1, b"")).decode("utf-8")] = _parse_feature(parts.get(2, b""))
    except IndexError:
        raise ValueError("message is truncated (a varint runs past the end)") from None
    return out


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    return bytes(out + bytes([v]))


def _len_field(num: int, payload: bytes) -> bytes:
    return _enc_varint(num << 3 | 2) + _enc_varint(len(payload)) + payload


def _encode_feature(name: str, value: Any) -> bytes:
    value = value.tolist() if hasattr(value, "tolist") else value  # numpy
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if all(isinstance(v, (bytes, bytearray, memoryview, str)) for v in values):  # also []
        return _len_field(1, b"".join(_len_field(1, v.encode() if isinstance(v, str) else bytes(v)) for v in values))
    if all(isinstance(v, Integral) for v in values):
        if not all(-(1 << 63) <= int(v) < 1 << 63 for v in values):
            raise ValueError(f"feature {name!r}: int64 out of range")
        return _len_field(3, _len_field(1, b"".join(_enc_varint(int(v) % (1 << 64)) for v in values)))
    if all(isinstance(v, Real) for v in values):
        return _len_field(2, _len_field(1, struct.pack(f"<{len(values)}f", *map(float, values))))
    raise ValueError(f"feature {name!r}: values must be all bytes/str, all ints or all floats, not {values!r:.80}")


def encode_example(features: Mapping[str, Any]) -> bytes:
    """Serialize ``{name: bytes | str | int | float | list of one of those}`` as a ``tf.train.Example``."""
    return _len_field(1, b"".join(_len_field(1, _len_field(1, str(k).encode()) + _len_field(2, _encode_feature(k, v)))
                                  for k, v in features.items()))


# --- Records ---------------------------------------------------------------------------------------

def _pick(feats: dict, name: "str | None", defaults: tuple, what: str, where: str) -> "str | None":
    if name is not None and name not in feats:
        raise DatasetError(f"{where}: no {what} feature {name!r}; the record has {sorted(feats)}. "
                           f"Pass {what}_key= one of those")
    return name or next((k for k in defaults if k in feats), None)


def _text(v: Any) -> Any:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def iter_tfrecord_records(url: Any, image_key: "str | None" = None, caption_key: "str | None" = None,
                          label_key: "str | None" = None, key_key: str = "key", verify: "bool | str" = "auto",
                          compression: "str | None" = "auto") -> Iterator[Record]:
    """The :class:`Record` s of one TFRecord file; ``source`` is ``FILE:#N`` (N counts from 0).

    ``key`` is the ``key_key`` feature, else N. Empty captions (img2dataset writes ``""``) are dropped.
    """
    name = str(getattr(url, "name", "<stream>")) if hasattr(url, "read") else os.fspath(url)
    for n, data in enumerate(iter_tfrecord(url, verify=verify, compression=compression)):
        where = f"{name}:#{n}"
        try:
            feats = parse_example(data)
        except (ValueError, struct.error) as err:
            raise DatasetError(f"{where}: not a tf.train.Example ({err}); is it a TFRecord of Examples?") from None
        ik = _pick(feats, image_key, IMAGE_KEYS, "image", where)
        ck = _pick(feats, caption_key, CAPTION_KEYS, "caption", where)
        lk = _pick(feats, label_key, LABEL_KEYS, "label", where)
        if ik is None:
            raise DatasetError(f"{where}: no image feature (looked for {list(IMAGE_KEYS)}); the record has "
                               f"{sorted(feats)}. Pass image_key=")
        image = feats[ik][0] if feats[ik] else None
        if image is not None and not isinstance(image, bytes):
            raise DatasetError(f"{where}: image feature {ik!r} holds numbers, not encoded image bytes")
        label = _text(feats[lk][0]) if lk and feats[lk] else None
        if isinstance(label, str) and is_index(label.strip()):  # the rule tar and CSV labels follow
            label = int(label)
        # any other text label ("²", a class name) is returned as text: the reader maps it to a class id or says
        # in one line why it cannot
        yield Record(key=str(_text(feats[key_key][0])) if feats.get(key_key) else str(n), image=image,
                     captions=[c for c in map(_text, feats.get(ck, [])) if isinstance(c, str) and c],
                     label=label, source=where,
                     meta={k: _text(vs[0]) if len(vs) == 1 else [_text(v) for v in vs]
                           for k, vs in feats.items() if k not in (ik, ck, lk, key_key)})


def _image_ext(data: bytes) -> str:
    return ("png" if data[:8] == b"\x89PNG\r\n\x1a\n" else
            "webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else "jpg")


def _simple(v: Any) -> bool:
    v = v if isinstance(v, list) else [v]
    return all(isinstance(x, (bytes, str)) for x in v) or all(isinstance(x, (int, float)) for x in v)


def write_tfrecord_samples(path: Any, samples: Iterable[Any], compression: "str | None" = "auto") -> int:
    """Write Records (or dicts with ``key, image, caption(s), label, meta``) as Examples; returns the count.

    The image (bytes, or a path / URL to read) goes under ``jpg``/``png``/``webp`` by its magic bytes,
    captions under ``txt``, the label under ``cls``, the key under ``key``; simple ``meta`` values too.
    """
    def examples() -> Iterator[bytes]:
        for i, s in enumerate(samples):
            get = s.get if isinstance(s, Mapping) else (lambda k, s=s: getattr(s, k, None))
            image, captions = get("image"), get("captions")
            if isinstance(image, (str, os.PathLike)):
                with _open(image, "rb", "none") as (fh, _):
                    image = fh.read()
            if captions is None:
                captions = [get("caption")] if get("caption") is not None else []
            feats = {k: v for k, v in (get("meta") or {}).items() if _simple(v)}
            feats["key"] = str(get("key") if get("key") is not None else i)
            if image is not None:
                feats[_image_ext(bytes(image))] = bytes(image)
            feats["txt"] = list(captions)
            if get("label") is not None:
                feats["cls"] = int(get("label"))
            yield encode_example(feats)

    return write_tfrecord(path, examples(), compression=compression)
