"""The architecture's promises: no import cycles, the root package imported by nobody inside it, the layout
rules, a torch-free ``import clipzoo``, and a backend added as one module plus one table line."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _graph():
    grimp = pytest.importorskip("grimp")
    return grimp.build_graph("clipzoo", include_external_packages=False)


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), counting every import."""
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_counting_imports_inside_functions():
    assert _cycles(_graph()) == []


def test_nothing_inside_the_package_imports_the_root_package():
    graph = _graph()
    importers = sorted(m for m in graph.find_modules_that_directly_import("clipzoo") if m != "clipzoo.__main__")
    assert importers == []


def test_layout_rules_hold():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_layout.py"), str(SRC)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert done.stdout.strip().endswith("layout: ok")


def test_import_clipzoo_imports_no_torch():
    code = "import sys, clipzoo; clipzoo.list_models; print(sorted(m for m in ('torch', 'numpy', 'open_clip') " \
           "if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------ a new backend: one module + one line
class ToyComparator:
    pass


def test_a_toy_backend_is_one_module_and_one_table_line(monkeypatch, tmp_path):
    """How docs/architecture.md says to add a backend: a module with ``load(card, **options)`` returning a
    Comparator, and a line in ``clipzoo.backends.BACKENDS``. Loading then goes through ``clipzoo.load``."""
    import torch

    import clipzoo
    from clipzoo.backends import BACKENDS
    from clipzoo.comparator import Comparator

    class Toy(Comparator):
        """Image features: mean colour per channel; text features: letter counts of 'rgb'."""

        def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
            return pixels.float().mean(dim=(2, 3))

        def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
            return tokens.float()

        def tokenize(self, texts, truncate: bool = False) -> torch.Tensor:
            return torch.tensor([[t.count(c) for c in "rgb"] for t in texts], dtype=torch.float32)

    module = types.ModuleType("clipzoo_test_toy_backend")
    seen = {}

    def load(card, *, device="cpu", precision="fp32", cache_dir=None, trust_pickle=False, **kwargs):
        seen.update(card=card, device=device, kwargs=kwargs)
        return Toy(card, torch.nn.Identity(), transform=None, embed_dim=3, image_size=2, context_length=8)

    module.load = load
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(BACKENDS, "toy", (module.__name__, ()))
    weights = tmp_path / "toy.bin"
    weights.write_bytes(b"")
    card = clipzoo.register(architecture="toy", publisher="test", id="rgb", path=str(weights), backend="toy")
    try:
        m = clipzoo.load("[toy - test - rgb]", colour_space="rgb")
        assert seen["card"].alias == card.alias and seen["kwargs"] == {"colour_space": "rgb"}
        pixels = torch.zeros(1, 3, 2, 2)
        pixels[:, 0] = 1.0
        image = m.encode_image(pixels)
        text = m.encode_text(["r", "g"])
        assert torch.allclose(image, torch.tensor([[1.0, 0.0, 0.0]]))
        assert torch.argmax(image @ text.T).item() == 0
    finally:
        clipzoo.REGISTRY.unregister(card.alias)


def test_a_missing_backend_package_names_the_extra(monkeypatch):
    """A backend whose optional package is absent fails with one line naming the extra, not an ImportError."""
    import clipzoo.backends as backends
    from clipzoo.errors import MissingExtraError

    def import_without_faiss(name):
        raise ModuleNotFoundError("No module named 'faiss'", name="faiss")

    monkeypatch.setitem(backends.BACKENDS, "needs-faiss", ("clipzoo_test.faiss_backed", ("faiss",)))
    monkeypatch.setattr(backends.importlib, "import_module", import_without_faiss)
    with pytest.raises(MissingExtraError) as err:
        backends.get_backend("needs-faiss")
    assert str(err.value) == ("backend 'needs-faiss' needs faiss-cpu, which is not installed; "
                              "pip install 'clipzoo[search]'")
