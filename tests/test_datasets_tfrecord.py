"""TFRecord reading and writing without TensorFlow: framing, CRC32C, the Example codec, Records."""
from __future__ import annotations

import gzip
import io
import os
import struct

import numpy as np
import pytest

from clipzoo.datasets import tfrecord as tfr
from clipzoo.datasets.records import Record, decode_image
from clipzoo.errors import DatasetError

# --- CRC32C and framing ----------------------------------------------------------------------------

def test_crc32c_known_vectors():
    for fn in (tfr.crc32c, tfr._crc32c_py):
        assert fn(b"123456789") == 0xE3069283
        assert fn(bytes(32)) == 0x8A9136AA
        assert fn(b"\xff" * 32) == 0x62A8AB43
        assert fn(b"") == 0
    assert tfr.masked_crc32c(b"") == 0xA282EAD8  # mask of crc 0


def test_framing_round_trip(tmp_path):
    payloads = [b"", b"a", bytes(range(256)) * 40, os.urandom(5000)]
    path = tmp_path / "x.tfrecord"
    assert tfr.write_tfrecord(path, payloads) == 4
    raw = path.read_bytes()
    assert len(raw) == sum(16 + len(p) for p in payloads)
    length, lcrc = struct.unpack("<QI", raw[:12])
    assert length == 0 and lcrc == tfr.masked_crc32c(raw[:8])
    assert struct.unpack("<I", raw[12:16])[0] == tfr.masked_crc32c(b"")
    assert list(tfr.iter_tfrecord(path, verify=True)) == payloads
    assert list(tfr.iter_tfrecord(str(path), verify=False)) == payloads
    assert list(tfr.iter_tfrecord(io.BytesIO(raw), verify=True)) == payloads
    assert os.listdir(tmp_path) == ["x.tfrecord"]  # no temporary file left behind


def test_write_is_atomic_on_error(tmp_path):
    def payloads():
        yield b"one"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        tfr.write_tfrecord(tmp_path / "x.tfrecord", payloads())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("keep, expect", [(2 * 66 + 5, 2), (2 * 66 + 14, 2), (98, 1)])
def test_truncated_file(tmp_path, keep, expect):
    path = tmp_path / "shard-00007.tfrecord"
    tfr.write_tfrecord(path, [b"x" * 50, b"y" * 50, b"z" * 50])  # 66 bytes a record
    path.write_bytes(path.read_bytes()[:keep])  # mid-header, mid-data, mid-data
    with pytest.raises(DatasetError, match=rf"shard-00007\.tfrecord.*record {expect}.*truncated"):
        list(tfr.iter_tfrecord(path, verify=False))


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "bad.tfrecord"
    tfr.write_tfrecord(path, [b"hello world", b"second"])
    raw = bytearray(path.read_bytes())
    raw[12 + 3] ^= 0x01  # a data byte of record 0
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"bad\.tfrecord.*record 0.*data CRC"):
        list(tfr.iter_tfrecord(path, verify=True))
    assert list(tfr.iter_tfrecord(path, verify=False))[0] == b"helmo world"
    raw[12 + 3] ^= 0x01
    raw[27 + 1] ^= 0x40  # a length byte of record 1: always checked
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"bad\.tfrecord.*record 1 at byte 27.*length CRC"):
        list(tfr.iter_tfrecord(path, verify=False))


def test_gzip(tmp_path):
    payloads = [b"abc" * 100, b"", b"def"]
    gz = tmp_path / "x.tfrecord.gz"
    tfr.write_tfrecord(gz, payloads)
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    assert list(tfr.iter_tfrecord(gz, verify=True)) == payloads
    assert gzip.decompress(gz.read_bytes()) == b"".join(
        struct.pack("<Q", len(p)) + struct.pack("<I", tfr.masked_crc32c(struct.pack("<Q", len(p))))
        + p + struct.pack("<I", tfr.masked_crc32c(p)) for p in payloads)
    plain_name = tmp_path / "y.tfrecord"
    tfr.write_tfrecord(plain_name, payloads, compression="gzip")
    assert list(tfr.iter_tfrecord(plain_name, compression="gzip")) == payloads
    with pytest.raises(DatasetError, match=r"y\.tfrecord.*gzip"):
        list(tfr.iter_tfrecord(plain_name))
    gz.write_bytes(gz.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"x\.tfrecord\.gz.*truncated"):
        list(tfr.iter_tfrecord(gz))


# --- the Example codec against the real protobuf ----------------------------------------------------

