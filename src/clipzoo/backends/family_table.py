"""The record and lookup shared by the transformers family tables, importable without torch.

:mod:`clipzoo.backends.hf_families` (backend ``hf_family``) and :mod:`clipzoo.backends.hf_video_families`
(backend ``hf_video``) each hold a table of :class:`FamilyRow` rows keyed by config.json ``model_type``;
a :class:`FamilyTable` over one of them gives the sets ``clipzoo.api`` routes by and the one
config → row lookup (:meth:`FamilyTable.pick`) their backends use.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import UnsupportedError


@dataclass(frozen=True)
class FamilyRow:
    """One family: its display ``name``, the transformers model class ``hf_class``, how its text is masked
    (``mask``), how its logit scale is stored (``logit``) and how its features are read (``features``); what
    the values mean is the table's own (see its subclass)."""

    name: str
    hf_class: str
    mask: str
    logit: str = "scale"
    features: str = "get"


@dataclass(frozen=True, eq=False)
class FamilyTable:
    """The rows of one backend: ``by_type`` (config.json ``model_type`` -> row) and ``extra`` rows (other
    classes of those model types, reached by ``hf_class`` or, with ``by_architecture``, by config.json
    ``architectures``). ``class_fix`` ends the error for an unknown ``hf_class``."""

    backend: str
    by_type: Mapping[str, FamilyRow]
    extra: tuple[FamilyRow, ...] = ()
    by_architecture: bool = False
    class_fix: str = ""
    by_class: Mapping[str, FamilyRow] = field(init=False)  # hf_class -> row, extra rows included
    types: frozenset[str] = field(init=False)  # the model types, for clipzoo.api's routing
    classes: frozenset[str] = field(init=False)  # the classes, likewise

    def __post_init__(self) -> None:
        by_class = {row.hf_class: row for row in (*self.by_type.values(), *self.extra)}
        object.__setattr__(self, "by_class", by_class)
        object.__setattr__(self, "types", frozenset(self.by_type))
        object.__setattr__(self, "classes", frozenset(by_class))

    def pick(self, config: dict, hf_class: str | None, folder) -> FamilyRow:
        """The row of ``hf_class`` when given, else of the first listed config.json ``architectures`` entry
        (when the table reads them), else of config.json ``model_type``; an unknown one raises
        :class:`UnsupportedError` naming what this backend loads."""
        if hf_class:
            if hf_class not in self.by_class:
                raise UnsupportedError(f"hf_class {hf_class!r} is not one of the {self.backend} classes "
                                       f"({', '.join(sorted(self.by_class))}){self.class_fix}")
            return self.by_class[hf_class]
        if self.by_architecture:
            listed = [a for a in config.get("architectures") or () if a in self.by_class]
            if listed:
                return self.by_class[listed[0]]
        model_type = config.get("model_type")
        if model_type not in self.by_type:
            raise UnsupportedError(f"{folder} holds a {model_type!r} model (config.json model_type); the "
                                   f"{self.backend} backend loads model_type {', '.join(sorted(self.by_type))}")
        return self.by_type[model_type]
