"""ModelCard: what a model is and where its weights come from, as plain data."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .modalities import AUDIO, IMAGE, TEXT, supports_modality  # noqa: F401  (AUDIO, IMAGE, TEXT re-exported)


@dataclass(frozen=True)
class Source:
    """How the weights are fetched. Exactly one way is normally set.

    - ``hf_repo`` (+ optional ``hf_file``): a Hugging Face hub repository (and a file in it);
    - ``url`` (+ optional ``sha256``): a direct download, verified when the digest is known;
    - ``path``: a local file or folder;
    - ``open_clip``: ``(model_name, pretrained_tag)`` resolved through open_clip's own catalogue.
    """

    hf_repo: str | None = None
    hf_file: str | None = None
    url: str | None = None
    sha256: str | None = None
    path: str | None = None
    open_clip: tuple[str, str] | None = None

    def describe(self) -> str:
        if self.path:
            return f"local:{self.path}"
        if self.open_clip:
            return f"open_clip:{self.open_clip[0]}/{self.open_clip[1]}"
        if self.hf_repo:
            return f"hf-hub:{self.hf_repo}" + (f" ({self.hf_file})" if self.hf_file else "")
        if self.url:
            return self.url + (f" sha256={self.sha256[:12]}…" if self.sha256 else "")
        return "(none)"


def make_alias(architecture: str, publisher: str, id: str) -> str:
    return f"[{architecture} - {publisher} - {id}]"


_ALIAS_RE = re.compile(r"^\[\s*(?P<a>[^\]]+?)\s+-\s+(?P<p>[^\]]+?)\s+-\s+(?P<i>[^\]]+?)\s*\]$")


def parse_alias(text: str) -> tuple[str, str, str] | None:
    """``"[clip - openai - ViT-B/32]"`` -> ``("clip", "openai", "ViT-B/32")``; None if not an alias."""
    m = _ALIAS_RE.match(text.strip())
    return (m["a"], m["p"], m["i"]) if m else None


@dataclass(frozen=True)
class ModelCard:
    """A model's identity card.

    ``backend`` names the module in :mod:`clipzoo.backends` that loads it; ``config`` carries
    backend-specific settings (an open_clip model name, an HF model class, a paired image model, …).
    ``also_known_as`` lists other ids that resolve to this card (``ViT-B-32`` for ``ViT-B/32``).
    """

    architecture: str
    publisher: str
    id: str
    backend: str
    source: Source = field(default_factory=Source)
    modalities: tuple[str, ...] = (IMAGE, TEXT)
    embed_dim: int | None = None
    image_size: int | None = None
    context_length: int | None = None
    also_known_as: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    description: str = ""

    @property
    def alias(self) -> str:
        return make_alias(self.architecture, self.publisher, self.id)

    @property
    def display_name(self) -> str:
        """How reports, plots, the page and /health name the model: ``publisher/id`` for a catalogued or
        registered one (``clipzoo/tiny-shapes`` — never the cache folder it is unpacked to), the file or folder
        name of a local checkpoint."""
        if self.publisher == "local" and self.source.path:
            return self.source.path.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
        return f"{self.publisher}/{self.id}"

    def supports_modality(self, modality: Any) -> bool:
        """Whether the model has ``modality`` (a name or a :class:`~clipzoo.modalities.Modality`), as mmc's
        loaders answer it."""
        return supports_modality(self.modalities, modality)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["alias"] = self.alias
        d["source"] = {k: v for k, v in d["source"].items() if v is not None}
        return d

    def replace(self, **changes: Any) -> "ModelCard":
        return dataclasses.replace(self, **changes)
