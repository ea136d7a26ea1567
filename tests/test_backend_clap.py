"""CLAP (transformers' ClapModel) behind the Comparator API: parity with transformers on a tiny random model,
audio files in wav / flac / ogg at other rates, zero-shot predict, registry cards, errors, CLI, Ensemble."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import clipzoo
from clipzoo import AUDIO, TEXT
from clipzoo.errors import BadAudioError, ModelNotCachedError, UnsupportedError
from clipzoo.testing.tiny_clap import SAMPLE_RATE, tiny_clap

sf = pytest.importorskip("soundfile")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
TEXTS = ["a dog", "the quick brown fox jumps over the lazy dog", "a photo of a cat"]
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def waves(seed: int = 0, lengths=(20_000, 32_000, 50_000)) -> list[np.ndarray]:
    """Noise clips shorter than, equal to and longer than the tiny model's 1 s (32000 samples)."""
    rng = np.random.default_rng(seed)
    t = np.arange(max(lengths)) / SAMPLE_RATE
    return [(0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t[:n]) + 0.05 * rng.standard_normal(n)).astype(np.float32)
            for i, n in enumerate(lengths)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_clap(tmp_path_factory.mktemp("clap") / "tiny-clap")


@pytest.fixture(scope="module")
def fused_folder(tmp_path_factory):
    return tiny_clap(tmp_path_factory.mktemp("clapf") / "tiny-clap-fused", seed=3, fused=True)


@pytest.fixture(scope="module")
def clap(folder):
    return clipzoo.load(str(folder))


@pytest.fixture(scope="module")
def reference(folder):
    return transformers.ClapModel.from_pretrained(str(folder)).eval(), transformers.ClapProcessor.from_pretrained(str(folder))  # noqa: E501


def hf_audio(model, processor, clips, sr=SAMPLE_RATE) -> torch.Tensor:
    """transformers' own audio embeddings, one clip per call, with numpy seeded as clipzoo seeds it."""
    out = []
    with torch.no_grad():
        for clip in clips:
            np.random.seed(0)
            inputs = processor.feature_extractor(clip, sampling_rate=sr, return_tensors="pt")
            out.append(model.get_audio_features(**inputs).pooler_output)
    return torch.cat(out)


def hf_text(model, processor, texts) -> torch.Tensor:
    with torch.no_grad():
        return model.get_text_features(**processor.tokenizer(texts, padding=True, return_tensors="pt")).pooler_output


