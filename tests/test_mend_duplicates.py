"""House cleaning: the duplicates mended without changing behaviour, one test per mend.

1. The config -> family-row lookup of backends ``hf_family`` and ``hf_video`` is one
   :meth:`~clipzoo.backends.family_table.FamilyTable.pick`, and their ``meta_model`` one
   :func:`~clipzoo.backends.transformers.hub_meta_model`; the errors read as before, word for word.
2. The two family tables share one record type (:class:`~clipzoo.backends.family_table.FamilyRow`) and one
   table type; their rows, sets and lookups hold what they held.
3. ``AUDIO.read_from_disk`` is :func:`clipzoo.audio.read_audio_file` behind the modality's own path checks;
   the path checks of the modality, audio and video readers are one :func:`clipzoo.files.checked_file`.
"""
from __future__ import annotations

import dataclasses
import re
import sys

import numpy as np
import pytest
import soundfile
import transformers

from clipzoo.audio import audio_items, audio_list, read_audio_file
from clipzoo.backends import transformers as transformers_backend
from clipzoo.backends import transformers_families, transformers_video
from clipzoo.backends.family_table import FamilyRow, FamilyTable
from clipzoo.backends.hf_families import (
    BY_FAMILY_CLASS,
    FAMILY_CLASSES,
    FAMILY_SPECS,
    FAMILY_TABLE,
    FAMILY_TYPES,
    FamilySpec,
)
from clipzoo.backends.hf_video_families import BY_VIDEO_CLASS, VIDEO_CLASSES, VIDEO_TABLE, VIDEO_TYPES, VideoFamilySpec
from clipzoo.backends.transformers_families import pick_spec
from clipzoo.backends.transformers_video import pick_video_spec
from clipzoo.errors import (
    BadAudioError,
    BadTextError,
    CheckpointError,
    ClipzooError,
    MissingExtraError,
    ModelNotCachedError,
    UnsupportedError,
)
from clipzoo.files import checked_file
from clipzoo.modalities import AUDIO, TEXT, VIDEO, register_modality, unregister_modality
from clipzoo.registry import REGISTRY
from clipzoo.summary import summarize
from clipzoo.testing import tiny_hf
from clipzoo.testing.tiny_video import write_xclip
from clipzoo.video import BadVideoError, read_all_frames

FAMILY_CLASS_NAMES = ("Aimv2Model, AlignModel, Blip2ForImageTextRetrieval, BlipForImageTextRetrieval, BlipModel, "
                      "CLIPSegModel, FlavaModel, GroupViTModel, MetaClip2Model, OwlViTModel, Owlv2Model, "
                      "Tipsv2Model")
FAMILY_TYPE_NAMES = "aimv2, align, blip, blip-2, clipseg, flava, groupvit, metaclip_2, owlv2, owlvit, tipsv2"


