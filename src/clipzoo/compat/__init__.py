"""Drop-in replacements for the two libraries CLIP users already know, built on clipzoo's core.

    from clipzoo.compat import clip        # openai/CLIP: available_models, load, tokenize
    from clipzoo.compat import open_clip   # open_clip 3.x: create_model*, get_tokenizer, list_*, …

Both accept every model clipzoo knows (any alias, hub id or local checkpoint) and give the same
numbers as the reference libraries on the models those can load. See each module's docstring.
"""
__all__ = ["clip", "open_clip"]
