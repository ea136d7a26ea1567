"""Issue 17 §7, tracebacks for user input: a missing reference package for `clipzoo parity`, converting or
comparing to hf on a core install, and garbage `.safetensors` / `.pt` files given to `info` / `load` (with
and without `--trust-pickle`) each become one line naming the file or the extra — never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import clipzoo
from clipzoo.cli import app
from clipzoo.errors import CheckpointError

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
GARBAGE = bytes(range(121, 256)) * 8  # starts with 'y': no pickle, no zip, no safetensors header

# Runs the CLI in a child process where the named modules cannot be imported (as on a core install).
HIDDEN = """
import json, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from typer.testing import CliRunner
from clipzoo.cli import app
out = []
for args in json.loads(sys.argv[2]):
    r = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    out.append([r.exit_code, r.stderr, type(r.exception).__name__ if r.exception else None])
print(json.dumps(out))
"""


def one_line_error(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def garbage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("garbage")
    for name in ("g.safetensors", "g.pt"):
        (folder / name).write_bytes(GARBAGE)
    return folder


def test_missing_packages_for_parity_and_convert_are_one_line(tiny_files, tmp_path):
    src = str(tiny_files["open_clip_pt"])
    cases = [["parity", src, "--against", "openai"], ["parity", src, "--against", "hf"],
             ["convert", src, str(tmp_path / "out-hf"), "--to", "hf"]]
    done = subprocess.run([sys.executable, "-c", HIDDEN, "clip,transformers", json.dumps(cases)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    expected = [
        "error: parity against openai needs clip-anytorch, which is not installed; pip install clip-anytorch",
        "error: parity against hf needs transformers, which is not installed; pip install 'clipzoo[hf]'",
        "error: converting to hf needs transformers, which is not installed; pip install 'clipzoo[hf]'",
    ]
    for (code, stderr, exc), want in zip(results, expected):
        assert (code, stderr.strip().splitlines(), exc) == (2, [want], "SystemExit")
    assert not (tmp_path / "out-hf").exists()


@pytest.mark.parametrize("trust", [False, True])
def test_garbage_pt_is_one_line_naming_the_file(garbage, trust):
    path = garbage / "g.pt"
    why = "Unsupported operand 121"  # torch's weights-only reader on the first byte, 'y': read before any trust
    want = f"{path} is not a PyTorch checkpoint, safetensors file or TorchScript archive ({why}); " \
           "is it truncated or another format?"
    extra = ["--trust-pickle"] if trust else []
    assert one_line_error("info", path, *extra) == "error: " + want
    with pytest.raises(CheckpointError) as err:
        clipzoo.load(str(path), trust_pickle=trust)
    assert str(err.value) == want


def test_garbage_safetensors_is_one_line_naming_the_file(garbage):
    path = garbage / "g.safetensors"
    line = one_line_error("info", path)
    assert line.startswith(f"error: {path} is not a readable safetensors file (")
    with pytest.raises(CheckpointError, match=f"^{path} is not a readable safetensors file"):
        clipzoo.load(str(path))
    with pytest.raises(CheckpointError, match=f"^{path} is not a readable safetensors file"):
        clipzoo.load(str(path), trust_pickle=True)