def _example_class(syntax):
    """tf.train.Example built from a descriptor (proto3: packed numbers, proto2: unpacked)."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    pkg = f"cz_{syntax}"
    fdp = descriptor_pb2.FileDescriptorProto(name=f"{pkg}/example.proto", package=pkg, syntax=syntax)
    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    for name, typ in (("BytesList", F.TYPE_BYTES), ("FloatList", F.TYPE_FLOAT), ("Int64List", F.TYPE_INT64)):
        fdp.message_type.add(name=name).field.add(name="value", number=1, label=rep, type=typ)
    feature = fdp.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for i, (name, typ) in enumerate((("bytes_list", "BytesList"), ("float_list", "FloatList"),
                                     ("int64_list", "Int64List")), 1):
        feature.field.add(name=name, number=i, label=opt, type=F.TYPE_MESSAGE, type_name=f".{pkg}.{typ}",
                          oneof_index=0)
    features = fdp.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=opt, type=F.TYPE_STRING)
    entry.field.add(name="value", number=2, label=opt, type=F.TYPE_MESSAGE, type_name=f".{pkg}.Feature")
    features.field.add(name="feature", number=1, label=rep, type=F.TYPE_MESSAGE,
                       type_name=f".{pkg}.Features.FeatureEntry")
    fdp.message_type.add(name="Example").field.add(name="features", number=1, label=opt, type=F.TYPE_MESSAGE,
                                                   type_name=f".{pkg}.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{pkg}.Example"))


def _f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


FEATURES = {
    "key": "000123",
    "jpg": b"\xff\xd8\xff\x00binary\x00",
    "txt": "a cat — ünïcødé 猫",
    "multi": [b"a", "b", b""],
    "cls": 7,
    "neg": [-1, -(2 ** 63), 2 ** 63 - 1, 0, 300],
    "score": 0.1,
    "floats": [1.5, -2.25, 3.14159, 1e-30, float("inf")],
    "empty": [],
    "": b"empty name",
}


def _expected(value):
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        out.append(v.encode() if isinstance(v, str) else _f32(v) if isinstance(v, float) else v)
    return out


def _build(cls, features):
    msg = cls()
    for name, value in features.items():
        feat = msg.features.feature[name]
        values = _expected(value)
        if not values or isinstance(values[0], bytes):
            feat.bytes_list.SetInParent()
            feat.bytes_list.value.extend(values)
        elif isinstance(values[0], float):
            feat.float_list.value.extend(values)
        else:
            feat.int64_list.value.extend(values)
    return msg


@pytest.mark.parametrize("syntax", ["proto3", "proto2"])
def test_codec_parity_with_protobuf(syntax):
    Example = _example_class(syntax)
    ours = tfr.encode_example(FEATURES)
    theirs = _build(Example, FEATURES)
    assert Example.FromString(ours) == theirs  # our encode -> protobuf parse
    parsed = tfr.parse_example(theirs.SerializeToString())  # protobuf serialize (packed or not) -> our parse
    assert parsed == {k: _expected(v) for k, v in FEATURES.items()}
    assert tfr.parse_example(ours) == parsed
    if syntax == "proto3":  # one feature, so no map ordering: byte-identical
        one = {"neg": [-5, 9], "f": 2.5}
        for k, v in one.items():
            assert tfr.encode_example({k: v}) == _build(Example, {k: v}).SerializeToString()
    else:  # proto2 repeated scalars are unpacked on the wire
        assert b"\r\x00\x00\x80?\r\x00\x00\x00@" in _build(Example, {"f": [1.0, 2.0]}).SerializeToString()
        assert b"\x08\x05\x08\x09" in _build(Example, {"i": [5, 9]}).SerializeToString()


def test_parse_skips_unknown_fields_and_numpy_input():
    Example = _example_class("proto3")
    data = tfr.encode_example({"a": np.int64(3), "b": np.array([1.0, 2.0], dtype=np.float32), "c": np.bytes_(b"z")})
    # unknown fields in Example: varint field 9 before, 32-bit field 10 after
    data = b"\x48\x05" + data + b"\x55\x00\x00\x80\x3f"
    assert tfr.parse_example(data) == {"a": [3], "b": [1.0, 2.0], "c": [b"z"]}
    assert Example.FromString(data).features.feature["b"].float_list.value == [1.0, 2.0]
    with pytest.raises(ValueError, match="'bad'"):
        tfr.encode_example({"bad": [1, b"x"]})
    with pytest.raises(ValueError, match="range"):
        tfr.encode_example({"big": 2 ** 63})
    with pytest.raises(ValueError):
        tfr.parse_example(b"\x0a\x05\x0a")


# --- Records --------------------------------------------------------------------------------------

def _png(seed, size=(12, 9)):
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), arr


def test_records_round_trip_png(tmp_path):
    images = [_png(i) for i in range(3)]
    samples = [Record(key=f"k{i}", image=png, captions=[f"caption {i}", "ünï"], label=i,
                      meta={"url": f"http://x/{i}", "width": 12})
               for i, (png, _) in enumerate(images)]
    samples.append({"key": "d", "image": images[0][0], "caption": "dict sample"})
    path = tmp_path / "00000.tfrecord"
    assert tfr.write_tfrecord_samples(path, samples) == 4
    recs = list(tfr.iter_tfrecord_records(path))
    assert [r.key for r in recs] == ["k0", "k1", "k2", "d"]
    assert [r.label for r in recs] == [0, 1, 2, None]
    assert recs[1].captions == ["caption 1", "ünï"] and recs[3].captions == ["dict sample"]
    assert recs[2].source == f"{path}:#2"
    assert recs[0].meta == {"url": "http://x/0", "width": 12}
    assert "png" in tfr.parse_example(next(tfr.iter_tfrecord(path)))
    for rec, (png, arr) in zip(recs, images):
        assert rec.image == png
        np.testing.assert_array_equal(np.asarray(decode_image(rec)), arr)


def test_img2dataset_layout(tmp_path):
    """What img2dataset's TFRecordSampleWriter writes: key, jpg (encode_format), txt, then the meta columns."""
    jpg = b"\xff\xd8\xff\xe0fake jpeg"
    ex = {"key": "000010005", "jpg": jpg, "txt": "", "url": "http://a/b.jpg", "caption": "",
          "status": "success", "error_message": "", "width": 256, "height": 256, "original_width": 640,
          "original_height": 480, "sha256": "ab" * 32}
    path = tmp_path / "00001.tfrecord"
    tfr.write_tfrecord(path, [tfr.encode_example(ex), tfr.encode_example({**ex, "txt": "a dog"})])
    a, b = tfr.iter_tfrecord_records(path)
    assert (a.key, a.image, a.captions, a.label) == ("000010005", jpg, [], None)
    assert b.captions == ["a dog"] and b.meta["width"] == 256 and b.meta["status"] == "success"


