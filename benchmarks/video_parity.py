"""Measured parity of video as a modality (issue 20 §3): transformers' video–text families (backend ``hf_video``:
X-CLIP, PE video, VideoPrism, PE audio-visual) and the frame average of any image–text model.

For each family, a tiny random model written by ``save_pretrained`` with its own processor
(:mod:`clipzoo.testing.tiny_video`): the largest absolute difference, fp32 on CPU, between clipzoo's
``encode_video`` / ``encode_text`` (unnormalised) and the model's own features on the same frames and texts —
``get_video_features`` / ``get_text_features`` (X-CLIP, VideoPrism) or, for PE video, whose two methods
transformers 5.24 defines inside ``__init__``, its ``forward``'s ``video_embeds`` / ``text_video_embeds``. The
references are those of tests/test_family_video.py. ``frame_average``: the embedded model's ``encode_video`` on a
PyAV-written mp4 against the renormalised mean of its own ``encode_image`` on the 8 uniformly sampled frames.
``pe_av`` / ``pe_av_all_frames``: PE audio-visual (``PeAudioVideoModel``, as ``facebook/pe-av-*-16-frame`` /
``facebook/pe-av-*``) on two videos of 9 and 6 frames, against its ``forward``'s ``video_embeds`` /
``text_video_embeds`` on frames its own video processor sampled (the references of tests/test_family_pe_av.py).

    python benchmarks/video_parity.py --out video_parity.json

Writes a JSON file and prints it. No download.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import clipzoo  # noqa: E402
import test_family_pe_av as pe_av  # noqa: E402
import test_family_video as fam  # noqa: E402
from _video_common import make_video, shape_frames  # noqa: E402
from clipzoo.testing import tiny_video  # noqa: E402
from clipzoo.video import load_video, read_frames, uniform_indices  # noqa: E402
from tables import family_parity_main  # noqa: E402

WRITERS = {"xclip": tiny_video.write_xclip, "videoprism": tiny_video.write_videoprism,
           "pe_video": tiny_video.write_pe_video}
FAMILIES = (*WRITERS, "pe_av", "pe_av_all_frames", "frame_average")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def run_family(name: str, tmp: Path) -> dict:
    clip_file = make_video(tmp / "clip.webm", count=12, size=40)
    if name.startswith("pe_av"):
        return run_pe_av(name, tmp)
    if name == "frame_average":
        m = clipzoo.load("clipzoo/tiny-shapes")
        path = make_video(tmp / "clip.mp4", count=16, size=64)
        frames = read_frames(path, uniform_indices(16, 8))
        expected = F.normalize(F.normalize(m.encode_image(frames), dim=-1).mean(0), dim=-1)
        return {"model": m.card.alias, "frames": 8, "video": max_diff(m.encode_video(path)[0], expected),
                "format": "mp4 (libx264) written by PyAV"}
    m = clipzoo.load(str(WRITERS[name](tmp / name)))
    frames = shape_frames(m.num_frames, 40, "green")
    clips = [frames] if name == "pe_video" else [frames, load_video(clip_file, m.num_frames)]
    texts = fam.TEXTS[:1] if name == "pe_video" else fam.TEXTS
    ref_video, ref_text = fam.reference(m, name, clips, texts)
    ours_video = m.encode_video([frames, clip_file][:len(clips)], normalize=False)
    return {"class": m.spec.hf_class, "frames": m.num_frames, "video": max_diff(ours_video, ref_video),
            "text": max_diff(m.encode_text(texts, normalize=False), ref_text),
            "format": "save_pretrained folder (config.json + safetensors + processor files)"}


def run_pe_av(name: str, tmp: Path) -> dict:
    all_frames = name == "pe_av_all_frames"
    m = clipzoo.load(str(tiny_video.write_pe_av(tmp / name, num_frames=None if all_frames else tiny_video.FRAMES)))
    videos = pe_av.arrays(9, 6)
    sampling = {"do_sample_frames": False} if all_frames else {"num_frames": m.num_frames, "do_sample_frames": True}
    ref_video, ref_text, _ = pe_av.reference(m, videos, pe_av.TEXTS, **sampling)
    return {"class": m.spec.hf_class, "frames": "all" if all_frames else m.num_frames,
            "video": max_diff(m.encode_video(videos, normalize=False), ref_video),
            "text": max_diff(m.encode_text(pe_av.TEXTS, normalize=False), ref_text),
            "format": "save_pretrained folder (config.json + safetensors + processor files)"}


def main(argv: list[str] | None = None) -> dict:
    torch.manual_seed(0)
    return family_parity_main("video_parity", __doc__.splitlines()[0], FAMILIES, run_family, argv)


if __name__ == "__main__":
    main()
