"""Smoke test of the base install (no extras), run by scripts/smoke_base.sh in a venv holding only it.

Checks what a user who ran `pip install clipzoo` relies on: the embedded model loads offline, embeds and
compares through the library and the CLI; `clipzoo index build`, `clipzoo serve` and `clipzoo eval` fail
with one line (exit 2) naming the extra to install. Prints one line per check; exit 1 on any failure.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = "clipzoo/tiny-shapes"
EXTRA_PACKAGES = ("faiss", "fastapi", "sklearn", "matplotlib", "transformers")


def cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("clipzoo")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600)


def draw(folder: Path) -> list[Path]:
    """Circles in class folders (red/, blue/), three each: an image-folder data set; the first of each."""
    from PIL import Image, ImageDraw

    paths = []
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            image = Image.new("RGB", (64, 64), "white")
            ImageDraw.Draw(image).ellipse((10 + i, 12, 50 + i, 52), fill=colour)
            image.save(folder / name / f"{i}.png")
        paths.append(folder / name / "0.png")
    return paths


def checks(tmp: Path) -> list[tuple[str, bool, str]]:
    import clipzoo

    out = []
    present = [p for p in EXTRA_PACKAGES if importlib.util.find_spec(p) is not None]
    out.append(("no extra's package is installed", not present, ", ".join(present)))
    red, blue = draw(tmp / "circles")
    m = clipzoo.load(MODEL, cache_dir=tmp / "cache")
    probs = m.predict([red, blue], ["red circle", "blue circle"], templates=["a {}."])
    out.append(("library: the embedded model tells red from blue", bool((probs.argmax(1) == 0).tolist()
                                                                        == [True, False]), str(probs.tolist())))
    done = cli("compare", MODEL, "--image", str(red), "--text", "a red circle", "--text", "a blue circle",
               "--cache-dir", str(tmp / "cache"))
    out.append(("cli: clipzoo compare", done.returncode == 0, done.stderr.strip()[-300:]))
    done = cli("embed", MODEL, "--images", str(red), str(blue), "--out", str(tmp / "e.npy"), "--no-progress",
               "--cache-dir", str(tmp / "cache"))
    out.append(("cli: clipzoo embed", done.returncode == 0 and (tmp / "e.npy").exists(), done.stderr.strip()[-300:]))
    build = ["index", "build", str(tmp / "circles"), "--model", MODEL, "--out", str(tmp / "idx")]
    for argv, extra in ((build, "search"),
                        (["serve", str(tmp / "idx")], "search"),
                        (["eval", "linear-probe", "-m", MODEL, "-d", str(tmp / "circles")], "eval")):
        done = cli(*argv)
        err = done.stderr.strip()
        ok = done.returncode == 2 and len(err.splitlines()) == 1 and f"pip install 'clipzoo[{extra}]'" in err
        if argv is build:  # refused before any work: no half-built index left behind
            ok = ok and not (tmp / "idx").exists()
        out.append((f"cli: clipzoo {' '.join(argv[:2])} names [{extra}]", ok, err[-300:]))
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        results = checks(Path(tmp))
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"))
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
