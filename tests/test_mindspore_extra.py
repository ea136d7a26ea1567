"""MindSpore engine §1: without the ``mindspore`` extra, every MindSpore feature is one ClipzooError naming it
(runs with or without MindSpore installed: its absence is simulated)."""
from __future__ import annotations

import importlib
import sys

import pytest

from clipzoo.backends import get_backend
from clipzoo.errors import MissingExtraError

MS_MODULES = ("clipzoo.backends.mindspore", "clipzoo.models.mindspore_clip", "clipzoo.models.mindspore_layers",
              "clipzoo.models.mindspore_resnet")
HINT = r"needs mindspore, which is not installed; pip install 'clipzoo\[mindspore\]'$"


@pytest.fixture
def no_mindspore(monkeypatch):
    """As if MindSpore were not installed (a None entry in sys.modules makes its import fail)."""
    for name in ("mindspore", "mindspore.nn", "mindspore.ops"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in MS_MODULES:  # imported afresh inside the test; restored afterwards
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_backend_names_the_extra(no_mindspore):
    with pytest.raises(MissingExtraError, match=r"^backend 'mindspore' " + HINT):
        get_backend("mindspore")


def test_model_module_names_the_extra(no_mindspore):
    with pytest.raises(MissingExtraError, match=r"^the MindSpore engine " + HINT):
        importlib.import_module("clipzoo.models.mindspore_clip")


def test_ckpt_files_name_the_extra(no_mindspore, tmp_path):
    from clipzoo.models.mindspore_names import read_ckpt, write_ckpt

    with pytest.raises(MissingExtraError, match=r"^reading MindSpore \.ckpt files " + HINT):
        read_ckpt(tmp_path / "model.ckpt")
    with pytest.raises(MissingExtraError, match=r"^writing MindSpore \.ckpt files " + HINT):
        write_ckpt(tmp_path / "model.ckpt", {})


def test_convert_and_load_name_the_extra(no_mindspore, tmp_path):
    import clipzoo
    from clipzoo.convert import convert

    with pytest.raises(MissingExtraError, match=r"^converting to mindspore " + HINT):
        convert("tiny.pt", tmp_path / "model.ckpt", to="mindspore")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\0")
    with pytest.raises(MissingExtraError, match=r"^backend 'mindspore' " + HINT):
        clipzoo.load(str(ckpt))  # a .ckpt is MindSpore's: sniffed to the mindspore backend


def test_configs_and_renaming_need_no_mindspore(no_mindspore):
    from clipzoo.models.mindspore_config import get_config
    from clipzoo.models.mindspore_names import to_mindspore_name

    assert get_config("ViT-B/32")["quick_gelu"] is True
    assert to_mindspore_name("visual.layer1.0.downsample.1.running_var") == \
        "visual.layer1.0.downsample.1.moving_variance"


def test_torch_ckpt_files_stay_with_torch(tmp_path):
    """A ``.ckpt`` written by ``torch.save`` (Lightning's suffix) is sniffed as torch, not MindSpore."""
    import torch

    import clipzoo
    from clipzoo.testing.tiny import state_dict

    torch.save(state_dict(0), tmp_path / "lightning.ckpt")
    assert clipzoo.load(str(tmp_path / "lightning.ckpt")).card.backend == "open_clip"
