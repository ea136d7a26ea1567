"""Embed many images, texts or audio clips with a Comparator and keep the result as a ``.npy`` file.

The one pipeline for many inputs:

- :mod:`~clipzoo.embed.sources`: image files, folders (recursively, sorted) and uncompressed webdataset
  ``.tar`` shards (brace patterns such as ``shards-{000..009}.tar`` work; a tar's image members are indexed
  by offset and read at random by the DataLoader workers, so tar input decodes in parallel and in order),
  and text files;
- :mod:`~clipzoo.embed.loader`: decode workers that decode and preprocess images while the model encodes the
  previous batch — threads of this process beside a model that runs in an engine of its own on the CPU
  (:mod:`~clipzoo.embed.thread_loader`), else a :class:`torch.utils.data.DataLoader`'s worker processes;
- :mod:`~clipzoo.embed.batches`: batches through the model, with the progress bar;
- :mod:`~clipzoo.embed.results` and :mod:`~clipzoo.embed.writers`: a float32 ``.npy`` matrix (one row per
  input, in order) and a JSON sidecar beside it (``emb.npy`` -> ``emb.json``) listing the inputs and the
  model; streamed rows go to a memory-mapped file renamed into place when complete;
- :mod:`~clipzoo.embed.distributed`: under ``torchrun`` each rank embeds one contiguous share, and rank 0
  joins the parts in rank order (equal to a single-process run);
- :mod:`~clipzoo.embed.run` and :mod:`~clipzoo.embed.audio_files`: the entry points.

::

    from clipzoo.embed import embed_images, save_embeddings
    result = embed_images(model, ["photos/"], workers=4, progress=True)
    save_embeddings(result, "photos.npy")

``import clipzoo.embed`` imports neither torch nor numpy; they load when something is embedded.
"""
from __future__ import annotations

from .audio_files import embed_audio
from .batches import check_batch_size, image_batches, text_batches
from .distributed import (
    DistributedInfo,
    barrier,
    distributed_info,
    merge_parts,
    part_name,
    parts_dir,
    shard_bounds,
)
from .loader import ImageFiles, collate_images, decode_in_threads, default_workers, draft_size_for, image_loader
from .results import Embeddings, load_embeddings, npy_path, save_embeddings, sidecar_path, write_sidecar
from .run import embed_images, embed_texts, embed_to_file
from .sources import TarMember, expand_image_inputs, expand_image_paths, read_texts, tar_image_members
from .writers import RowWriter

__all__ = [
    "Embeddings", "expand_image_paths", "read_texts", "ImageFiles", "image_loader", "collate_images",
    "embed_images", "embed_texts", "embed_audio", "save_embeddings", "load_embeddings", "sidecar_path",
    "write_sidecar", "npy_path", "default_workers", "draft_size_for", "decode_in_threads", "check_batch_size",
    "image_batches",
    "text_batches", "TarMember", "tar_image_members", "expand_image_inputs", "shard_bounds", "DistributedInfo",
    "distributed_info", "barrier", "embed_to_file", "merge_parts", "parts_dir", "part_name", "RowWriter",
]
