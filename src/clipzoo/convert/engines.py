"""``parity_engines(MODEL, ("torch", "jax"))``: the same weights run by two engines, on the same inputs.

The model is loaded once (any spec :func:`clipzoo.load` takes, a JAX ``.pkl`` included) and turned into its
open_clip form (:class:`OpenClipForm`); each engine builds its own model from that form and runs it on the
same preprocessed pixels and token ids. The first engine is the reference ``a``: for image features, text
features and probabilities the report gives the max and mean absolute difference ``|a - b|`` and the mean
relative difference ``|a - b| / (|a| + 1e-6)``.

An engine is one entry of :data:`ENGINES`: a function ``(form, card, device) -> Engine`` that builds the
model in that framework from the open_clip form (a later ``"mindspore": mindspore_engine`` is one more line).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..api import load
from ..backends import get_backend
from ..errors import ClipzooError
from ..inputs import to_pil
from .form import OpenClipForm
from .jax import jax_form
from .mindspore import mindspore_comparator
from .parity import DEFAULT_TEXTS, ToleranceRows, default_images, difference
from .targets import open_clip_form

if TYPE_CHECKING:
    import torch

__all__ = ["ENGINES", "Engine", "EngineParityReport", "parity_engines", "engine_difference", "parse_engines"]

ROWS = ("image_features", "text_features", "probs")
ENGINE_ROW_KEYS = ("max_abs", "mean_abs", "mean_rel")  # what the engine report prints


@dataclass
class Engine:
    """A model in one framework: raw (unnormalised) features as torch tensors, and its logit scale."""

    name: str
    encode_image: Callable[[Any], Any]  # NCHW float pixels -> features
    encode_text: Callable[[Any], Any]  # token ids -> features
    logit_scale: float
    logit_bias: "float | None" = None


def torch_engine(form: OpenClipForm, card, device: str) -> Engine:
    """open_clip's own ``CLIP`` built from the form's config, with the form's weights (strict)."""
    import open_clip
    import torch

    cfg = dict(form.model_cfg)
    cfg.pop("custom_text", None)
    model = open_clip.model.CLIP(**cfg).to(device).eval()
    keys = set(model.state_dict())
    try:
        model.load_state_dict({k: v for k, v in form.state_dict.items() if k != "attn_mask" or k in keys})
    except RuntimeError as exc:
        raise ClipzooError(f"{form.source}: its weights do not fit open_clip's CLIP of its config "
                           f"({str(exc).splitlines()[0]})") from None
    bias = getattr(model, "logit_bias", None)
    with torch.no_grad():
        scale = float(model.logit_scale.detach().exp())
    return Engine("torch", lambda x: model.encode_image(x.to(device)), lambda t: model.encode_text(t.to(device)),
                  scale, None if bias is None else float(bias))


def jax_engine(form: OpenClipForm, card, device: str) -> Engine:
    """open_clip_jax's Flax model (:mod:`clipzoo.models.jax_clip`) with the form converted to its tree."""
    cfg, variables = jax_form(form)
    size = form.model_cfg.get("vision_cfg", {}).get("image_size", 224)
    comparator = get_backend("jax").build(card, variables, cfg, image_size=int(size), device=device)
    return Engine("jax", comparator.encode_pixels, comparator.encode_tokens, comparator.logit_scale)


def mindspore_engine(form: OpenClipForm, card, device: str) -> Engine:
    """clipzoo's MindSpore CLIP (:mod:`clipzoo.models.mindspore_clip`) with the form renamed to MindSpore-CLIP's."""
    comparator = mindspore_comparator(form, card)
    return Engine("mindspore", comparator.encode_pixels, comparator.encode_tokens, comparator.logit_scale)


# engine name -> builder; the first engine named is the reference
ENGINES: dict[str, Callable[[OpenClipForm, Any, str], Engine]] = {
    "torch": torch_engine,
    "jax": jax_engine,
    "mindspore": mindspore_engine,
}


def parse_engines(spec: "str | Sequence[str]") -> tuple[str, ...]:
    names = tuple(n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip())
    unknown = [n for n in names if n not in ENGINES]
    if unknown or len(names) != 2 or names[0] == names[1]:
        raise ClipzooError(f"--engines takes two different engines, the reference first, e.g. torch,jax "
                           f"(known: {', '.join(ENGINES)}), not {','.join(names) or repr(spec)}")
    return names


def engine_difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Max and mean ``|a - b|`` and mean ``|a - b| / (|a| + 1e-6)``, ``a`` the reference engine's output
    (:func:`clipzoo.convert.parity.difference` with ``a`` as its reference)."""
    full = difference(b, a)
    return {key: full[key] for key in ENGINE_ROW_KEYS}


@dataclass
class EngineParityReport(ToleranceRows):
    model: str
    engines: tuple[str, str]
    tol: float
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    n_images: int = 0
    n_texts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "engines": list(self.engines), "tol": self.tol, "ok": self.ok,
                "n_images": self.n_images, "n_texts": self.n_texts, "rows": self.rows}

    def markdown(self) -> str:
        a, b = self.engines
        lines = [f"| output ({a} vs {b}) | max abs diff | mean abs diff | mean rel diff |", "|---|---|---|---|"]
        lines += [f"| {name} | {r['max_abs']:.2e} | {r['mean_abs']:.2e} | {r['mean_rel']:.2e} |"
                  for name, r in self.rows.items()]
        verdict = "within" if self.ok else "ABOVE"
        lines += ["", f"{self.model}: {b} vs {a} on the same {self.n_images} preprocessed images and {self.n_texts} "
                      f"tokenized texts: max abs diff {self.max_abs:.2e}, {verdict} tolerance {self.tol:g}"]
        return "\n".join(lines)


def _run(engine: Engine, pixels, tokens):
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        img = F.normalize(torch.as_tensor(engine.encode_image(pixels)).float().cpu(), dim=-1)
        txt = F.normalize(torch.as_tensor(engine.encode_text(tokens)).float().cpu(), dim=-1)
    logits = engine.logit_scale * img @ txt.T
    probs = torch.sigmoid(logits + engine.logit_bias) if engine.logit_bias is not None else logits.softmax(-1)
    return img, txt, probs


def parity_engines(model: Any, engines: "str | Sequence[str]" = ("torch", "jax"),
                   images: "Sequence[Any] | None" = None, texts: "Sequence[str] | None" = None, tol: float = 1e-5,
                   device: str = "cpu", **load_kwargs: Any) -> EngineParityReport:
    """Run ``model`` (a spec, or a loaded comparator) in both ``engines`` (fp32) on the same inputs
    (default: 4 generated images, 5 texts) and return the table of differences."""
    import torch

    names = parse_engines(engines)
    ours = model if hasattr(model, "encode_image") else load(model, **load_kwargs)
    form = open_clip_form(ours)
    images = default_images() if images is None else [to_pil(i) for i in images]
    texts = list(texts) if texts else list(DEFAULT_TEXTS)
    with torch.no_grad():
        pixels = torch.stack([ours.preprocess(i) for i in images])
        tokens = ours.tokenize(texts, truncate=True)
    ref, other = (_run(ENGINES[n](form, ours.card, device), pixels, tokens) for n in names)
    report = EngineParityReport(ours.card.alias, names, tol, n_images=len(images), n_texts=len(texts))
    for row, a, b in zip(ROWS, ref, other):
        report.rows[row] = engine_difference(a, b)
    return report