def mono_resampled(data: np.ndarray, sr: int) -> np.ndarray:
    """What a file's samples (frames, channels) should become: channel mean, polyphase-resampled to 32 kHz."""
    from scipy.signal import resample_poly

    g = math.gcd(sr, SAMPLE_RATE)
    return resample_poly(data.astype(np.float64).mean(axis=1), SAMPLE_RATE // g, sr // g)


# ------------------------------------------------------------------------------------ loading and parity
def test_loads_as_an_audio_text_comparator(clap, folder):
    assert type(clap).__name__ == "ClapComparator"
    assert clap.modalities == (AUDIO, TEXT) and clap.card.modalities == (AUDIO, TEXT)
    assert clap.card.backend == "clap" and clap.card.architecture == "clap"
    assert clap.sample_rate == SAMPLE_RATE and clap.max_seconds == 1.0
    assert clap.embed_dim == 16 and clap.context_length == 32 and clap.image_size is None
    assert clap.probability == "softmax" and clap.default_templates == ("This is a sound of {}.",)
    explicit = clipzoo.load(str(folder), hf_class="ClapModel")  # through the transformers backend's hf_class
    assert type(explicit).__name__ == "ClapComparator"


def test_parity_with_transformers(clap, reference):
    model, processor = reference
    clips = waves()
    audio = clap.encode_audio(clips)
    assert audio.shape == (3, 16)
    assert (audio - hf_audio(model, processor, clips)).abs().max() <= TOL
    text = clap.encode_text(TEXTS)
    assert (text - hf_text(model, processor, TEXTS)).abs().max() <= TOL
    assert torch.allclose(audio.norm(dim=-1), torch.ones(3), atol=1e-6)

    # logits: one transformers forward on the (short) clips that need no random crop
    with torch.no_grad():
        inputs = processor(text=TEXTS, audio=clips[:2], sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt")
        out = model(**inputs)
    per_audio, per_text = clap(clips[:2], TEXTS)
    assert (per_audio - out.logits_per_audio).abs().max() <= TOL * 10  # logits are ~15x the cosines
    assert (per_text - out.logits_per_text).abs().max() <= TOL * 10
    assert (clap.similarity(audio[:2], text) - out.logits_per_audio).abs().max() <= TOL * 10
    assert clap.logit_scale == pytest.approx(model.logit_scale_a.exp().item())
    assert clap.text_logit_scale == pytest.approx(model.logit_scale_t.exp().item())
    assert clap.logit_scale != pytest.approx(clap.text_logit_scale)  # the tiny model tells the two apart


def test_batches_and_long_clips_are_deterministic(clap):
    clips = waves(1)
    whole = clap.encode_audio(clips)
    one_by_one = torch.cat([clap.encode_audio(c) for c in clips])
    assert (whole - one_by_one).abs().max() <= TOL
    assert (clap.encode_audio(clips, batch_size=2) - whole).abs().max() <= TOL
    state = np.random.get_state()[1].copy()
    assert torch.equal(clap.encode_audio(clips[2]), clap.encode_audio(clips[2]))  # the random crop is seeded
    assert np.array_equal(np.random.get_state()[1], state)  # … and numpy's global generator is left alone


def test_fused_model_parity(fused_folder):
    m = clipzoo.load(str(fused_folder))
    ref = transformers.ClapModel.from_pretrained(str(fused_folder)).eval()
    proc = transformers.ClapProcessor.from_pretrained(str(fused_folder))
    assert ref.config.audio_config.enable_fusion
    clips = waves(2)
    assert (m.encode_audio(clips) - hf_audio(ref, proc, clips)).abs().max() <= TOL
    assert (m.encode_text(TEXTS) - hf_text(ref, proc, TEXTS)).abs().max() <= TOL


# ------------------------------------------------------------------------------------ audio inputs
@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    """wav (22050 Hz mono, float), flac (44100 Hz stereo, 16-bit), ogg (22050 Hz stereo, vorbis)."""
    folder = tmp_path_factory.mktemp("sounds")
    rng = np.random.default_rng(5)

    def tone(sr, seconds, channels):
        t = np.arange(int(sr * seconds)) / sr
        left = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(t.size)
        right = 0.3 * np.sin(2 * np.pi * 660 * t) + 0.02 * rng.standard_normal(t.size)
        return left[:, None] if channels == 1 else np.stack([left, right], axis=1)

    specs = {"a.wav": (22_050, 0.7, 1, "FLOAT"), "b.flac": (44_100, 0.5, 2, "PCM_16"),
             "sub/c.ogg": (22_050, 1.3, 2, "VORBIS")}
    out = {}
    for name, (sr, seconds, channels, subtype) in specs.items():
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        data = tone(sr, seconds, channels)
        sf.write(str(path), data, sr, subtype=subtype)
        out[name] = (str(path), data, sr)
    return folder, out


def test_files_equal_their_resampled_arrays(clap, audio_files):
    _, files = audio_files
    for name, (path, _written, sr) in files.items():
        decoded, file_sr = sf.read(path, dtype="float64", always_2d=True)
        assert file_sr == sr
        expected = clap.encode_audio(mono_resampled(decoded, sr))  # a bare array: already at the model's rate
        got = clap.encode_audio(path)
        assert (got - expected).abs().max() <= TOL, name
        assert (clap.encode_audio((decoded, sr)) - expected).abs().max() <= TOL, name  # (array, rate) pair
    # the float wav reads back exactly, so it equals the written array, resampled independently
    path, written, sr = files["a.wav"]
    assert (clap.encode_audio(path) - clap.encode_audio(mono_resampled(written, sr))).abs().max() <= TOL
    # a (channels, samples) torch tensor and int16 PCM are read the same way
    path, written, sr = files["b.flac"]
    decoded, _ = sf.read(path, dtype="float64", always_2d=True)
    pcm, _ = sf.read(path, dtype="int16", always_2d=True)
    ref = clap.encode_audio((decoded, sr))
    assert (clap.encode_audio((torch.from_numpy(decoded.T.copy()), sr)) - ref).abs().max() <= TOL
    assert (clap.encode_audio((pcm, sr)) - ref).abs().max() <= TOL
    mixed = clap.encode_audio([files["a.wav"][0], (decoded, sr), mono_resampled(decoded, sr)])
    assert mixed.shape == (3, 16) and (mixed[1] - mixed[2]).abs().max() <= TOL


def test_resampling_uses_gcd_reduced_polyphase_factors():
    from scipy.signal import resample_poly

    from clipzoo.audio import load_audio

    x = np.sin(np.linspace(0, 200, 44_100))
    out = load_audio((x, 44_100), 32_000)
    assert out.shape == (32_000,) and np.array_equal(out, resample_poly(x, 320, 441))  # 32000/44100 = 320/441
    assert np.array_equal(load_audio((x, 32_000), 32_000), x)  # same rate: untouched
    assert np.array_equal(load_audio(x, 32_000), x)  # a bare array is at the model's rate
    stereo = np.stack([x, -x + 0.5])  # (channels, samples) and (samples, channels) downmix the same way
    assert np.allclose(load_audio((stereo, 32_000), 32_000), 0.25)
    assert np.allclose(load_audio((stereo.T, 32_000), 32_000), 0.25)


def test_embed_audio_and_folder_expansion(clap, audio_files, tmp_path):
    from clipzoo.audio import expand_audio_paths
    from clipzoo.embed import embed_audio, load_embeddings, save_embeddings

    folder, files = audio_files
    paths = expand_audio_paths(folder)
    assert paths == sorted([files["a.wav"][0], files["b.flac"][0], files["sub/c.ogg"][0]], key=str)
    result = embed_audio(clap, [folder], batch_size=2)
    assert result.modality == "audio" and result.inputs == paths and result.features.dtype == np.float32
    assert np.abs(result.features - clap.encode_audio(paths).numpy()).max() <= TOL
    npy, _ = save_embeddings(result, tmp_path / "sounds.npy")
    assert load_embeddings(npy).modality == "audio"

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(BadAudioError, match=r"bad\.wav.*skip-bad"):
        embed_audio(clap, [paths[0], bad])
    skipped = embed_audio(clap, [paths[0], bad], skip_bad=True)
    assert skipped.inputs == [paths[0]] and skipped.skipped[0]["input"] == str(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadAudioError, match="holds no audio files"):
        embed_audio(clap, [tmp_path / "empty"])


# ------------------------------------------------------------------------------------ zero-shot and similarity
def test_predict_is_zero_shot_audio_classification(clap, audio_files):
    _, files = audio_files
    paths = [p for p, _, _ in files.values()]
    labels = ["dog barking", "rain", "a violin"]
    probs = clap.predict(paths, labels)
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-6)
    weights = clap.classifier(labels, ["This is a sound of {}."])
    expected = (clap.logit_scale * clap.encode_audio(paths) @ weights.T).softmax(-1)
    assert torch.allclose(probs, expected, atol=1e-6)
    plain = clap.predict(paths, labels, templates=["{}"])
    assert torch.allclose(plain, clap.similarity(clap.encode_audio(paths), clap.encode_text(labels)).softmax(-1),
                          atol=1e-6)
    assert torch.allclose(clap.encode(AUDIO, paths), clap.encode_audio(paths))


# ------------------------------------------------------------------------------------ registry and hub cache
def test_registry_cards():
    cards = {c.id: c for c in clipzoo.list_models(architecture="clap")}
    assert {"clap-htsat-unfused", "clap-htsat-fused", "larger_clap_general", "larger_clap_music"} <= set(cards)
    for card in cards.values():
        assert card.publisher == "laion" and card.backend == "clap" and card.embed_dim == 512
        assert card.modalities == (AUDIO, TEXT) and card.source.hf_repo == f"laion/{card.id}"
    assert cards["clap-htsat-unfused"] in clipzoo.list_models(modality="audio")
    assert clipzoo.REGISTRY.resolve("laion/clap-htsat-unfused").alias == "[clap - laion - clap-htsat-unfused]"


def test_hub_models_offline(offline, folder, clap):
    from clipzoo.testing.tiny_hf import cache_as_hub

    with pytest.raises(ModelNotCachedError, match="laion/clap-htsat-unfused"):
        clipzoo.load("laion/clap-htsat-unfused", cache_dir=offline / "empty")
    cache = offline / "hub"
    cache_as_hub(folder, "laion/clap-htsat-fused", cache)
    m = clipzoo.load("[clap - laion - clap-htsat-fused]", cache_dir=cache)
    assert m.card.alias == "[clap - laion - clap-htsat-fused]" and m.modalities == (AUDIO, TEXT)
    clips = waves()
    assert (m.encode_audio(clips) - clap.encode_audio(clips)).abs().max() <= TOL
    cache_as_hub(folder, "someone/my-clap", cache)  # an uncatalogued repo: found a CLAP by its config.json
    other = clipzoo.load("hf-hub:someone/my-clap", cache_dir=cache)
    assert other.card.backend == "clap" and other.modalities == (AUDIO, TEXT)


# ------------------------------------------------------------------------------------ errors
def test_errors_name_the_input_and_the_fix(clap, tmp_path):
    with pytest.raises(BadAudioError, match=r"audio file '.*nope\.wav' does not exist"):
        clap.encode_audio(str(tmp_path / "nope.wav"))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    with pytest.raises(BadAudioError, match=r"corrupt\.wav' cannot be decoded .*WAV, FLAC or OGG"):
        clap.encode_audio(corrupt)
    with pytest.raises(BadAudioError, match="audio array 0 is empty"):
        clap.encode_audio(np.zeros(0, np.float32))
    with pytest.raises(BadAudioError, match=r"shape \(2, 3, 400\)"):
        clap.encode_audio(np.zeros((2, 3, 400), np.float32))
    with pytest.raises(BadAudioError, match="no sample rate"):
        clap.encode_audio((np.zeros(400, np.float32), None))
    with pytest.raises(BadAudioError, match="sample rate 0 is not a positive"):
        clap.encode_audio((np.zeros(400, np.float32), 0))
    with pytest.raises(BadAudioError, match="NaN"):
        clap.encode_audio(np.full(400, np.nan))
    with pytest.raises(BadAudioError, match="audio input 0 is a dict"):
        clap.encode_audio([{"x": 1}])
    with pytest.raises(UnsupportedError, match="has no image modality"):
        clap.encode_image(np.zeros((8, 8, 3), np.uint8))


def test_an_image_model_asked_for_audio():
    shapes = clipzoo.load("clipzoo/tiny-shapes")
    msg = r"\[clip - clipzoo - tiny-shapes\] has no audio modality \(it has: image, text\)"
    with pytest.raises(UnsupportedError, match=msg):
        shapes.encode_audio(["x.wav"])
    with pytest.raises(UnsupportedError, match=msg):
        shapes.encode(AUDIO, ["x.wav"])
    from clipzoo.embed import embed_audio

    with pytest.raises(UnsupportedError, match=msg):
        embed_audio(shapes, ["x.wav"])


# ------------------------------------------------------------------------------------ CLI
def run(*args):
    from clipzoo.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def test_cli_compare_audio(clap, folder, audio_files):
    _, files = audio_files
    paths = [p for p, _, _ in files.values()]
    texts = ["dog barking", "rain on a roof"]
    args = ["compare", folder, *sum((["--audio", p] for p in paths), []), *sum((["--text", t] for t in texts), [])]
    result = run(*args, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(result.stdout)
    assert data["audio"] == paths and data["texts"] == texts and data["probability"] == "softmax"
    probs = torch.tensor(data["probabilities"])
    assert torch.allclose(probs, clap.predict(paths, texts, templates=["{}"]), atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)

    table = run(*args)
    assert table.exit_code == 0 and "audio" in table.stdout and "rain on a roof" in table.stdout
    first = clap.predict(paths[:1], texts, templates=["{}"])[0]
    assert all(f"{p:.4f}" in table.stdout for p in first.tolist())


def test_cli_info_counts_the_audio_tower(folder, reference):
    model = reference[0]
    result = run("info", folder, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    params = json.loads(result.stdout)["summary"]["parameters"]
    audio = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("audio_model.", "audio_projection.")))
    text = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("text_model.", "text_projection.")))
    assert (params["audio"], params["text"]) == (audio, text) and "image" not in params
    assert params["total"] == sum(p.numel() for p in model.parameters())
    table = run("info", folder)
    assert table.exit_code == 0 and "audio" in table.stdout


