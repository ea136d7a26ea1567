"""``runtime="auto"``: the fastest runtime for this machine and model, chosen by a short measurement.

Each candidate available here (:data:`CANDIDATES`: eager fp32 always, the ONNX Runtime ones when onnxruntime
is installed, ``openvino-int8`` when OpenVINO is too, ``bf16`` on a CPU with native bf16) embeds a few batches
of images and texts — the caller's (:func:`choose`) or generated shapes and their captions — and is compared
with eager fp32 on them: a candidate whose min cosine falls below ``min_cosine`` (default
:data:`DEFAULT_MIN_COSINE`) is not eligible. The fastest eligible one (images + texts wall time) wins; eager is
the fallback. Given the caller's inputs, the static int8 runtimes (:data:`STATIC`) are calibrated on them
(:attr:`Choice.calibration`, reused by later loads).
A model under :data:`TINY_PARAMETERS` runs eager without measuring (so ``auto`` as the CLI's default costs
nothing on the embedded model and the tests' tiny ones).

The choice is cached per machine (its CPU model, flags and core count) and model (card, source, load options) in
``cache_dir``/runtime-auto/ and reused; :class:`Choice` says what was chosen and why (also logged on
the ``clipzoo.runtime`` logger), and the loaded comparator carries it as ``runtime_choice``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..backends.onnx_format import META_FILE
from ..cards import IMAGE, TEXT, ModelCard
from ..constants import DEFAULT_MIN_COSINE, default_cache_dir
from ..errors import ClipzooError, warn_user
from ..files import atomic_write_text
from . import onnx, openvino_int8
from .bf16 import cpu_flags, cpu_model, native_bf16
from .onnx_static_int8 import calibration_sample, static_int8_folder
from .table import has_onnxruntime, has_openvino, run_runtime

CANDIDATES = ("eager", "onnx", "onnx-int8", "onnx-int8-static", "openvino-int8", "bf16")
STATIC = {"onnx-int8-static": (False, onnx.load_exported), "openvino-int8": (True, openvino_int8.load_folder)}
"""The static int8 runtimes: whether each calibrates the portable export, and what loads a calibrated folder."""
TINY_PARAMETERS = 25_000_000
"""Below this many parameters ``auto`` runs eager without measuring: a batch takes milliseconds there, and the
exports and calibration that measuring needs (seconds to minutes) would not pay back — the embedded model and
the test suite's tiny models load as fast as with ``runtime="eager"``."""
OPTIONS = ("min_cosine", "sample_images", "sample_texts")
"""Keywords of ``clipzoo.load(..., runtime="auto", …)`` that go to :func:`apply` rather than to the backend."""
BATCHES = 3
BATCH_SIZE = 16
MACHINE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni", "asimd")
LOG = logging.getLogger("clipzoo.runtime")


@dataclass
class Choice:
    """What ``runtime="auto"`` chose (``runtime``), why (``reason``) and what it measured per candidate
    (``measured``: {runtime: {"seconds", "min_cosine", "eligible", "error"}}); ``cached``: read back."""

    runtime: str
    reason: str
    min_cosine: float
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    calibration: str | None = None
    """A static int8 runtime chosen on the caller's inputs: its export calibrated on them, reused by later loads."""
    sample: dict[str, Any] = field(default_factory=dict)
    """What it measured on: ``source`` ("given" or "generated shapes"), distinct ``images`` / ``texts``, and the
    ``origin`` the caller named (``clipzoo embed``'s files, the folder an index build reads: auto_sample.py)."""


JSON_TYPES: dict[str, Any] = {"str": str, "float": (int, float), "bool": bool, "dict": dict,
                              "str | None": (str, type(None))}
"""What each annotation of :class:`Choice` reads back as from JSON (``dict[…]`` as ``dict``)."""
FIELD_TYPES: dict[str, Any] = {f.name: JSON_TYPES[str(f.type).split("[")[0]] for f in fields(Choice)}
"""The type of each field of :class:`Choice`, which a cached one is checked against (:func:`check_cached`); a
field of a type JSON_TYPES does not name fails here, at import."""


