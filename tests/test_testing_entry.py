"""The tiny-model writers' command lines parse their arguments: ``--help`` prints help and writes nothing
(it used to create a folder named ``--help``); a missing OUT_DIR is a usage error (exit 2)."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["clipzoo.testing.tiny", "clipzoo.testing.tiny_hf", "clipzoo.testing.tiny_clap"])
def test_help_prints_usage_and_writes_nothing(module, tmp_path):
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module} [-h] OUT_DIR")
    assert list(tmp_path.iterdir()) == []


def test_missing_out_dir_is_a_usage_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "clipzoo.testing.tiny"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("python -m clipzoo.testing.tiny: error: the following "
                                                    "arguments are required: OUT_DIR")
    assert list(tmp_path.iterdir()) == []
