"""Constants shared across clipzoo: defined here once, imported everywhere else.

Only plain values live here (no imports of clipzoo or third-party packages), so any layer may use them.
"""
from __future__ import annotations

import os
from pathlib import Path

VERSION = "0.1.0"
"""clipzoo's version (``clipzoo.__version__``)."""

# ---------------------------------------------------------------- files
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm")
"""Image files that folders expand to (embed, index build, data sets, webdataset members)."""
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MAX_AUDIO_SAMPLES = 1 << 26
"""An audio file's samples over all its channels (about 11.6 minutes of 48 kHz stereo; 512 MB as float64): a
longer one is refused in one line, from its header, before it is read."""
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 768_000
"""The sample rates taken (Hz), up to the highest PCM rate in use; a header or pair outside them is refused."""
MAX_RESAMPLE_FACTOR = 1000
"""Resampling's polyphase factors (up / down, gcd-reduced) are kept at most this: a rate pair without such a
ratio (44,101 Hz to 48,000) is resampled by the nearest ratio that has one (≤ 1e-6 off) — the exact factors made
a filter of 20 × max(up, down) taps (a header's rate of 999,999,937 Hz asked for 320 GB)."""
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
"""Video files that folders expand to (encode_video, index build), decoded with PyAV (the [video] extra)."""
DEFAULT_VIDEO_FRAMES = 8
"""Frames sampled uniformly from a video when a model does not say how many it takes."""
MAX_VIDEO_SECONDS = 4 * 3600.0
MAX_VIDEO_FRAMES = 500_000
MAX_VIDEO_PIXELS = 8192 * 8192
"""Decode bounds: a longer video, more frames, or bigger frames (width x height) are refused in one line."""
MAX_ALL_FRAMES = 256
"""Video models that take every frame (PE-AV's all-frames checkpoints) encode at most this many: a longer video
is sampled to this many evenly spaced frames (pass ``num_frames`` to ``encode_video`` for fewer)."""
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz", ".pkl")

# ---------------------------------------------------------------- preprocessing
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)

# ---------------------------------------------------------------- text
DEFAULT_CONTEXT_LENGTH = 77
"""OpenAI CLIP's context length (tokens, start and end included)."""
OPENAI_VOCAB_SIZE = 49408
"""OpenAI CLIP's BPE vocabulary (open_clip's ``SimpleTokenizer``)."""

# ---------------------------------------------------------------- untrusted input
DEFAULT_MAX_PIXELS = 40_000_000
"""Decoded pixels allowed in one uploaded image unless a caller sets its own bound."""
DEFAULT_MAX_REQUEST_PIXELS = 64_000_000
"""Most pixels the images of one service request may declare together (413 above)."""
MAX_ASPECT_RATIO = 32
"""Longest side over shortest side an image keeps when decoded; a longer image keeps its central part (a model that
resizes the shortest side and crops the centre sees the same square, and the resize stays within about 32 × its
input size: a 100,000 × 1 PNG no longer becomes a 6-gigapixel resize)."""
PIXEL01_SLACK = 0.5
"""How far outside [0, 1] a float image tensor (guidance, ``encode_image01``) may go: beyond it another scale was
passed (0–255, or a diffusion decoder's [-1, 1]); slightly out of range (an optimiser's step) is accepted."""

MAX_RECORD_BYTES = 128 * 1024 * 1024
"""Largest tar member or TFRecord record a data-set reader takes into memory (a gzip bomb's 400 MB caption was
read whole; a TFRecord length field of 2^40 was a MemoryError)."""

DEFAULT_TEMPLATE = "a photo of a {}."
"""The prompt template for class labels when none is given (zero-shot, classify, the service)."""

TIE_TOLERANCE = 1e-6
"""Two scores that differ by at most this fraction of their sum are a tie (shown with equal ranks, never an
arbitrary winner): a small model gives words it never saw ("cat", "dog" for clipzoo/tiny-shapes) the same
features; relative, so 3e-8 and 8e-19 are not a tie."""

