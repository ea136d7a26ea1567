"""Issue 20 §3: transformers' video–text families (X-CLIP, PE video, VideoPrism) through backend ``hf_video``:
tiny random ``save_pretrained`` folders; features equal to the models' own to ≤ 1e-5; cards, the ``video``
modality filter of ``clipzoo models`` and ``clipzoo info``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import clipzoo
from _video_common import make_video, shape_frames
from clipzoo.cli import app
from clipzoo.errors import ClipzooError, UnsupportedError
from clipzoo.testing.tiny_video import write_pe_video, write_videoprism, write_xclip
from clipzoo.video import load_video

TEXTS = ["a red square on a white background", "a blue circle"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = tmp_path_factory.mktemp("video_models")
    return {"xclip": write_xclip(out / "xclip"), "videoprism": write_videoprism(out / "videoprism"),
            "pe_video": write_pe_video(out / "pe_video")}


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("v") / "clip.webm", count=12, size=40)


def reference(m, name: str, clips: list, texts: list[str]):
    """The model's own features from its own processor (independent of VideoComparator's methods)."""
    proc = m.processor
    with torch.no_grad():
        if name == "xclip":
            pixels = proc(videos=clips, return_tensors="pt")
            tokens = proc(text=texts, padding=True, return_tensors="pt")
            return (m.model.get_video_features(**pixels).pooler_output,
                    m.model.get_text_features(**tokens).pooler_output)
        arrays = [np.stack([np.asarray(f) for f in c]) for c in clips]
        pixels = proc(videos=arrays, do_sample_frames=False, return_tensors="pt")
        tokens = proc(text=texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
        if name == "videoprism":
            return (m.model.get_video_features(**pixels).pooler_output.reshape(len(clips), -1),
                    m.model.get_text_features(**tokens).pooler_output)
        out = m.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], **pixels)
        return out.video_embeds.expand(len(clips), -1), out.text_video_embeds  # forward() is PE video's reference


@pytest.mark.parametrize("name", ["xclip", "videoprism", "pe_video"])
def test_issue20_video_family_parity(folders, clip_file, name):
    m = clipzoo.load(str(folders[name]))
    assert m.card.backend == "hf_video" and tuple(m.modalities) == ("video", "text") and m.num_frames == 4
    frames = shape_frames(4, 40, "green")
    # PE video's forward pairs one video with one text: it is compared on one video
    clips = [frames] if name == "pe_video" else [frames, load_video(clip_file, 4)]
    ref_video, ref_text = reference(m, name, clips, TEXTS if name != "pe_video" else TEXTS[:1])
    ours_video = m.encode_video([frames, clip_file][:len(clips)], normalize=False)
    ours_text = m.encode_text(TEXTS[:len(ref_text)], normalize=False)
    assert ours_video.shape == (len(clips), m.embed_dim)
    assert torch.allclose(ours_video, ref_video, atol=1e-5)
    assert torch.allclose(ours_text, ref_text, atol=1e-5)
    probs = m.predict([frames], TEXTS, templates=["{}"])
    logits = m.similarity(F.normalize(ours_video[:1], dim=-1), m.encode_text(TEXTS))
    expected = torch.sigmoid(logits) if name == "pe_video" else logits.softmax(-1)
    assert torch.allclose(probs, expected, atol=1e-6)


def test_issue20_video_model_refusals(folders):
    m = clipzoo.load(str(folders["xclip"]))
    with pytest.raises(ClipzooError, match=r"takes exactly 4 frames per video, not 8; leave num_frames unset"):
        m.encode_video(shape_frames(4, 32), num_frames=8)
    with pytest.raises(UnsupportedError, match="has no image modality"):
        m.encode_image(np.zeros((32, 32, 3), np.uint8))


def test_issue20_models_filter_and_info(folders):
    runner = CliRunner()
    res = runner.invoke(app, ["models", "--modality", "video", "--json"])
    assert res.exit_code == 0, res.output
    cards = json.loads(res.output)
    aliases = {c["alias"] for c in cards}
    assert "[x-clip - microsoft - xclip-base-patch32]" in aliases
    assert "[videoprism - google - videoprism-lvt-base-f16r288]" in aliases
    assert all("video" in c["modalities"] for c in cards)
    assert all(c["backend"] == "hf_video" for c in cards)
    res = runner.invoke(app, ["info", str(folders["xclip"]), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["card"]["backend"] == "hf_video" and info["card"]["modalities"] == ["video", "text"]
    m = clipzoo.load(str(folders["xclip"]))
    assert info["summary"]["parameters"]["total"] == sum(p.numel() for p in m.model.parameters())