def test_mend1_family_spec_lookup_is_one_pick_with_the_same_errors():
    # hf_family: hf_class, then config.json architectures, then model_type
    assert pick_spec({"model_type": "blip"}, "BlipModel", "F") == FamilySpec("BLIP", "BlipModel", mask="pad")
    assert pick_spec({"model_type": "blip", "architectures": ["Other", "BlipModel"]}, None, "F") is \
        BY_FAMILY_CLASS["BlipModel"]
    assert pick_spec({"model_type": "blip"}, None, "F").hf_class == "BlipForImageTextRetrieval"
    assert pick_spec({"model_type": "blip", "architectures": ["BlipModel"]}, "BlipForImageTextRetrieval",
                     "F").features == "blip_itm"
    with pytest.raises(UnsupportedError) as err:
        pick_spec({"model_type": "align"}, "BertModel", "F")
    assert str(err.value) == (f"hf_class 'BertModel' is not one of the hf_family classes ({FAMILY_CLASS_NAMES}); "
                              "use the transformers backend")
    with pytest.raises(UnsupportedError) as err:
        pick_spec({"model_type": "bert"}, None, "/m/bert")
    assert str(err.value) == ("/m/bert holds a 'bert' model (config.json model_type); the hf_family backend loads "
                              f"model_type {FAMILY_TYPE_NAMES}")
    # hf_video: hf_class, then model_type; config.json architectures are not read
    assert pick_video_spec({"model_type": "xclip", "architectures": ["PeVideoModel"]}, None, "F") == \
        VideoFamilySpec("X-CLIP", "XCLIPModel", mask="eos")
    assert pick_video_spec({"model_type": "xclip"}, "PeVideoModel", "F").logit == "pe"
    with pytest.raises(UnsupportedError) as err:
        pick_video_spec({"model_type": "xclip"}, "XCLIPVisionModel", "F")
    assert str(err.value) == ("hf_class 'XCLIPVisionModel' is not one of the hf_video classes (PeAudioVideoModel, "
                              "PeVideoModel, VideoPrismClipModel, XCLIPModel)")
    with pytest.raises(UnsupportedError) as err:
        pick_video_spec({"model_type": "clip", "architectures": ["XCLIPModel"]}, None, "/m/clip")
    assert str(err.value) == ("/m/clip holds a 'clip' model (config.json model_type); the hf_video backend loads "
                              "model_type pe_audio_video, pe_video, videoprism, xclip")


@pytest.mark.parametrize("backend,module", [("transformers", transformers_backend),
                                            ("hf_family", transformers_families),
                                            ("hf_video", transformers_video)])
def test_mend1_load_keywords_and_config_are_one_step(backend, module, tmp_path):
    """The three transformers backends take their keywords and config.json the one same way, in that order."""
    card = REGISTRY.resolve("[x-clip - microsoft - xclip-base-patch32]")
    card = dataclasses.replace(card, source=dataclasses.replace(card.source, path=str(tmp_path), hf_repo=None))
    with pytest.raises(TypeError) as err:
        module.load(card, zzz=1, bogus=2, hf_class="XCLIPModel", context_length=7)
    assert str(err.value) == f"unexpected keyword(s) for the {backend} backend: bogus, zzz"
    with pytest.raises(CheckpointError) as err:
        module.load(card, hf_class="XCLIPModel", context_length=7)
    assert str(err.value) == f"{tmp_path} has no config.json, so it is not a transformers save_pretrained folder"
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UnsupportedError, match=r"holds a 'bert' model \(config.json model_type\)"):
        module.load(dataclasses.replace(card, config={}))


def test_mend1_processors_read_the_one_way(offline, tmp_path):
    """Tokenizer, image processor and video processor: one ``from_folder`` with the same one-line error."""
    (tmp_path / "config.json").write_text('{"model_type": "zzz"}')
    fix = r" \(\w+: .*\); save it with the model \(processor.save_pretrained\(folder\)\)$"
    for call, what in ((lambda: transformers_backend.load_processors(tmp_path), "tokenizer"),
                       (lambda: transformers_video.load_processor(tmp_path), "processor"),
                       (lambda: transformers_backend.from_folder("AutoImageProcessor", tmp_path, "image processor"),
                        "image processor")):
        with pytest.raises(CheckpointError, match=f"(?s)^{re.escape(str(tmp_path))} has no usable {what}{fix}"):
            call()


