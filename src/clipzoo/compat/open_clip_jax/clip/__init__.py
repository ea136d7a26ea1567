"""open_clip_jax's ``clip`` package: the CLIP model, its factory, transforms, tokenizer and inference."""
from .factory import (
    CLIP,
    create_model,
    create_model_with_params,
    list_models,
    list_pretrained,
    list_pretrained_by_model,
)
from .image_transforms import create_image_transforms
from .inference import CLIPInference
from .tokenizer import tokenize

__all__ = ["CLIP", "CLIPInference", "create_image_transforms", "create_model", "create_model_with_params",
           "list_models", "list_pretrained", "list_pretrained_by_model", "tokenize"]
