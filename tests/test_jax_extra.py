"""Without the ``jax`` extra, anything JAX is a one-line ClipzooError naming it (runs with or without JAX)."""
from __future__ import annotations

import importlib
import sys

import pytest

from clipzoo.backends import get_backend
from clipzoo.errors import MissingExtraError

JAX_MODULES = ("clipzoo.backends.jax", "clipzoo.models.jax_clip")


@pytest.fixture
def no_jax(monkeypatch):
    """As if jax and flax were not installed (a None entry in sys.modules makes their import fail)."""
    for name in ("jax", "jax.numpy", "flax", "flax.linen"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in JAX_MODULES:  # imported afresh inside the test; restored afterwards
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_backend_names_the_extra(no_jax):
    with pytest.raises(MissingExtraError, match=r"^backend 'jax' needs jax, which is not installed; "
                                                r"pip install 'clipzoo\[jax\]'$"):
        get_backend("jax")


def test_model_module_names_the_extra(no_jax):
    with pytest.raises(MissingExtraError, match=r"^the JAX engine needs jax, which is not installed; "
                                                r"pip install 'clipzoo\[jax\]'$"):
        importlib.import_module("clipzoo.models.jax_clip")


def test_configs_and_conversion_need_no_jax(no_jax):
    from clipzoo.convert.jax import open_clip_config
    from clipzoo.models.jax_config import get_config

    assert get_config("vit-base-patch32").image.n_heads == 12
    assert open_clip_config("vit-base-patch32", 224, 77)["vision_cfg"]["head_width"] == 64