def test_mend1_video_meta_model_from_the_cached_config(offline, tmp_path):
    """``clipzoo info`` of an hf_video hub card goes through the shared ``hub_meta_model``: a meta-device
    XCLIPModel with the parameters of the model cached under the card's repo."""
    folder = write_xclip(tmp_path / "xclip")
    cache = offline / "hub"
    tiny_hf.cache_as_hub(folder, "microsoft/xclip-base-patch32", cache)
    card = REGISTRY.resolve("[x-clip - microsoft - xclip-base-patch32]")
    meta = transformers_video.meta_model(card, cache_dir=cache)
    real = transformers.XCLIPModel.from_pretrained(str(folder))
    assert type(meta) is transformers.XCLIPModel and next(meta.parameters()).device.type == "meta"
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in real.parameters())
    assert summarize(card.alias, cache_dir=cache).total == sum(p.numel() for p in real.parameters())
    with pytest.raises(ModelNotCachedError, match=r"^config.json of hub repo 'microsoft/xclip-base-patch16' is not"):
        transformers_video.meta_model(REGISTRY.resolve("[x-clip - microsoft - xclip-base-patch16]"), cache_dir=cache)
    assert transformers_video.meta_model(dataclasses.replace(card, source=dataclasses.replace(
        card.source, path=str(folder), hf_repo=None))) is None


def test_mend2_family_tables_share_one_record_type():
    assert issubclass(FamilySpec, FamilyRow) and issubclass(VideoFamilySpec, FamilyRow)
    assert [f.name for f in dataclasses.fields(FamilySpec)] == ["name", "hf_class", "mask", "logit", "features"]
    assert dataclasses.fields(FamilySpec) == dataclasses.fields(VideoFamilySpec)
    row = FAMILY_SPECS["align"]
    assert repr(row) == ("FamilySpec(name='ALIGN', hf_class='AlignModel', mask='pad', logit='temperature', "
                         "features='get')")
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.mask = "eos"
    # rows of the two tables stay distinct kinds, equal only within their own table
    assert FamilySpec("X", "C", mask="pad") == FamilySpec("X", "C", mask="pad")
    assert FamilySpec("X", "C", mask="pad") != VideoFamilySpec("X", "C", mask="pad")
    assert hash(FamilySpec("X", "C", mask="pad")) == hash(FamilySpec("X", "C", mask="pad"))
    # the sets and maps clipzoo.api and the backends read
    assert isinstance(FAMILY_TABLE, FamilyTable) and isinstance(VIDEO_TABLE, FamilyTable)
    assert frozenset(FAMILY_TYPE_NAMES.split(", ")) == FAMILY_TYPES
    assert frozenset(FAMILY_CLASS_NAMES.split(", ")) == FAMILY_CLASSES
    assert BY_FAMILY_CLASS["BlipModel"] == FamilySpec("BLIP", "BlipModel", mask="pad")
    assert BY_FAMILY_CLASS["Blip2ForImageTextRetrieval"] is FAMILY_SPECS["blip-2"]
    assert frozenset({"xclip", "pe_video", "pe_audio_video", "videoprism"}) == VIDEO_TYPES
    assert frozenset({"XCLIPModel", "PeVideoModel", "PeAudioVideoModel", "VideoPrismClipModel"}) == VIDEO_CLASSES
    assert BY_VIDEO_CLASS["VideoPrismClipModel"] == VideoFamilySpec("VideoPrism", "VideoPrismClipModel", mask="pad",
                                                                    logit="unit")
    # a table of its own: extra rows reach by class, architectures only when asked
    base = FamilyRow("A", "AModel", mask="eos")
    extra = FamilyRow("A2", "AOtherModel", mask="pad")
    for by_architecture, expected in ((True, extra), (False, base)):
        table = FamilyTable("toy", {"a": base}, (extra,), by_architecture=by_architecture)
        assert table.pick({"model_type": "a", "architectures": ["AOtherModel"]}, None, "F") is expected
        assert table.pick({"model_type": "zzz"}, "AOtherModel", "F") is extra
        assert table.types == frozenset({"a"}) and table.classes == frozenset({"AModel", "AOtherModel"})


def _write_wav(path, samples: np.ndarray, rate: int):
    soundfile.write(str(path), samples, rate, subtype="DOUBLE")
    return path


