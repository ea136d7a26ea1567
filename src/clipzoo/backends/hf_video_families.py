"""The table of transformers' video–text families (backend ``hf_video``), importable without torch.

Each family is a row: config.json ``model_type`` -> the transformers model class, how its video and text
features are read, how its text is masked and how its logit scale is stored. ``clipzoo.api`` reads
:data:`VIDEO_TYPES` / :data:`VIDEO_CLASSES` to send such folders and hub repos to
:mod:`clipzoo.backends.transformers_video`; that module holds the code, this one only the data.

All three video–text families of transformers 5.24 are here: X-CLIP (``xclip``), Perception Encoder video
(``pe_video``) and VideoPrism (``videoprism``), plus Perception Encoder audio-visual (``pe_audio_video``, Meta's
released ``facebook/pe-av-*`` checkpoints) read through its video–text pair.
"""
from __future__ import annotations

from .family_table import FamilyRow, FamilyTable


class VideoFamilySpec(FamilyRow):
    """One family. ``features``: ``"get"`` (the model's ``get_video_features`` / ``get_text_features``,
    ``pooler_output``) or ``"pe"`` (PE video: transformers 5.24 defines those two methods inside ``__init__``,
    so they do not exist on the model; the features are what its ``forward`` returns as ``video_embeds`` /
    ``text_video_embeds``: ``video_head`` on the encoder's pooled output, ``text_video_head`` on the text
    model's first position); or ``"pe_av"`` (PE audio-visual: the same read on its ``video_model`` — the
    video–text heads ``video_head`` / ``text_video_head``, not the audio or audio–video ones — whose text tower
    is tied to the model's; its ``get_video_embeds`` / ``get_text_video_embeds`` call methods ``PeVideoModel``
    lacks in 5.24, so the reference is its full ``forward``). ``mask``: ``"eos"`` (CLIP text: after the first
    EOS) or ``"pad"``.
    ``logit``: ``"scale"`` (``exp(logit_scale)``, softmax), ``"pe"`` (``text_video_logit_scale`` and
    ``text_video_logit_bias`` as stored, sigmoid) or ``"unit"`` (VideoPrism: no learned scale, its forward
    divides by an optional temperature only)."""

    @property
    def pe_heads(self) -> bool:
        """Whether the features are PE's video–text heads (``pe`` and ``pe_av``), not ``get_*_features``."""
        return self.features in ("pe", "pe_av")


VIDEO_SPECS: dict[str, VideoFamilySpec] = {
    "xclip": VideoFamilySpec("X-CLIP", "XCLIPModel", mask="eos"),
    "pe_video": VideoFamilySpec("PE video", "PeVideoModel", mask="pad", logit="pe", features="pe"),
    "pe_audio_video": VideoFamilySpec("PE audio-visual", "PeAudioVideoModel", mask="pad", logit="pe",
                                      features="pe_av"),
    "videoprism": VideoFamilySpec("VideoPrism", "VideoPrismClipModel", mask="pad", logit="unit"),
}
VIDEO_TABLE = FamilyTable("hf_video", VIDEO_SPECS)
VIDEO_TYPES = VIDEO_TABLE.types
BY_VIDEO_CLASS = VIDEO_TABLE.by_class
VIDEO_CLASSES = VIDEO_TABLE.classes