def test_custom_and_missing_keys(tmp_path):
    path = tmp_path / "custom.tfrecord"
    tfr.write_tfrecord(path, [tfr.encode_example({"image/encoded": b"IMG", "image/class/label": 4,
                                                  "descr": "hello", "id": "abc"})])
    (rec,) = tfr.iter_tfrecord_records(path)  # defaults: image/encoded + image/class/label
    assert (rec.image, rec.label, rec.key, rec.captions) == (b"IMG", 4, "0", [])
    (rec,) = tfr.iter_tfrecord_records(path, image_key="image/encoded", caption_key="descr", key_key="id")
    assert (rec.captions, rec.key) == (["hello"], "abc")
    with pytest.raises(DatasetError, match=r"custom\.tfrecord:#0.*'jpeg'.*descr.*image/encoded"):
        list(tfr.iter_tfrecord_records(path, image_key="jpeg"))
    with pytest.raises(DatasetError, match=r"custom\.tfrecord:#0.*caption feature 'caption'"):
        list(tfr.iter_tfrecord_records(path, caption_key="caption"))
    tfr.write_tfrecord(path, [tfr.encode_example({"pixels": b"x"})])
    with pytest.raises(DatasetError, match=r"custom\.tfrecord:#0.*no image feature.*'pixels'"):
        list(tfr.iter_tfrecord_records(path))
    tfr.write_tfrecord(path, [b"\x0a\x05\x0a"])
    with pytest.raises(DatasetError, match=r"custom\.tfrecord:#0.*not a tf.train.Example"):
        list(tfr.iter_tfrecord_records(path))


def test_fsspec_memory_url():
    fsspec = pytest.importorskip("fsspec")
    url = "memory://clipzoo-tfrecord-test/shard.tfrecord"
    png, arr = _png(5)
    try:
        assert tfr.write_tfrecord_samples(url, [Record(key="m", image=png, captions=["in memory"], label=3)]) == 1
        (rec,) = tfr.iter_tfrecord_records(url)
        assert (rec.key, rec.captions, rec.label, rec.source) == ("m", ["in memory"], 3, f"{url}:#0")
        np.testing.assert_array_equal(np.asarray(decode_image(rec)), arr)
    finally:
        fsspec.filesystem("memory").rm("/clipzoo-tfrecord-test", recursive=True)


def test_verify_auto_follows_fast_crc(tmp_path, monkeypatch):
    path = tmp_path / "auto.tfrecord"
    tfr.write_tfrecord(path, [b"payload"])
    raw = bytearray(path.read_bytes())
    raw[13] ^= 0x01
    path.write_bytes(bytes(raw))
    monkeypatch.setattr(tfr, "_fast_crc", None)  # pure Python only: "auto" skips the data CRC
    assert list(tfr.iter_tfrecord(path)) == [b"p`yload"]
    monkeypatch.setattr(tfr, "_fast_crc", tfr._crc32c_py)  # stands in for google_crc32c.value
    with pytest.raises(DatasetError, match=r"auto\.tfrecord.*data CRC"):
        list(tfr.iter_tfrecord(path))


def test_samples_with_image_paths_and_gzip(tmp_path):
    png, arr = _png(9)
    (tmp_path / "img.png").write_bytes(png)
    out = tmp_path / "s.tfrecord.gz"
    tfr.write_tfrecord_samples(out, [Record(key="p", image=str(tmp_path / "img.png"), captions=[])])
    (rec,) = tfr.iter_tfrecord_records(out)
    assert (rec.key, rec.image, rec.captions, rec.label) == ("p", png, [], None)
    np.testing.assert_array_equal(np.asarray(decode_image(rec)), arr)
    with open(out, "rb") as fh:  # an open file object (gzip by compression=, no name suffix needed)
        assert len(list(tfr.iter_tfrecord_records(fh, compression="gzip"))) == 1
        assert not fh.closed  # files we did not open stay open