# ---------------------------------------------------------------- the service
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 5020
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest request body (bytes) unless the server is started with another (``--max-body-mb``)."""
DEFAULT_THUMB_SIZE = 256
"""Longer side of thumbnails (pixels)."""
DEMO_IMAGES = 300
"""Generated shapes the demo indexes."""
DEFAULT_LIMIT_CONCURRENCY = 4096
"""Connections and requests the service takes at once; requests beyond get 503 (``--limit-concurrency``)."""
DEFAULT_HEADER_TIMEOUT_S = 10.0
"""A connection that sends no complete request line and headers in this many seconds is closed."""
DEFAULT_BODY_TIMEOUT_S = 60.0
"""A request whose body is not complete this many seconds after its headers has its connection closed (a body
trickled a byte at a time held a connection slot for ever; 16 MB in 60 s is 280 KB/s)."""
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5.0
"""An idle keep-alive connection is closed after this many seconds."""
DEFAULT_MAX_BATCH = 32
"""Most waiting requests one model call of the service encodes together (``--max-batch``; 1: unbatched)."""
DEFAULT_MAX_WAIT_MS = 5.0
"""Longest a service request waits for others to join its batch, in milliseconds (``--max-wait-ms``)."""

# ---------------------------------------------------------------- downloads
DOWNLOAD_TIMEOUT_S = 10.0
"""Seconds a download may wait to connect, or for its next bytes, before it fails (one line, no retries)."""
DOWNLOAD_MIN_BYTES_PER_S = 1024
"""Slowest transfer a download keeps: one that brings fewer bytes than this rate over a span of ``DOWNLOAD_TIMEOUT_S``
seconds fails with one line (a server trickling a byte a second reset the per-read timeout and held the download
for ever)."""
HUB_PROBE_TIMEOUT_S = 5.0
"""How long clipzoo waits for the hub's host to accept a connection before it reads the local cache only
(instead of huggingface_hub's five retries with back-off, ~40 s of "Retrying in 8s" lines offline)."""

# ---------------------------------------------------------------- texts longer than the context
LONG_TEXT_POLICIES = ("error", "truncate", "chunks")
"""What encode_text does with a text longer than the model's context: raise (with the token count), cut it, or
split it at sentence (then word, then character) boundaries, encode each piece and average the normalised
features."""
DEFAULT_LONG_TEXT = "error"
"""clipzoo's own default: a silently cut caption changes search results unnoticed, so the user chooses."""
COUNTED_TOKENS_MAX = 8192
"""A too-long text's error names its token count up to this many ("more than 8192 tokens" beyond): a huge text is
never tokenised whole just to say how long it is."""
SIDECAR_TEXT_CHARS = 10_000
"""The most characters of one text an embeddings sidecar lists: a longer text is listed as its beginning and
``… [N characters]`` (a 100 MB line wrote a 100 MB sidecar)."""

# ---------------------------------------------------------------- cache
CACHE_ENV = "CLIPZOO_CACHE"


def default_cache_dir() -> Path:
    """``$CLIPZOO_CACHE``, else ``$XDG_CACHE_HOME/clipzoo``, else ``~/.cache/clipzoo``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "clipzoo")
    return Path(root)

# --runtime auto: the least cosine to fp32 a faster runtime must keep to be chosen (--min-cosine)
DEFAULT_MIN_COSINE = 0.995

# the vector store of an index built from precomputed vectors (`clipzoo index build-vectors`): it keeps no
# embedding store to repair from, so its integrity errors point at a rebuild
ONDISK_STORE = "faiss_ondisk"

# ---------------------------------------------------------------- evaluation
MAX_PLOT_CLASSES = 1000
"""The per-class plots of a result (confusion matrix, per-class accuracy bars) are drawn up to this many classes
(ImageNet-1k's 1000: about 11 s and 1 GB for the matrix); past it they are left out with one line saying so — the
matrix's cells grow with the square of the classes, and at ImageNet-21k's 21,841 either plot ran for many minutes."""

# ---------------------------------------------------------------- service: request bodies and URL fetches
MAX_JSON_VALUES = 131_072
"""Most values (commas outside strings) a JSON request body may hold: twice the longest list a route takes (an
embedding of 65,536 numbers). A 14 MB body of 3.7 M numbers took 1.5 s to parse and 700 MB; it is now a 413."""
JSON_INLINE_BYTES = 64 * 1024
"""A JSON body up to this size is parsed on the event loop (a few milliseconds at most); a larger one in a worker
thread, so a big body never holds up other requests."""
BODY_PARSE_SLOTS = 2
"""Large JSON bodies parsed at once in the whole server (the rest wait, without blocking the event loop)."""
URL_FETCH_SLOTS = 8
"""``image_url`` fetches at once in the whole server; one more is a 503, so slow hosts cannot take the worker
threads that decode uploads and make thumbnails."""
MAX_SHARD_NAMES = 2_000_000
"""Most shard names a data set spec may expand to (braces, globs): ``shards-{0..99999999}.tar`` listed 10^8 names
for minutes and gigabytes before the first was opened; DataComp's largest pool is 1.3 million shards."""
IMAGE_FOLDER_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The images of a class folder data set (``DIR/<class>/<image>``): torchvision's ``IMG_EXTENSIONS``, so a folder
gives the samples and class indices ``ImageFolder`` gives (``.gif`` is not one of them, ``.pgm`` is)."""
