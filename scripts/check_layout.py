"""The house rules no linter holds, checked by .ci/run (and tests/test_layout.py):

- no source file over MAX_FILE_LINES lines, no function over MAX_FUNCTION_LINES lines (a data table or a
  function may be named in EXEMPT with its reason);
- imports at the top of the module: inside a function only the heavy optional packages in LAZY_IMPORTS
  (imported by the one module that needs them, so that ``import clipzoo`` stays torch-free and a missing
  extra becomes a one-line ClipzooError), never a clipzoo module and never the standard library;
- no private name (``_foo``) imported from another clipzoo module: what another module needs is public;
- ``import clipzoo`` imports no torch.

Usage: python scripts/check_layout.py [SRC_DIR]   (exit 1 and one line per breach when a rule is broken)
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80

EXEMPT: dict[str, str] = {
    # "path/relative/to/src.py" or "path.py::function": "reason",
}

LAZY_CLIPZOO_IMPORTS: dict[str, str] = {
    # files (or folders, ending in /) that may import clipzoo modules inside functions, with the reason
    "clipzoo/__init__.py": "the root's lazy attributes (load, Comparator, Ensemble) keep `import clipzoo` torch-free",
    "clipzoo/cli/": "each verb imports the library it runs when it runs, so `clipzoo models` starts in < 2 s",
}

LAZY_IMPORTS = frozenset({
    # heavy or optional third-party packages, imported where used
    "torch", "torchvision", "open_clip", "open_clip_train", "numpy", "PIL", "safetensors", "huggingface_hub",
    "transformers", "sentence_transformers", "timm", "peft", "tokenizers", "sentencepiece",
    "faiss", "onnx", "onnxruntime", "onnxscript", "soundfile",
    "sklearn", "scipy", "matplotlib", "fastapi", "starlette", "uvicorn", "h11", "pydantic", "multipart",
    "fsspec", "s3fs", "webdataset", "braceexpand", "ftfy", "regex", "tqdm", "rich", "typer",
    "jax", "jaxlib", "flax", "optax", "orbax", "mindspore", "ray", "pymilvus", "tensorboard", "pyarrow",
    "clip", "clip_benchmark", "vision_datasets", "simplejpeg",
    "av",  # PyAV (video files)
})


def _lines(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def _root(name: str) -> str:
    return name.split(".")[0]


def _breaches_in(path: Path, rel: str) -> list[str]:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    out = []
    n_lines = len(source.splitlines())
    if n_lines > MAX_FILE_LINES and rel not in EXEMPT:
        out.append(f"{rel}: {n_lines} lines (limit {MAX_FILE_LINES})")
    out.extend(_private_import_breaches(tree, rel))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            key = f"{rel}::{node.name}"
            if _lines(node) > MAX_FUNCTION_LINES and key not in EXEMPT:
                out.append(f"{rel}:{node.lineno}: function {node.name} is {_lines(node)} lines "
                           f"(limit {MAX_FUNCTION_LINES})")
            out.extend(_lazy_import_breaches(node, rel))
    return out


def _private_import_breaches(tree: ast.AST, rel: str) -> list[str]:
    out = []
    for node in ast.walk(tree):
        internal = isinstance(node, ast.ImportFrom) and (node.level or _root(node.module or "") == "clipzoo")
        if internal and node.module != "__future__":
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    out.append(f"{rel}:{node.lineno}: private name {alias.name} imported from "
                               f"{'.' * node.level}{node.module or ''}; make it public where it is defined")
    return out


def _lazy_import_breaches(func: ast.AST, rel: str) -> list[str]:
    out = []
    for node in ast.walk(func):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." if node.level else (node.module or "")]
        else:
            continue
        for name in names:
            if name == "." or _root(name) == "clipzoo":
                if any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in LAZY_CLIPZOO_IMPORTS):
                    continue
                out.append(f"{rel}:{node.lineno}: clipzoo import inside {func.name}; import at the module top")
            elif _root(name) not in LAZY_IMPORTS:
                out.append(f"{rel}:{node.lineno}: import of {name} inside {func.name}; only heavy optional "
                           f"packages (LAZY_IMPORTS) are imported lazily")
    return out


def _torch_free_import(src: Path) -> list[str]:
    code = "import sys, clipzoo; print(' '.join(m for m in ('torch', 'numpy', 'open_clip') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=src)
    if done.returncode != 0:
        return [f"import clipzoo failed: {done.stderr.strip().splitlines()[-1:]}"]
    heavy = done.stdout.split()
    return [f"import clipzoo imports {', '.join(heavy)}"] if heavy else []


def main(argv: list[str]) -> int:
    src = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parents[1] / "src")
    breaches = []
    for path in sorted((src / "clipzoo").rglob("*.py")):
        breaches.extend(_breaches_in(path, path.relative_to(src).as_posix()))
    breaches.extend(_torch_free_import(src))
    for line in breaches:
        print(line)
    print(f"layout: {len(breaches)} breach(es)" if breaches else "layout: ok")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
