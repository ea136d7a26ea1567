"""The wheel and the sdist carry the LICENSE and the package data a user's install needs (the embedded
model's packed files, the catalogue's cards, the service's page)."""
from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("catalog/tiny-shapes.json", "catalog/tiny-shapes.safetensors", "catalog/openai.toml",
          "serve/static/index.html", "datasets/builtin_classnames.json")


def _build(kind: str, out: Path) -> Path:
    code = f"from setuptools import build_meta; print(build_meta.build_{kind}({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out / done.stdout.strip().splitlines()[-1]


def test_sdist_has_the_license_and_package_data(tmp_path):
    with tarfile.open(_build("sdist", tmp_path)) as sdist:
        names = sdist.getnames()
    assert "clipzoo-0.1.0/LICENSE" in names
    for path in NEEDED:
        assert f"clipzoo-0.1.0/src/clipzoo/{path}" in names, path


def test_wheel_has_the_license_and_package_data(tmp_path):
    with zipfile.ZipFile(_build("wheel", tmp_path)) as wheel:
        names = wheel.namelist()
    assert "clipzoo-0.1.0.dist-info/licenses/LICENSE" in names
    for path in NEEDED:
        assert f"clipzoo/{path}" in names, path
