"""Issue 18 §5 multi-host: each host reads its own part of the shards with equal batch counts, and the
uneven-file epoch problem (open_clip_jax README: files of 32 and 64 samples on two hosts) is solved — every
sample is read exactly once per epoch."""
from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("jax")

from clipzoo.datasets.tfrecord import write_tfrecord_samples  # noqa: E402
from clipzoo.train.config import ConfigError  # noqa: E402
from clipzoo.train.jax.config import JaxTrainConfig  # noqa: E402
from clipzoo.train.jax.data import open_batches, plan_epoch, transform_image  # noqa: E402


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (i % 256, (7 * i) % 256, 50)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """Two TFRecord files of 32 and 64 samples (open_clip_jax README's example)."""
    root = tmp_path_factory.mktemp("uneven")
    n = 0
    for name, size in (("a.tfrecord", 32), ("b.tfrecord", 64)):
        write_tfrecord_samples(root / name, [{"image": _png(n + i), "caption": f"sample {n + i}"}
                                             for i in range(size)])
        n += size
    return root


def _hosts(root, hosts=2, batch=32, **kw):
    cfg = JaxTrainConfig(train_path=str(root), global_batch_size=batch, image_size=8, context_len=8, workers=2, **kw)
    return [open_batches(str(root), cfg, train=True, n_samples=None, process_count=hosts, process_index=p)
            for p in range(hosts)]


def test_jax_multihost_uneven_shards_every_sample_once_equal_batches(uneven):
    readers = _hosts(uneven)
    assert [r.sizes for r in readers] == [[32, 64], [32, 64]]
    for epoch in range(3):
        seen = Counter()
        counts = []
        for r in readers:
            captions = [rec.captions[0] for _, rec in r.records(epoch)]
            seen.update(captions)
            counts.append(sum(1 for _ in r.batches(epoch)))
        assert counts == [3, 3]  # 96 samples / global batch 32 = 3 steps, each host 3 batches of 16
        assert sorted(seen) == sorted(f"sample {i}" for i in range(96))
        assert set(seen.values()) == {1}


def test_jax_multihost_remainder_is_dropped_evenly():
    """100 samples, global batch 32, 2 hosts: 3 steps; 96 distinct samples read, 48 per host, none twice."""
    for epoch in range(4):
        parts = [plan_epoch([30, 70], 32, 2, p, seed=0, epoch=epoch)[0] for p in range(2)]
        per_host = [sum(stop - start for _, start, stop in segs) for segs in parts]
        assert per_host == [48, 48]
        read = [(s, i) for segs in parts for s, a, b in segs for i in range(a, b)]
        assert len(read) == len(set(read)) == 96


def test_jax_batches_shapes_and_exact_resume(uneven):
    reader = _hosts(uneven, hosts=1, batch=16)[0]
    full = list(reader.batches(1))
    assert len(full) == 6
    images, tokens = full[0]
    assert images.shape == (16, 8, 8, 3) and images.dtype == np.float32
    assert tokens.shape == (16, 8) and tokens.dtype == np.int32
    tail = list(reader.batches(1, start=4))  # resuming at batch 4 replays batches 4 and 5 exactly
    assert len(tail) == 2
    for (x, t), (y, u) in zip(full[4:], tail):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(t, u)
    assert not np.array_equal(full[0][1], list(reader.batches(2))[0][1])  # a new order each epoch


def test_jax_eval_transform_centre_crops_and_normalises():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    x = transform_image(img, 10)
    assert x.shape == (10, 10, 3)
    np.testing.assert_allclose(x[0, 0], [(1 - 0.48145466) / 0.26862954, (0 - 0.4578275) / 0.26130258,
                                         (0 - 0.40821073) / 0.27577711], atol=1e-5)


def test_jax_batch_must_split_over_hosts(uneven):
    with pytest.raises(ConfigError, match="global batch size 33 must divide by the number of processes 2"):
        plan_epoch([32, 64], 33, 2, 0, 0, 0)


def test_jax_shard_sizes_of_tfrecord_and_webdataset(tmp_path):
    from clipzoo.datasets import write_shapes
    from clipzoo.datasets.readers import open_dataset
    from clipzoo.train.jax.data import shard_sizes

    write_shapes(tmp_path, 30, image_size=16, formats=("webdataset", "tfrecord"), shard_size=20)
    for sub in ("webdataset", "tfrecord"):
        assert shard_sizes(open_dataset(str(tmp_path / sub), split="train").shards) == [20, 10], sub