def apply(card: ModelCard, build: Callable[..., Any], *, device: str, precision: str, cache_dir,
          load_kwargs: dict, min_cosine: float = DEFAULT_MIN_COSINE, sample_images: Sequence | None = None,
          sample_texts: Sequence[str] | None = None) -> Any:
    """The comparator of ``card`` under the runtime :func:`choose` picks (measured now on ``sample_images`` /
    ``sample_texts`` unless cached; a model under :data:`TINY_PARAMETERS` runs eager unmeasured)."""
    min_cosine = check_guard(min_cosine)
    candidates = candidates_here(device)
    choice = read_choice(cache_file(card, cache_dir, load_kwargs, min_cosine, candidates), candidates)
    if choice is not None:
        comparator = run_choice(choice, card, build, device=device, precision=precision, cache_dir=cache_dir,
                                load_kwargs=load_kwargs)
    else:
        eager = build()
        size = parameter_count(eager)
        if size < TINY_PARAMETERS:
            eager.runtime = "eager"
            eager.runtime_choice = Choice(
                runtime="eager", min_cosine=min_cosine, machine=machine_key(),
                reason=f"chose eager without measuring: {card.alias} has {size / 1e6:.1f} M parameters "
                       f"(< {TINY_PARAMETERS / 1e6:.0f} M), where exporting and calibrating would cost more "
                       "than they save")
            LOG.info("runtime auto: %s", eager.runtime_choice.reason)
            return eager
        choice = choose(card, build, device=device, precision=precision, cache_dir=cache_dir,
                        load_kwargs=load_kwargs, images=sample_images, texts=sample_texts, min_cosine=min_cosine)
        comparator = eager if choice.runtime == "eager" else run_choice(
            choice, card, build, device=device, precision=precision, cache_dir=cache_dir, load_kwargs=load_kwargs)
        comparator.runtime = choice.runtime
    comparator.runtime_choice = choice
    return comparator


def check_guard(min_cosine) -> float:
    """The cosine guard as a float in (0, 1], else a one-line :class:`ClipzooError`."""
    try:
        value = float(min_cosine)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise ClipzooError(f"min_cosine must be in (0, 1], got {min_cosine!r}; e.g. --min-cosine 0.995")
    return value


def parameter_count(model) -> int:
    params = getattr(model, "parameters", None)
    return sum(p.numel() for p in params()) if callable(params) else 0


def candidates_here(device: str, candidates: Sequence[str] | None = None) -> list[str]:
    here = available(device)
    return [c for c in (candidates or CANDIDATES) if c in here]


def read_choice(path: Path, candidates: Sequence[str] | None = None) -> Choice | None:
    """The choice cached at ``path``; None when there is none — or it is no choice of the current ``candidates``
    (default: any of :data:`CANDIDATES`) — damaged, written by hand or by another version, or naming a runtime no
    longer available here: then it is measured again, with a warning line (a cached runtime is never run
    unchecked)."""
    if not path.is_file():
        return None
    try:
        choice = Choice(**check_cached(json.loads(path.read_text(encoding="utf-8")), candidates or CANDIDATES))
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        warn_user(f"runtime auto: ignoring the cached choice {path} ({exc}); measuring again")
        with contextlib.suppress(OSError):  # said once: the measurement's choice takes its place
            path.unlink()
        return None
    choice.cached = True
    LOG.info("runtime auto (cached %s): %s", path, choice.reason)
    return choice


