"""Drop-in replacements for the two libraries CLIP users already know, built on clipzoo's core.

    from clipzoo.compat import clip        # openai/CLIP: available_models, load, tokenize
    from clipzoo.compat import open_clip   # open_clip 3.x: create_model*, get_tokenizer, list_*, …

Both accept every model clipzoo knows (any alias, hub id or local checkpoint) and give the same
numbers as the reference libraries on the models those can load. See each module's docstring.
Both also stand in for the originals under their own names (``sys.modules["clip"] = compat.clip``,
``sys.modules["open_clip"] = compat.open_clip`` or ``compat.open_clip.install()``); ``compat.open_clip``
is a package with open_clip's submodules (``factory``, ``pretrained``, ``tokenizer``, …).

    from clipzoo.compat import mmc         # mmc's API: modalities on disk, loaders, MultiMMC, MockOpenaiClip
"""
__all__ = ["clip", "open_clip", "mmc"]
