"""The table of transformers' other image–text families (backend ``hf_family``), importable without torch.

Each family is a row: config.json ``model_type`` -> the transformers model class, how its text is masked
(``"eos"``: after the first EOS, for causal CLIP-style text towers; ``"pad"``: at the pad id, for
bidirectional BERT / XLM-R towers) and how its logit scale is stored. ``clipzoo.api`` reads
:data:`FAMILY_TYPES` / :data:`FAMILY_CLASSES` to send such folders and hub repos to
:mod:`clipzoo.backends.transformers_families`; that module holds the code, this one only the data.

Models whose modelling code lives in their hub repo (jina-clip, nomic-embed-vision, LLM2CLIP) are run only
with ``trust_remote_code=True``: their cards carry ``config.remote_code = true``.
"""
from __future__ import annotations

from .family_table import FamilyRow, FamilyTable


class FamilySpec(FamilyRow):
    """One family. ``logit``: ``"scale"`` (``exp(logit_scale)``), ``"clamped"`` (AIMv2: the log scale
    clamped to ``[0, max_log_logit_scale]`` first), ``"temperature"`` (ALIGN, TIPSv2: ``1 / temperature``)
    or ``"unit"`` (BLIP retrieval: its contrastive score is the plain cosine).
    ``features``: ``"get"`` (the model's ``get_image_features`` / ``get_text_features``), ``"cls"`` (FLAVA:
    their first position — its ``get_*_features`` project every position, its contrastive head uses the
    [CLS] one) or ``"blip_itm"`` (BLIP retrieval's ``vision_proj`` / ``text_proj`` on the [CLS] states, as
    its ``use_itm_head=False`` branch computes); ``"blip_itm"`` models also ``rank(images, texts)`` with
    their image–text matching head. ``"blip2"``: BLIP-2 retrieval, its own Comparator
    (:mod:`clipzoo.backends.blip2`: one vector per image = the mean of the normalised query vectors; ITC = max
    over queries; ``rank`` = the ITM head)."""


FAMILY_SPECS: dict[str, FamilySpec] = {
    "align": FamilySpec("ALIGN", "AlignModel", mask="pad", logit="temperature"),
    "groupvit": FamilySpec("GroupViT", "GroupViTModel", mask="eos"),
    "owlvit": FamilySpec("OWL-ViT", "OwlViTModel", mask="eos"),
    "owlv2": FamilySpec("OWLv2", "Owlv2Model", mask="eos"),
    "clipseg": FamilySpec("CLIPSeg", "CLIPSegModel", mask="eos"),
    "metaclip_2": FamilySpec("MetaCLIP 2", "MetaClip2Model", mask="pad"),
    "aimv2": FamilySpec("AIMv2", "Aimv2Model", mask="eos", logit="clamped"),
    "flava": FamilySpec("FLAVA", "FlavaModel", mask="pad", features="cls"),
    "tipsv2": FamilySpec("TIPSv2", "Tipsv2Model", mask="pad", logit="temperature"),
    "blip": FamilySpec("BLIP", "BlipForImageTextRetrieval", mask="pad", logit="unit", features="blip_itm"),
    "blip-2": FamilySpec("BLIP-2", "Blip2ForImageTextRetrieval", mask="pad", logit="unit", features="blip2"),
}
# other classes of a model_type above, chosen by config.json "architectures" (or hf_class=)
EXTRA_SPECS = (FamilySpec("BLIP", "BlipModel", mask="pad"),)
FAMILY_TABLE = FamilyTable("hf_family", FAMILY_SPECS, EXTRA_SPECS, by_architecture=True,
                           class_fix="; use the transformers backend")
FAMILY_TYPES = FAMILY_TABLE.types
BY_FAMILY_CLASS = FAMILY_TABLE.by_class
FAMILY_CLASSES = FAMILY_TABLE.classes