def check_cached(data: Any, candidates: Sequence[str]) -> dict:
    """``data`` (a cached choice's JSON) when it has :class:`Choice`'s fields, each of its type, and names one of
    ``candidates``; else ValueError saying what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object but {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELD_TYPES))
    missing = sorted({f.name for f in fields(Choice) if f.default is MISSING and f.default_factory is MISSING}
                     - set(data))
    if unknown or missing:
        raise ValueError(f"unknown fields {unknown}" if unknown else f"missing fields {missing}")
    for name, value in data.items():
        if not isinstance(value, FIELD_TYPES[name]) or isinstance(value, bool) != (FIELD_TYPES[name] is bool):
            raise ValueError(f"{name} is {type(value).__name__}")
    if data["runtime"] not in candidates:
        raise ValueError(f"runtime {data['runtime']!r} is not one of the candidates here: {', '.join(candidates)}")
    return data


def available(device: str = "cpu", flags: frozenset[str] | None = None) -> list[str]:
    """The candidates that can run here: ONNX runtimes need onnxruntime and a CPU device (openvino-int8 OpenVINO
    too); bf16 a CPU with native bf16 (or a GPU)."""
    flags = cpu_flags() if flags is None else flags
    cpu = str(device).startswith("cpu")
    out = ["eager"]
    if cpu and has_onnxruntime():
        out += ["onnx", "onnx-int8", "onnx-int8-static"] + (["openvino-int8"] if has_openvino() else [])
    if not cpu or native_bf16(flags):
        out.append("bf16")
    return out


def machine_key() -> dict[str, Any]:
    return {"flags": sorted(f for f in cpu_flags() if f in MACHINE_FLAGS), "cpus": os.cpu_count(),
            "cpu": cpu_model()}


def cache_file(card: ModelCard, cache_dir, load_kwargs: dict, min_cosine: float, candidates: Sequence[str]) -> Path:
    """Where the choice for this machine, model and guard is kept (the sample it was measured on is not part
    of the key: a choice made on one folder of photos holds for the next)."""
    key = {"machine": machine_key(), "card": card.to_dict(), "kwargs": load_kwargs, "min_cosine": min_cosine,
           "candidates": list(candidates), "export": onnx.EXPORT_REVISION}  # a new export graph: measure again
    fingerprint = onnx.source_fingerprint(card, cache_dir)  # weights rewritten in place (a folder's too): measure
    if fingerprint:
        key["files"] = fingerprint
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "runtime-auto" / f"{digest}.json"


def choose(card: ModelCard, build: Callable[..., Any], *, device: str = "cpu", precision: str = "fp32",
           cache_dir=None, load_kwargs: dict | None = None, images: Sequence | None = None,
           texts: Sequence[str] | None = None, min_cosine: float = DEFAULT_MIN_COSINE,
           candidates: Sequence[str] | None = None) -> Choice:
    """Measure the candidate runtimes on ``images`` / ``texts`` (default: generated) and return the
    fastest whose min cosine to eager fp32 is ≥ ``min_cosine``; cached per machine and model."""
    min_cosine = check_guard(min_cosine)
    load_kwargs = dict(load_kwargs or {})
    candidates = candidates_here(device, candidates)
    path = cache_file(card, cache_dir, load_kwargs, min_cosine, candidates)
    cached = read_choice(path, candidates)
    if cached is not None:
        return cached
    origin = "; ".join(o for o in (getattr(images, "origin", None), getattr(texts, "origin", None)) if o)
    images, texts, source = calibration_sample(images, texts)
    sample = {"source": source, "images": len(images), "texts": len(texts), "origin": origin or None}
    calibrate_on = (images, texts) if source == "given" else None  # static int8 calibrates on the caller's sample
    n = BATCHES * BATCH_SIZE
    images, texts = (images * n)[:n], (texts * n)[:n]
    choice = measure(card, build, candidates, images, texts, min_cosine, device=device, precision=precision,
                     cache_dir=cache_dir, load_kwargs=load_kwargs, calibrate_on=calibrate_on)
    choice.sample = sample
    choice.reason += "; measured on " + (origin or ("the caller's inputs" if source == "given" else source))
    write_choice(path, choice)
    LOG.info("runtime auto: %s", choice.reason)
    return choice


def write_choice(path: Path, choice: Choice) -> None:
    """Cache ``choice`` at ``path`` (whole or not at all); a cache the file system refuses (a read-only folder, a
    folder at that path, a full disk) costs a warning line and the next load's measurement — not the choice made."""
    try:
        atomic_write_text(path, json.dumps(asdict(choice), indent=2) + "\n")
    except OSError as exc:
        warn_user(f"runtime auto: cannot cache the choice at {path} ({exc.strerror or exc}); the next load "
                  "measures again")


