"""Issue 17 §7, docs true to the code: every `clipzoo …` and `python benchmarks/….py` command in the README's
and docs/'s ```bash blocks and inline code names a command that exists and only flags that command takes
(checked against the real command line: click's parameters of the typer app, argparse's --help of each
benchmark); the README's extras exist."""
from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from clipzoo.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(?:bash|sh|console|shell)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`((?:clipzoo|python3? benchmarks/|torchrun) [^`\n]*)`(?!`)")
FLAG = re.compile(r"^--?[A-Za-z][\w-]*")


def commands() -> list[tuple[str, int, list[str]]]:
    """(file, line, argv) of each documented clipzoo / benchmark command (continuations joined, comments cut)."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in BLOCK.finditer(text):
            first = text[: block.start(1)].count("\n") + 1
            joined, start = "", None
            for i, raw in enumerate(block.group(1).splitlines()):
                line = raw.rstrip()
                start = first + i if start is None else start
                if line.endswith("\\"):
                    joined += line[:-1] + " "
                    continue
                joined += line
                argv = _argv(joined)
                if argv:
                    found.append((doc.name, start, argv))
                joined, start = "", None
        for span in INLINE.finditer(text):  # `clipzoo …` in the prose, too
            argv = _argv(span.group(1))
            if argv:
                found.append((doc.name, text[: span.start()].count("\n") + 1, argv))
    return found


def _argv(line: str) -> "list[str] | None":
    line = line.strip().removeprefix("$ ")
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    for sep in ("&&", "|", ";", ">", "2>"):
        if sep in words:
            words = words[: words.index(sep)]
    if "-m" in words and words[0] in ("torchrun", "python", "python3") and words[words.index("-m") + 1:][:1] in (
            ["clipzoo"], ["clipzoo.cli"]):
        return ["clipzoo", *words[words.index("-m") + 2:]]
    if words[:1] == ["clipzoo"]:
        return words
    if len(words) > 1 and words[0] in ("python", "python3") and words[1].startswith("benchmarks/"):
        return words[1:]
    return None


@functools.cache
def _benchmark_flags(script: str) -> frozenset[str]:
    done = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, (script, done.stderr[-500:])
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", done.stdout))


def _click_command(words: list[str]):
    """The click command a documented ``clipzoo`` argv reaches, and the words after its name."""
    cmd = typer.main.get_command(app)
    rest = words[1:]
    while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    return cmd, rest


def _flags(argv: list[str]) -> list[str]:
    return [FLAG.match(w).group(0) for w in argv if FLAG.match(w) and not re.match(r"^-\d", w)]


DOCUMENTED = commands()


def test_the_docs_hold_commands():
    assert len(DOCUMENTED) > 60
    assert any(a[0].startswith("benchmarks/") for _, _, a in DOCUMENTED)


@pytest.mark.parametrize("where,line,argv", DOCUMENTED, ids=[f"{f}:{n}" for f, n, _ in DOCUMENTED])
def test_documented_command_exists_with_its_flags(where, line, argv):
    if argv[0].startswith("benchmarks/"):
        known = _benchmark_flags(argv[0])
        unknown = [f for f in _flags(argv) if f.split("=")[0] not in known]
        assert not unknown, f"{where}:{line}: {argv[0]} has no {unknown}"
        return
    cmd, rest = _click_command(argv)
    if hasattr(cmd, "commands") and rest and re.fullmatch(r"[A-Z_]+", rest[0]):
        return  # `clipzoo eval TASK …`: a placeholder for any of the group's commands
    if hasattr(cmd, "commands"):  # a group: the documented words must name one of its commands
        assert not rest or rest[0].startswith("-"), f"{where}:{line}: no command {' '.join(argv[:3])!r}"
    known = {"--help"}
    for p in cmd.params:
        known.update(p.opts)
        known.update(p.secondary_opts)
    if argv[:2] == ["clipzoo", "train"] and "--engine" in rest:  # open_clip_jax's options, parsed by the jax engine
        from clipzoo.cli.train import JAX_FLAGS

        known.update(JAX_FLAGS, {"--grad-checkpoint"})
    unknown = [f for f in _flags(rest) if f.split("=")[0] not in known]
    assert not unknown, f"{where}:{line}: `{' '.join(argv[:3])}` has no {unknown}"


def test_documented_extras_exist_and_all_lists_them():
    """README's install lines name real extras, and the `[all]` line's comment lists what pyproject's `all` holds."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    readme = (ROOT / "README.md").read_text()
    named = re.findall(r"pip install -e '\.\[(\w+)\]'", readme) + re.findall(r"clipzoo\[(\w+)\]", readme)
    assert named and set(named) <= set(extras), set(named) - set(extras)
    line = re.search(r"pip install -e '\.\[all\]'\s+# (.*)", readme).group(1)
    in_all = re.fullmatch(r"clipzoo\[(.*)\]", extras["all"][0]).group(1).split(",")
    documented = re.findall(r"\b(" + "|".join(extras) + r")\b", line.split("(")[0])
    assert sorted(documented) == sorted(in_all), (documented, in_all)
