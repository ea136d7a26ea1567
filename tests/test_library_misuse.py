"""The library's public API against a newcomer's mistakes and an attacker's inputs (found by probing it): each is
clipzoo's own error naming the problem — never a silently wrong result, an internal IndexError / torch error, or
a registry broken for the rest of the process."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

import clipzoo
from clipzoo.errors import (
    BadImageError,
    BadOptionError,
    BadTextError,
    CheckpointError,
    ClipzooError,
    DownloadError,
    UnknownModelError,
    UnsafePickleError,
)
from clipzoo.templates import TemplateError

TINY = "[clip - clipzoo - tiny-shapes]"
IMG = np.zeros((64, 64, 3), np.uint8)


@pytest.fixture(scope="module")
def m():
    return clipzoo.load(TINY)


def test_register_refuses_a_card_that_would_break_lookups(tmp_path):
    """register(id=5) stored a card whose id had no .strip(): every later unknown spec raised AttributeError."""
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"x")
    for fields, said in [({"id": 5}, "register(): id must be a non-empty string, got 5"),
                         ({"architecture": "cl - ip", "id": "x"},
                          "register(): [cl - ip - local - x] does not read back as an alias"),
                         ({"id": "y", "modalities": ("smell",)}, "unknown modality 'smell'")]:
        with pytest.raises(ClipzooError) as err:
            clipzoo.register(path=str(path), **fields)
        assert str(err.value).startswith(said)
    assert clipzoo.register(id="one-modality", path=str(path), modalities="image").modalities == ("image",)
    with pytest.raises(UnknownModelError, match=r"^unknown model '\[clip - clipzoo - tiny-shape\]' \(closest known: "
                                                r"\[clip - clipzoo - tiny-shapes\]"):
        clipzoo.load("[clip - clipzoo - tiny-shape]")


def test_predict_takes_a_string_as_one_label_and_refuses_a_template_without_a_placeholder(m):
    """predict(img, "circle") classified over the letters c, i, r, …; templates="a photo" over its letters; a
    template without '{}' gave every label the same prompt and the same probability."""
    assert m.predict(IMG, "circle").shape == (1, 1)
    assert torch.equal(m.predict(IMG, ["red square", "blue circle"], templates="a photo of a {}."),
                       m.predict(IMG, ["red square", "blue circle"], templates=["a photo of a {}."]))
    with pytest.raises(TemplateError, match=r"^prompt template 'a photo' has no '\{\}' where the label goes"):
        m.predict(IMG, ["red square", "blue circle"], templates="a photo")
    ens = clipzoo.Ensemble([m])
    assert ens.predict(IMG, "ab").shape == (1, 1)


@pytest.mark.parametrize("batch_size, said", [(0, "batch size must be at least 1, got 0"),
                                              (-1, "batch size must be at least 1, got -1"),
                                              (1.5, "batch size must be a whole number, got 1.5"),
                                              (True, "batch size must be a whole number, got True"),
                                              (None, "batch size must be a whole number, got None")])
def test_batch_sizes_that_are_not_whole_positive_numbers(m, batch_size, said):
    for call in (lambda: m.encode_text(["a"], batch_size=batch_size),
                 lambda: m.encode_image([IMG], batch_size=batch_size),
                 lambda: m.encode_image(torch.rand(2, 3, 64, 64), batch_size=batch_size)):
        with pytest.raises(BadOptionError) as err:
            call()
        assert str(err.value) == said


def test_float_tensors_are_encoded_batch_size_rows_at_a_time(m, monkeypatch):
    x = torch.rand(10, 3, 64, 64)
    whole = m.encode_image(x)
    seen = []
    real = type(m).encode_pixels

    def counting(self, pixels):
        seen.append(len(pixels))
        return real(self, pixels)

    monkeypatch.setattr(type(m), "encode_pixels", counting)
    assert (m.encode_image(x, batch_size=3) - whole).abs().max() <= 1e-6
    assert seen == [3, 3, 3, 1]  # was one forward pass of 10: activations grew with the tensor


def test_images_with_no_pixels_or_non_finite_pixels(m):
    for bad, said in [(np.zeros((0, 0, 3), np.uint8), "image 0 is 0×0: it has no pixels"),
                      (np.zeros((5, 0, 3), np.uint8), "image 0 is 0×5: it has no pixels")]:
        with pytest.raises(BadImageError) as err:
            m.encode_image(bad)  # was a ZeroDivisionError in the resize
        assert str(err.value) == said
    with pytest.raises(BadImageError, match=r"^a \[0, 1\] image tensor \(1, 3, 0, 0\) holds no pixels$"):
        m.encode_image01(torch.rand(1, 3, 0, 0))
    for x, call in [(torch.full((1, 3, 64, 64), math.nan), m.encode_image),
                    (torch.full((1, 3, 8, 8), math.inf), m.encode_image01)]:
        with pytest.raises(BadImageError, match="holds NaN or infinite values; pass finite pixels$"):
            call(x)  # rows of NaN came back
    with pytest.raises(BadImageError) as err:  # said "cannot use a Tensor …; pass … a preprocessed float tensor"
        m.encode_image([torch.rand(3, 64, 64), torch.rand(3, 64, 64)])
    assert str(err.value) == ("image 0: a float32 tensor in a list; pass preprocessed tensors stacked as one (N, 3, "
                              "H, W) tensor (torch.stack), and images in a list as file paths, PIL images or uint8 "
                              "HWC arrays")


def test_token_tensors_that_model_tokenize_cannot_have_made(m):
    tokens = m.tokenize(["a red circle"])
    assert torch.equal(m.encode_text(tokens), m.encode_text(["a red circle"]))
    for bad, said in [(tokens.float(), "a token tensor holds integer ids (from model.tokenize), not torch.float32"),
                      (tokens[None], "a token tensor is (N, L) with N, L >= 1 (from model.tokenize), got (1, 1, 24)"),
                      (tokens[:0], "a token tensor is (N, L) with N, L >= 1 (from model.tokenize), got (0, 24)"),
                      (-tokens, "a token tensor holds negative ids; make it with model.tokenize"),
                      (torch.ones(1, 100, dtype=torch.long),
                       "a token tensor of 100 positions is longer than the model's context length 24; make it with "
                       "model.tokenize"),
                      (tokens * 0 + 10**6, f"a token id (1000000) is past {TINY}'s vocabulary; make the tokens with "
                                           "model.tokenize")]:
        with pytest.raises(BadTextError) as err:
            m.encode_text(bad)
        assert str(err.value) == said


def test_non_finite_weights_are_said_not_returned(m, monkeypatch):
    broken = clipzoo.load(TINY)
    with torch.no_grad():
        next(broken.model.visual.parameters()).fill_(math.nan)
    with pytest.raises(ClipzooError, match=r"gave NaN or infinite features: its weights hold non-finite values"):
        broken.encode_image(IMG)
    monkeypatch.setattr(type(m), "logit_params", lambda self: (torch.tensor(math.inf), None))
    with pytest.raises(ClipzooError, match=r"logit scale or bias is not finite \(inf\)"):
        m.predict(IMG, ["a", "b"])


def test_malformed_checkpoints_and_configs_are_checkpoint_errors(tmp_path):
    from safetensors.torch import save_file

    from clipzoo.testing.tiny_hf import write_clip

    sd = {k: v.contiguous() for k, v in clipzoo.load(TINY).model.state_dict().items()}
    for meta, said in [("{not json", "'s metadata 'open_clip_config' is not JSON"),
                       ("[1, 2]", "'s metadata 'open_clip_config' holds a JSON list, not an object of settings"),
                       ('{"model_cfg": 3}', "'s metadata 'open_clip_config' has no 'model_cfg' object")]:
        path = tmp_path / "m.safetensors"
        save_file(sd, str(path), metadata={"open_clip_config": meta})
        with pytest.raises(CheckpointError, match=said):
            clipzoo.load(str(path))
    folder = write_clip(tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config.json holds a JSON list, not an object of settings"):
        clipzoo.load(str(folder))  # was AttributeError: 'list' object has no attribute 'get'
    (folder / "config.json").write_text(json.dumps(config))

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'PWNED'}",)

    for name in list(os.listdir(folder)):
        if name.endswith((".safetensors", ".bin")):
            os.unlink(folder / name)
    torch.save({"x": Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(UnsafePickleError, match=r"its weights are a pickle that needs more than tensors to load "
                                                r"\(it asks for posix.system, which weights-only loading does not"):
        clipzoo.load(str(folder))  # was a raw pickle.UnpicklingError
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match=r"\(it asks for posix.system, which weights-only loading does not "
                                                r"allow\); loading it can run arbitrary code"):
        clipzoo.load(str(tmp_path / "evil.pt"))
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "text.pt").write_text("hello world\n")
    with pytest.raises(CheckpointError, match=r"TorchScript archive \(it starts with 'hello world\\n'\); is it"):
        clipzoo.load(str(tmp_path / "text.pt"))  # said "(101)", torch's KeyError


def test_devices_and_urls_that_cannot_be_had(m):
    with pytest.raises(ClipzooError, match=r"^device 'bogus' is not a device; use 'cpu', 'cuda'"):
        clipzoo.load(TINY, device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ClipzooError, match=r"^device 'cuda': torch sees 0 CUDA device\(s\) here; use "
                                               r"device='cpu'$"):
            clipzoo.load(TINY, device="cuda")  # was torch's "Found no NVIDIA driver"
    with pytest.raises(DownloadError, match=r"^ftp://127.0.0.1:1/y.pt: cannot reach it \(ConnectionRefusedError"):
        clipzoo.load("ftp://127.0.0.1:1/y.pt")  # was a raw socket error: fsspec's FTP connects when made


def test_ensemble_and_guidance_arguments(m):
    from clipzoo.guidance import cutouts

    ens = clipzoo.Ensemble([m, m], weights=(w for w in [1, 3]))  # a generator: was an IndexError
    assert list(ens.weights.values()) == [0.25, 0.75]
    big = clipzoo.Ensemble([m, m], weights=[1e308, 1e308])  # summed to inf: both weights became 0.0
    assert list(big.weights.values()) == [0.5, 0.5]
    with pytest.raises(BadOptionError, match=r"^model weight must be a number, got 'x'$"):
        clipzoo.Ensemble([m], weights=["x"])
    assert [str(x) for x in clipzoo.Ensemble([m], modalities="image").modalities] == ["image"]  # not 'i', 'm', …
    x = torch.rand(1, 3, 32, 32)
    for prompts, said in [([("a", math.nan)], "prompt 0's weight is nan; give a finite number"),
                          ([("a", math.inf)], "prompt 0's weight is inf; give a finite number"),
                          ([("a", "x")], "prompt 0's weight must be a number, got 'x'")]:
        with pytest.raises(ClipzooError, match=f"^{said}"):
            ens.loss(x, prompts)
    for call, said in [(lambda: cutouts(x, 2, 0), "cutout size must be at least 1×1, got 0×0"),
                       (lambda: ens.loss(x, "a", cutouts=2.5), "cutouts needs a whole number n >= 1, got 2.5"),
                       (lambda: ens.loss(torch.rand(0, 3, 8, 8), "a"), r"a \[0, 1\] image tensor \(0, 3, 8, 8\) holds "
                                                                       "no pixels")]:
        with pytest.raises(ClipzooError, match=f"^{said}$"):
            call()