def measure(card, build, candidates: Sequence[str], images: list, texts: list[str], min_cosine: float, *,
            device: str, precision: str, cache_dir, load_kwargs: dict, calibrate_on: tuple | None = None) -> Choice:
    """Time every candidate on the sample and pick (see :func:`choose`); ``calibrate_on``: the caller's
    (images, texts), on which the static int8 runtimes are calibrated. Each candidate runs the sample twice and
    the second pass is timed: the text rows run in groups of one length, so a batch of texts runs several
    shapes, and the first run of each new shape prepares kernels (OpenVINO and ONNX Runtime alike) — a long job
    runs in that warm state (with a warm-up of one batch, ``openvino-int8`` measured 2.18× eager here where the
    embedding benchmark measured it 2.64×: docs/benchmarks.md)."""
    reference = build(device="cpu", precision="fp32")
    ref = encode(reference, images, texts)
    measured: dict[str, dict[str, Any]] = {}
    calibrations: dict[str, str] = {}
    for runtime in candidates:
        try:
            if runtime in STATIC and calibrate_on is not None:
                folder = onnx.exported_folder(card, build, precision=precision, cache_dir=cache_dir,
                                              load_kwargs=load_kwargs, portable=STATIC[runtime][0])
                calibrations[runtime] = str(static_int8_folder(folder, *calibrate_on,
                                                               base=onnx.derived_base(card, folder, cache_dir)))
                model = run_choice(Choice(runtime, "", min_cosine, calibration=calibrations[runtime]), card, build,
                                   device=device, precision=precision, cache_dir=cache_dir, load_kwargs=load_kwargs)
            elif runtime == "eager" and device == "cpu" and str(precision) in onnx.FP32_NAMES:
                model = reference
            else:
                model = run_runtime(runtime, card, build, device=device, precision=precision, cache_dir=cache_dir,
                                    load_kwargs=load_kwargs)
            encode(model, images, texts)  # warm-up: every shape the timed pass runs has run once (see measure)
            start = time.perf_counter()
            got = encode(model, images, texts)
            seconds = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot run here is skipped, and said so
            error = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            measured[runtime] = {"seconds": None, "min_cosine": None, "eligible": False, "error": error}
            continue
        cosine = min(float((got[m].float().cpu() * ref[m]).sum(-1).min()) for m in ref)
        measured[runtime] = {"seconds": round(seconds, 4), "min_cosine": round(cosine, 6),
                             "eligible": runtime == "eager" or cosine >= min_cosine, "error": None}
    eligible = {r: v["seconds"] for r, v in measured.items() if v["eligible"]}
    best = min(eligible, key=eligible.get) if eligible else "eager"
    return Choice(runtime=best, reason=explain(best, measured, min_cosine, len(images), len(texts)),
                  min_cosine=min_cosine, measured=measured, machine=machine_key(),
                  calibration=calibrations.get(best))


def run_choice(choice: Choice, card, build, *, device: str, precision: str, cache_dir, load_kwargs: dict) -> Any:
    """The comparator of ``choice``: its static-int8 export calibrated on the caller's inputs when it has one
    (and it is still there), else the runtime by name."""
    if choice.runtime in STATIC and choice.calibration and (Path(choice.calibration) / META_FILE).is_file():
        comparator = STATIC[choice.runtime][1](Path(choice.calibration), device=device, cache_dir=cache_dir)
        comparator.runtime = choice.runtime
        return comparator
    return run_runtime(choice.runtime, card, build, device=device, precision=precision, cache_dir=cache_dir,
                       load_kwargs=load_kwargs)


def encode(model, images: list, texts: list[str]) -> dict:
    out = {}
    if IMAGE in model.modalities:
        out[IMAGE] = model.encode_image(images, batch_size=BATCH_SIZE).float().cpu()
    if TEXT in model.modalities:
        out[TEXT] = model.encode_text(texts, batch_size=BATCH_SIZE).float().cpu()
    return out


def explain(best: str, measured: dict, min_cosine: float, n_images: int, n_texts: int) -> str:
    base = measured.get("eager", {}).get("seconds")
    parts = []
    for runtime, v in measured.items():
        if v["error"]:
            parts.append(f"{runtime}: unavailable ({v['error']})")
            continue
        speed = f"{base / v['seconds']:.2f}× eager" if base and v["seconds"] else f"{v['seconds']:.3f} s"
        guard = "" if v["eligible"] else f", below the guard {min_cosine}"
        parts.append(f"{runtime}: {speed}, min cosine {v['min_cosine']:.5f}{guard}")
    return (f"chose {best}: the fastest on {n_images} images + {n_texts} texts with min cosine to fp32 ≥ "
            f"{min_cosine} ({'; '.join(parts)})")