def test_cli_compare_audio_user_errors(folder, audio_files, image_files, tmp_path):
    _, files = audio_files
    wav = files["a.wav"][0]
    for args, needle in [
        (["compare", folder, "--audio", wav, "--image", image_files[0], "--text", "x"], "not both"),
        (["compare", folder, "--text", "x"], "--audio"),
        (["compare", folder, "--audio", tmp_path / "nope.flac", "--text", "x"], "nope.flac"),
        (["compare", "clipzoo/tiny-shapes", "--audio", wav, "--text", "x"], "has no audio modality"),
    ]:
        result = run(*args)
        assert result.exit_code == 2, (result.output, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr


def test_cli_embed_audio(clap, folder, audio_files, tmp_path):
    _, files = audio_files
    paths = [p for p, _, _ in files.values()]
    result = run("embed", folder, *sum((["--audio", p] for p in paths), []), "--out", tmp_path / "clips")
    assert result.exit_code == 0, (result.output, result.exception)
    rows = np.load(tmp_path / "clips.npy")
    side = json.loads((tmp_path / "clips.json").read_text())
    assert side["inputs"] == paths and side["modality"] == "audio"
    assert np.allclose(rows, clap.encode_audio(paths).numpy(), atol=1e-6)
    both = run("embed", folder, "--audio", paths[0], "--texts", tmp_path / "t.txt", "--out", tmp_path / "x")
    assert both.exit_code == 2 and "exactly one of --images PATH…, --audio PATH… or --texts FILE" in both.stderr


# ------------------------------------------------------------------------------------ Ensemble
def test_ensemble_of_two_claps(clap, tmp_path, audio_files):
    other_folder = tiny_clap(tmp_path / "other", seed=1)
    ens = clipzoo.Ensemble([clap, str(other_folder)], weights=[1, 3], modalities=(AUDIO, TEXT))
    other = ens[1]
    assert type(other).__name__ == "ClapComparator" and len(ens) == 2
    _, files = audio_files
    paths = [p for p, _, _ in files.values()]
    out = ens.compare(audio=paths, text=TEXTS)
    cos = [m.encode_audio(paths) @ m.encode_text(TEXTS).T for m in (clap, other)]
    assert out.similarity.shape == (3, 3)
    assert torch.allclose(out.similarity, 0.25 * cos[0] + 0.75 * cos[1], atol=1e-6)
    probs = ens.predict(paths, ["dog", "rain"])
    expected = 0.25 * clap.predict(paths, ["dog", "rain"]) + 0.75 * other.predict(paths, ["dog", "rain"])
    assert torch.allclose(probs, expected, atol=1e-6) and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-6)
    with pytest.raises(clipzoo.errors.ClipzooError, match="no image modality"):
        ens.compare(image=paths, text=TEXTS)
    with pytest.raises(clipzoo.errors.ClipzooError, match="cannot add .*tiny-shapes.* no audio modality"):
        ens.add("clipzoo/tiny-shapes")
