"""Issue 22 §4: the embedding path's decoder (simplejpeg / PIL, DCT scaling only with a 2× margin) decodes
identically enough (embedding cosine >= 0.9999 against PIL's full decode), falls back to PIL without simplejpeg,
and decode workers hand uint8 batches over in shared memory with the same rows as the in-process path."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import clipzoo
from clipzoo.embed import decode as dec
from clipzoo.embed.batches import image_batches
from clipzoo.embed.distributed import DistributedInfo
from clipzoo.embed.handover import Uint8Crop, normalize_uint8, split_transform, stack_shared
from clipzoo.embed.loader import image_loader
from clipzoo.inputs import open_image

MIN_COSINE = 0.9999


def photo(i: int, w: int, h: int) -> np.ndarray:
    """A smooth photo-like image (gradients, discs, a little noise), as benchmarks/embed_folder.py writes."""
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / max(w, h)
    arr = np.stack([np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 6)) + np.cos(5 * y * rng.uniform(0.5, 2))
                    for _ in range(3)], -1)
    for _ in range(5):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.75), rng.uniform(0.03, 0.2)
        arr += (((x - cx) ** 2 + (y - cy) ** 2) < r * r)[..., None] * rng.uniform(-1.5, 1.5, 3).astype(np.float32)
    arr += rng.normal(0, 0.05, arr.shape).astype(np.float32)
    return ((arr - arr.min()) / (arr.max() - arr.min()) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("issue22-jpegs")
    paths = []
    for i, (w, h) in enumerate([(640, 480)] * 4 + [(480, 640)] * 2 + [(1280, 960)] * 2 + [(300, 200)] * 2):
        path = folder / f"{i:03d}.jpg"
        Image.fromarray(photo(i, w, h)).save(path, quality=90)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def model():
    return clipzoo.load("clipzoo/tiny-shapes")


def min_cosine(model, images_a, images_b) -> float:
    with torch.no_grad():
        a, b = model.encode_image(images_a), model.encode_image(images_b)
    return torch.nn.functional.cosine_similarity(a, b).min().item()


def pil_full(path):
    with Image.open(path) as im:
        return im.convert("RGB")


def test_issue22_4_chosen_decoder_matches_pil_full_decode(jpegs, model):
    assert dec.decoder_name() == "simplejpeg"  # installed by [test] (and [decode])
    size = model.image_size  # 64: the 640×480 photos are DCT-scaled by 2 (both sides stay >= 128)
    assert [dec.dct_scale(*Image.open(p).size, size) for p in jpegs] == [2] * 6 + [4] * 2 + [1] * 2
    fast = [dec.decode_file(p, size) for p in jpegs]
    assert [im.size for im in fast[:2]] == [(320, 240)] * 2
    assert min_cosine(model, fast, [pil_full(p) for p in jpegs]) >= MIN_COSINE
    whole = [dec.decode_file(p) for p in jpegs]  # no scaling: libjpeg-turbo's pixels are PIL's
    assert all(np.array_equal(np.asarray(a), np.asarray(pil_full(p))) for a, p in zip(whole, jpegs))


def test_issue22_4_dct_scale_keeps_twice_the_input_side():
    assert dec.SCALE_MARGIN == 2
    assert dec.dct_scale(640, 480, 224) == 1  # 320×240 would come within 1.07× of 224: decoded whole
    assert dec.dct_scale(1280, 960, 224) == 2 and dec.dct_scale(4000, 3000, 224) == 4
    assert dec.dct_scale(640, 480, 64) == 2 and dec.dct_scale(640, 480, None) == 1


def test_issue22_4_falls_back_to_pil_without_simplejpeg(jpegs):
    dec.decoder_name.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "simplejpeg", None)  # `import simplejpeg` raises ImportError
        assert dec.decoder_name() == "pil"
        for path in jpegs[:3]:
            got = dec.decode_file(path, 64)
            with Image.open(path) as im:
                im.draft("RGB", (im.size[0] // 2, im.size[1] // 2))
                want = im.convert("RGB")
            assert got.size == want.size == (320, 240) and np.array_equal(np.asarray(got), np.asarray(want))
            assert np.array_equal(np.asarray(dec.decode_file(path)), np.asarray(pil_full(path)))
        dec.decoder_name.cache_clear()
    assert dec.decoder_name() == "simplejpeg"


def test_issue22_4_cmyk_exif_and_broken_files_go_through_pil(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(photo(1, 96, 64)).convert("CMYK").save(cmyk, quality=90)  # libjpeg-turbo cannot make RGB
    assert np.array_equal(np.asarray(dec.decode_file(cmyk, 32)), np.asarray(open_image(str(cmyk))))
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 270 to display upright
    Image.fromarray(photo(2, 96, 64)).save(turned, quality=90, exif=exif.tobytes())
    assert dec.decode_file(turned).size == (64, 96)
    assert np.array_equal(np.asarray(dec.decode_file(turned)), np.asarray(open_image(str(turned))))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    with pytest.raises(clipzoo.errors.BadImageError, match="broken.jpg.*cannot be decoded"):
        dec.decode_file(broken, 32)


def test_issue22_4_uint8_split_is_bit_identical_to_the_float_transforms(tmp_path, model):
    from clipzoo.testing.tiny import write_open_clip_hub_folder

    open_clip_model = clipzoo.load(str(write_open_clip_hub_folder(tmp_path / "tiny")))  # torchvision Compose
    ims = [Image.fromarray(photo(i, w, h)) for i, (w, h) in enumerate([(80, 48), (40, 90), (32, 32), (33, 200)])]
    for comparator in (model, open_clip_model):
        split = split_transform(comparator.transform)
        assert split is not None and split.size == comparator.image_size
        crops = torch.stack([Uint8Crop(split)(im) for im in ims])
        assert crops.dtype == torch.uint8 and crops.shape[1:] == (split.size, split.size, 3)
        reference = torch.stack([comparator.transform(im) for im in ims])
        assert torch.equal(normalize_uint8(crops, split), reference)
        channels_last = normalize_uint8(crops, split, channels_last=True, dtype=torch.bfloat16)  # the GPU path's
        assert channels_last.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(channels_last, reference.to(torch.bfloat16))
        assert crops.dtype == torch.uint8  # normalised in a copy: the shared-memory batch is left as it was
    assert split_transform(lambda im: im) is None


def test_issue22_4_shared_memory_handover_gives_the_in_process_batches(jpegs, model):
    if "jax" in sys.modules:  # loaders decode in-process once JAX is loaded (clipzoo.processes): check in a fresh one
        test_id = f"{__file__}::test_issue22_4_shared_memory_handover_gives_the_in_process_batches"
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", test_id],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:]
        return
    split = split_transform(model.transform)
    in_process = list(image_loader(jpegs, Uint8Crop(split), batch_size=4, workers=0, draft_size=64))
    workers = list(image_loader(jpegs, Uint8Crop(split), batch_size=4, workers=2, draft_size=64))
    assert [b[0] for b in workers] == [b[0] for b in in_process] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for (_, a, _), (_, b, _) in zip(in_process, workers):
        assert b.dtype == torch.uint8 and b.is_shared() and not a.is_shared()  # stacked in shared memory
        assert torch.equal(a, b)
    assert stack_shared([torch.ones(2)]).is_shared() is False  # outside a worker: a plain stack


@pytest.mark.parametrize("workers", [0, 2])
def test_issue22_4_embedding_rows_equal_the_reference_path(jpegs, model, workers):
    """image_batches (the embedding pipeline: fast decode and resize, uint8 handover, normalisation after) gives
    rows within 0.9999 cosine of encode_image on the same decoded images and of PIL's full decode; without fast
    decoding (PIL's resize), the rows of encode_image exactly."""
    batches = list(image_batches(model, jpegs, 4, workers, True, False, False, True, DistributedInfo()))
    exact = list(image_batches(model, jpegs, 4, workers, True, False, False, False, DistributedInfo()))
    rows, exact_rows = (np.concatenate([b[1] for b in run]) for run in (batches, exact))
    with torch.no_grad():
        want = model.encode_image([dec.decode_file(p, 64) for p in jpegs]).numpy()
        full = model.encode_image([pil_full(p) for p in jpegs]).numpy()
    assert [n for b in batches for n in b[0]] == [n for b in exact for n in b[0]] == jpegs
    assert np.abs(exact_rows - full).max() <= 1e-6
    assert np.abs(rows - want).max() > 0 and (rows * want).sum(1).min() >= MIN_COSINE  # torch's resize, not PIL's
    assert (rows * full).sum(1).min() >= MIN_COSINE  # normalised rows: the dot product is the cosine


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_issue22_4_fast_resize_is_within_one_level_of_pils(interpolation):
    """torch's antialiased uint8 resize (the fast path's) against PIL's, down and up, landscape and portrait:
    at most one level apart, and most pixels equal; nearest takes PIL's path."""
    from clipzoo.embed.handover import fast_resize_crop
    from clipzoo.models.pil_transform import PilEvalTransform

    t = PilEvalTransform(224, (0.5,) * 3, (0.5,) * 3, interpolation)
    for i, (w, h) in enumerate([(640, 480), (480, 640), (1280, 960), (300, 200), (150, 100), (224, 224),
                                (2000, 230)]):
        im = Image.fromarray(photo(i, w, h))
        fast, pil = fast_resize_crop(im, t), torch.from_numpy(np.array(t.resize_crop(im)))
        diff = (fast.int() - pil.int()).abs()
        assert fast.dtype == torch.uint8 and fast.shape == pil.shape == (224, 224, 3)
        assert diff.max() <= 1 and diff.float().mean() < 0.05, ((w, h), diff.max(), diff.float().mean())
        assert torch.equal(Uint8Crop(t, fast=True)(im), fast) and torch.equal(Uint8Crop(t)(im), pil)
    nearest = PilEvalTransform(224, (0.5,) * 3, (0.5,) * 3, "nearest")
    im = Image.fromarray(photo(11, 640, 480))
    assert torch.equal(Uint8Crop(nearest, fast=True)(im), torch.from_numpy(np.array(nearest.resize_crop(im))))
