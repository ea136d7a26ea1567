"""mmc's ``mmc.ez.CLIP``: ``from clipzoo.compat.mmc.ez.CLIP import clip`` gives openai's ``clip`` API over every
clipzoo model — :mod:`clipzoo.compat.clip` itself:

- ``clip.available_models()``: OpenAI's nine names, then every other model's ``[architecture - publisher - id]``
  alias (mmc's lists OpenAI's ids, then its registry's aliases);
- ``clip.load(id_or_alias, device=None)``: OpenAI's names (``'RN50'`` is ``'[clip - openai - RN50]'``, as in mmc)
  and any alias or spec -> ``(model, preprocess)``: openai's model API and the model's eval transform (mmc's
  ``EzClip.load`` returns its ``MockOpenaiClip`` and, as the second item, its comparator object);
- ``clip.tokenize``: the last loaded model's tokenizer, OpenAI's before any load (mmc warns then; this does not).
"""
from ... import clip

__all__ = ["clip"]
