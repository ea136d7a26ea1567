"""Text rows run at their own length: the ONNX runtimes' padding-free text tower.

A text graph exported with a dynamic length (``"dynamic_length": "argmax"`` in its description, see
:func:`clipzoo.runtime.onnx_export.causal_text_model`) reads its features at the end-of-text token of a
causal tower, so the columns after that token never reach them. Each row is cut after its end-of-text token,
rounded up to a multiple of :data:`LENGTH_STEP` (capped at the context): a 10-token caption in a 77-token
context runs 16 columns. Rows are grouped by that length, so a row's computation depends on the row alone —
the same input gives the same row alone and inside any batch (what static int8 promises), unlike trimming
to a batch's longest text.
"""
from __future__ import annotations

from ..cards import TEXT

LENGTH_STEP = 8


def row_lengths(tokens, step: int = LENGTH_STEP):
    """Each row's length bucket: its argmax (end-of-text) position + 1 rounded up to ``step``, ≤ the context."""
    import numpy as np

    ends = tokens.argmax(axis=1) + 1
    return np.minimum(-(-ends // step) * step, tokens.shape[1])


class ColumnsRunner:
    """``towers.run`` with the text rows run in groups of one length bucket each (other modalities as they
    were). Installed by :func:`install` on the towers of a loaded export."""

    def __init__(self, run, step: int = LENGTH_STEP):
        self.inner = run
        self.step = step

    def __call__(self, modality: str, x):
        import numpy as np

        if modality != TEXT or x.ndim != 2 or not len(x):
            return self.inner(modality, x)
        lengths = row_lengths(x, self.step)
        out = None
        for n in np.unique(lengths):
            rows = np.flatnonzero(lengths == n)
            got = self.inner(modality, np.ascontiguousarray(x[rows, :n]))
            if out is None:
                out = np.empty((len(x), *got.shape[1:]), dtype=got.dtype)
            out[rows] = got
        return out


def install(comparator) -> bool:
    """Run ``comparator``'s text rows at their own length when its text graph takes any length (an export
    loaded from an ONNX runtime's cache); returns whether it did."""
    towers = getattr(comparator, "model", None)
    graph = (getattr(towers, "graphs", None) or {}).get(TEXT) or {}
    if graph.get("dynamic_length") != "argmax" or graph.get("input_shape", [None])[0] != "N":
        return False
    if not isinstance(towers.run, ColumnsRunner):  # installed once
        towers.run = ColumnsRunner(towers.run)
    return True
