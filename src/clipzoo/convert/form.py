"""A model in open_clip's terms (:class:`OpenClipForm`): what every checkpoint target but ONNX is written from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


@dataclass
class OpenClipForm:
    """A model in open_clip's terms: weights, model config, preprocessing config; ``tokenizer``: the HF tokenizer
    the model needs when it is not OpenAI's (None: OpenAI's BPE, or the hub tokenizer ``text_cfg.hf_tokenizer_name``
    names), which only targets that can hold its files take."""

    state_dict: dict[str, torch.Tensor]
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    tokenizer: Any = None

    def config_json(self) -> dict[str, Any]:
        return {"model_cfg": self.model_cfg, "preprocess_cfg": plain_preprocess(self.preprocess_cfg)}


def plain_preprocess(pre: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able preprocessing fields open_clip's config file takes (a square size as ``[s, s]``)."""
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pre.items()
           if k in PREPROCESS_KEYS and v is not None}
    if isinstance(out.get("size"), int):
        out["size"] = [out["size"], out["size"]]
    return out
