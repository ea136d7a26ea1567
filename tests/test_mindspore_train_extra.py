"""MindSpore engine §6 without the extra: ``clipzoo train --engine mindspore`` is one line naming ``clipzoo[mindspore]``
(MindSpore's absence is simulated, so this runs in the main suite and in .venv-ms alike)."""
from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from clipzoo.cli import app

MESSAGE = ("error: the MindSpore training engine (clipzoo train --engine mindspore) needs mindspore, which is not "
           "installed; pip install 'clipzoo[mindspore]'\n")


@pytest.fixture
def no_mindspore(monkeypatch):
    for name in ("mindspore", "mindspore.nn", "mindspore.ops", "mindspore.experimental"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m.startswith("clipzoo.train.mindspore")]:
        monkeypatch.delitem(sys.modules, name)


def test_issue19_6_train_engine_mindspore_names_the_extra(no_mindspore, tmp_path):
    r = CliRunner().invoke(app, ["train", "--engine", "mindspore", "--model", "tiny-ViT", "--data",
                                 str(tmp_path / "train.csv"), "--steps", "2", "--output", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert r.stderr == MESSAGE
    assert not (tmp_path / "run").exists()
