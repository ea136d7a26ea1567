"""One reading of "a real number" for every option that takes one (clipzoo.inputs.real_value): ensemble weights,
loss options and training config values take numpy's numbers and 0-d arrays / tensors, and refuse bools,
strings and None, each in its own one-line error."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from clipzoo.errors import BadOptionError
from clipzoo.inputs import real_value
from clipzoo.models.spec import ConfigError
from clipzoo.train.config_types import typed_value
from clipzoo.train.losses.base import LossInputError, check_positive


@pytest.mark.parametrize("value, expected", [
    (2, 2), (0.5, 0.5), (np.float32(0.25), 0.25), (np.int64(16), 16), (np.array(3.5), 3.5),
    (torch.tensor(1.5), 1.5), (torch.tensor(7), 7), (Fraction(1, 4), 0.25), (10**400, 10**400),
])
def test_real_numbers_read_as_python_numbers(value, expected):
    got = real_value(value)
    assert got == expected and type(got) in (int, float)


@pytest.mark.parametrize("value", [True, np.bool_(False), torch.tensor(True), "0.5", None, [1.0], np.array([1.0, 2.0]),
                                   torch.tensor([1.0]), 1j, object()])
def test_anything_else_is_not_a_real_number(value):
    assert real_value(value) is None


def test_the_three_readers_agree():
    from clipzoo.ensemble import _number

    for value in (np.float32(0.5), torch.tensor(0.5), np.array(0.5)):
        assert _number(value, "weight") == 0.5
        assert typed_value("lr", value, "float", "config.yaml") == 0.5
        check_positive("clip", temperature=value)  # no error
    for value in (True, "x", None):
        with pytest.raises(BadOptionError, match=f"^weight must be a number, got {value!r}$"):
            _number(value, "weight")
        with pytest.raises(LossInputError, match="^clip: temperature must be a positive number"):
            check_positive("clip", temperature=value)
    with pytest.raises(ConfigError, match="^config.yaml: lr must be a number, got True$"):
        typed_value("lr", True, "float", "config.yaml")
    with pytest.raises(BadOptionError, match=r"^weight is past float's range \(401 digits\)$"):
        _number(10**400, "weight")