def test_mend3_modality_audio_reader_is_the_audio_reader(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    samples = np.stack([np.linspace(-0.5, 0.5, 400), np.linspace(0.25, -0.25, 400)], axis=1)
    _write_wav(tmp_path / "a.wav", samples, 8000)
    for read in (AUDIO.read_from_disk, read_audio_file):
        data, rate = read("~/a.wav")
        assert rate == 8000 and data.dtype == np.float64 and data.shape == (400, 2)
        assert np.array_equal(data, samples)
    # the modality's messages (its own path checks; a decode error shows the expanded path) ...
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wave file")
    (tmp_path / "d").mkdir()
    cases = [
        (AUDIO.read_from_disk, "~/none.wav", "^audio file '~/none.wav' does not exist; check the path$"),
        (AUDIO.read_from_disk, "~/d", "^audio file '~/d' is a folder; pass a file$"),
        (AUDIO.read_from_disk, "~/bad.wav", f"^audio file '{tmp_path}/bad.wav' cannot be decoded \\(.+\\); pass a "
                                            "valid WAV, FLAC or OGG file$"),
        # ... and audio.read_audio_file's
        (read_audio_file, "~/none.wav", "^audio file '~/none.wav' does not exist; check the path$"),
        (read_audio_file, "~/d", r"^audio file '~/d' is a folder; pass a .wav, .flac or .ogg file \(folders are "
                                 r"expanded by embed_audio / --audio\)$"),
        (read_audio_file, "~/bad.wav", r"^audio file '~/bad.wav' cannot be decoded \(.+\); pass a valid WAV, FLAC "
                                       "or OGG file$"),
    ]
    for read, path, message in cases:
        with pytest.raises(BadAudioError, match=message):
            read(path)
    # one missing-extra line, from clipzoo.extras, for both readers
    monkeypatch.setitem(sys.modules, "soundfile", None)
    for read in (AUDIO.read_from_disk, read_audio_file):
        with pytest.raises(MissingExtraError) as err:
            read("~/a.wav")
        assert str(err.value) == ("reading audio files needs soundfile, which is not installed; "
                                  "pip install 'clipzoo[audio]'")


def test_mend3_audio_coerce_is_one_function():
    pair = (np.zeros(10), 16000)
    assert AUDIO.coerce(pair) == [pair] and audio_list(pair) == [pair]
    assert AUDIO.coerce("a.wav") == ["a.wav"] and AUDIO.coerce(("a.wav", "b.wav")) == ["a.wav", "b.wav"]
    assert audio_items(pair)[0] is pair
    for coerce in (AUDIO.coerce, audio_list):
        with pytest.raises(ClipzooError, match=r"^no audio given; pass at least one file path or \(array, "
                                               r"sample_rate\) pair$"):
            coerce([])


def test_mend3_one_path_check_for_modality_audio_and_video_readers(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "t.txt").write_text("héllo", encoding="utf-8")
    (tmp_path / "d").mkdir()
    path, shown = checked_file("~/t.txt", "thing", BadTextError, "pass a thing")
    assert path == tmp_path / "t.txt" and shown == "~/t.txt"
    with pytest.raises(BadTextError, match="^thing '~/d' is a folder; pass a thing$"):
        checked_file("~/d", "thing", BadTextError, "pass a thing")
    assert TEXT.read_from_disk("~/t.txt") == "héllo"
    with pytest.raises(BadTextError, match="^text file '~/nope.txt' does not exist; check the path$"):
        TEXT.read_from_disk("~/nope.txt")
    with pytest.raises(BadVideoError, match="^video '~/none.mp4' does not exist; check the path$"):
        read_all_frames("~/none.mp4")
    with pytest.raises(BadVideoError, match="^video '~/d' is a folder; pass the video files in it$"):
        VIDEO.read_from_disk("~/d")
    depth = register_modality("mend_depth", read=lambda p: p.read_bytes())
    try:
        assert depth.read_from_disk("~/t.txt") == "héllo".encode()
        with pytest.raises(BadTextError, match="^mend_depth file '~/d' is a folder; pass a file$"):
            depth.read_from_disk("~/d")
    finally:
        unregister_modality("mend_depth")
