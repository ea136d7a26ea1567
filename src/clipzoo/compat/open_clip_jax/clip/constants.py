"""Common normalization means and standard deviations (open_clip_jax's ``clip/constants.py``).

The OpenAI and ImageNet statistics are clipzoo's own constants (:mod:`clipzoo.constants`), re-exported under
open_clip_jax's names.
"""
from __future__ import annotations

from ....constants import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD, SIGLIP_MEAN, SIGLIP_STD

IDENTITY_MEAN = (0., 0., 0.)
IDENTITY_STD = (1., 1., 1.)

IMAGENET_DATASET_MEAN = IMAGENET_MEAN
IMAGENET_DATASET_STD = IMAGENET_STD

INCEPTION_DATASET_MEAN = SIGLIP_MEAN
INCEPTION_DATASET_STD = SIGLIP_STD

OPENAI_DATASET_MEAN = OPENAI_MEAN
OPENAI_DATASET_STD = OPENAI_STD
