"""clipzoo's own ``nn.Module`` models: compositional CLIPs (an image tower from timm / torchvision / open_clip, a
text tower from transformers / sentence-transformers / open_clip, projection heads) and their saved-folder format.

- :mod:`clipzoo.models.spec`: the ``towers`` table (checked, torch-free) and :class:`ConfigError`;
- :mod:`clipzoo.models.heads`: projection heads (identity, linear, MLP, DINO);
- :mod:`clipzoo.models.image_towers` / :mod:`clipzoo.models.text_towers`: the towers;
- :mod:`clipzoo.models.tokenize`: the text towers' tokenizers (texts -> token ids);
- :mod:`clipzoo.models.open_clip_parts`: what the towers take from open_clip (configs, tokenizers, transforms);
- :mod:`clipzoo.models.padding_free`: open_clip text encoding up to a batch's longest text;
- :mod:`clipzoo.models.composite`: :class:`~clipzoo.models.composite.CompositeCLIP`, built, saved and loaded
  (``clipzoo_composite.json`` + ``model.safetensors``).

This layer imports only clipzoo's core modules (never a backend, never training code), so that both the
``composite`` backend and the trainer can build on it.
"""
