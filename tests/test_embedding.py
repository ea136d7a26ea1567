"""clipzoo.embed: folders expand, a DataLoader with decode workers gives the same rows as
``encode_image``, bad inputs name themselves, files are written whole with a sidecar."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import clipzoo
from clipzoo.embed import (
    embed_images,
    embed_texts,
    expand_image_paths,
    load_embeddings,
    read_texts,
    save_embeddings,
    sidecar_path,
)
from clipzoo.errors import BadImageError, BadTextError, ClipzooError

TEXTS = ["a red circle", "a blue square", "un chat", "一只猫的照片", "a photo of a dog", "x"]


@pytest.fixture(scope="module")
def model(tiny_files):
    return clipzoo.load(tiny_files["open_clip_safetensors"])


@pytest.fixture(scope="module")
def photo_tree(images, tmp_path_factory):
    """A nested folder: 5 images in two levels, plus a text file, a hidden file and an upper-case suffix."""
    root = tmp_path_factory.mktemp("photos")
    (root / "b").mkdir()
    (root / "a" / "deep").mkdir(parents=True)
    images[0].save(root / "b" / "z.png")
    images[1].save(root / "a" / "deep" / "y.jpg")
    images[2].save(root / "a" / "x.webp")
    images[0].resize((50, 50)).save(root / "c.PNG")
    images[1].save(root / "a" / "w.bmp")
    images[2].save(root / ".hidden.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folders_expand_recursively_sorted(photo_tree):
    paths = expand_image_paths([photo_tree])
    rel = [str(p)[len(str(photo_tree)) + 1:] for p in paths]
    assert rel == ["a/deep/y.jpg", "a/w.bmp", "a/x.webp", "b/z.png", "c.PNG"]
    # files stay as given, mixed with folders, in order
    one = str(photo_tree / "b" / "z.png")
    assert expand_image_paths([one, photo_tree / "a" / "deep"]) == [one, str(photo_tree / "a" / "deep" / "y.jpg")]


def test_missing_and_empty_inputs_name_themselves(tmp_path):
    with pytest.raises(BadImageError, match="nope.jpg"):
        expand_image_paths([tmp_path / "nope.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadImageError, match="empty"):
        expand_image_paths([tmp_path / "empty"])


@pytest.mark.parametrize("workers,batch_size", [(0, 64), (2, 2)])
def test_rows_equal_encode_image(model, photo_tree, workers, batch_size):
    """Exact decoding gives encode_image's rows; the default (fast decoding: torch's resize) within 0.9999 cosine."""
    paths = expand_image_paths([photo_tree])
    result = embed_images(model, [photo_tree], workers=workers, batch_size=batch_size, fast_decode=False)
    assert result.inputs == paths and result.modality == "image" and result.features.dtype == np.float32
    expected = model.encode_image(paths).numpy()
    assert result.features.shape == expected.shape == (5, model.embed_dim)
    assert np.abs(result.features - expected).max() <= 1e-5
    raw = embed_images(model, paths, workers=workers, batch_size=batch_size, normalize=False,
                       fast_decode=False).features
    assert np.abs(raw - model.encode_image(paths, normalize=False).numpy()).max() <= 1e-5
    fast = embed_images(model, [photo_tree], workers=workers, batch_size=batch_size)
    assert fast.inputs == paths and (fast.features * expected).sum(1).min() >= 0.9999


def test_corrupt_image_in_a_worker_names_the_file(model, photo_tree, tmp_path):
    good = expand_image_paths([photo_tree])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(BadImageError) as err:
        embed_images(model, [*good[:3], bad, *good[3:]], workers=2, batch_size=2)
    msg = str(err.value)
    assert "broken.jpg" in msg and "\n" not in msg and "Traceback" not in msg and "--skip-bad" in msg

    result = embed_images(model, [*good[:3], bad, *good[3:]], workers=2, batch_size=2, skip_bad=True,
                          fast_decode=False)
    assert result.inputs == good
    assert [s["input"] for s in result.skipped] == [str(bad)]
    assert np.abs(result.features - model.encode_image(good).numpy()).max() <= 1e-5


def test_texts_equal_encode_text(model, tmp_path):
    file = tmp_path / "texts.txt"
    file.write_text("\n".join(TEXTS[:3]) + "\n\n  \n" + "\n".join(TEXTS[3:]) + "\n", encoding="utf-8")
    texts = read_texts(file)
    assert texts == TEXTS
    result = embed_texts(model, texts, batch_size=4)
    assert result.inputs == TEXTS and result.modality == "text"
    assert np.abs(result.features - model.encode_text(TEXTS).numpy()).max() <= 1e-5


def test_text_errors(model, tmp_path):
    with pytest.raises(ClipzooError, match="missing.txt"):
        read_texts(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(BadTextError, match="blank.txt"):
        read_texts(tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(BadTextError, match="UTF-8"):
        read_texts(tmp_path / "latin1.txt")
    long = "word " * 100
    with pytest.raises(BadTextError, match="context length"):
        embed_texts(model, ["short", long])
    assert embed_texts(model, ["short", long], truncate=True).features.shape == (2, model.embed_dim)


def test_save_and_load_round_trip(model, photo_tree, tmp_path):
    result = embed_images(model, [photo_tree], workers=0)
    npy, side = save_embeddings(result, tmp_path / "out" / "emb")  # .npy added, folder created
    assert npy == tmp_path / "out" / "emb.npy" and side == sidecar_path(npy) == tmp_path / "out" / "emb.json"
    assert np.array_equal(np.load(npy), result.features)
    meta = json.loads(side.read_text())
    assert meta["inputs"] == result.inputs and meta["count"] == 5 and meta["dim"] == model.embed_dim
    assert meta["model"] == model.card.alias and meta["modality"] == "image" and meta["normalized"] is True
    back = load_embeddings(npy)
    assert back.inputs == result.inputs and np.array_equal(back.features, result.features)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["emb.json", "emb.npy"]  # no .part left


def test_features_match_float_tensor_path(model, images):
    """The DataLoader path feeds preprocessed tensors: same numbers as passing PIL images."""
    pixels = torch.stack([model.preprocess(im) for im in images])
    assert torch.allclose(model.encode_image(pixels), model.encode_image(images), atol=1e-6)
