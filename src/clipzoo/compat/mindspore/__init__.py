"""Drop-ins for MindSpore-CLIP (mindspore-lab/mindcv ``examples/clip`` and ``examples/open_clip``): its ``clip`` and
``open_clip`` APIs on clipzoo's MindSpore models (MindSpore-CLIP's parameter names, so its ``.ckpt`` files load).

    from clipzoo.compat.mindspore import clip          # was: import clip
    from clipzoo.compat.mindspore import open_clip     # was: from src import open_clip

See :mod:`.clip` and :mod:`.open_clip` and ``docs/mindspore.md`` (Drop-ins). Needs ``pip install
'clipzoo[mindspore]'`` (MindSpore 2.10 needs NumPy < 2: its own environment); importing without it raises a
ClipzooError naming the extra.
"""
from ...extras import require

FEATURE = "the MindSpore-CLIP drop-ins"
require("mindspore", FEATURE)  # before anything below imports it: a missing extra is one ClipzooError naming it

from . import clip, open_clip  # noqa: E402

__all__ = ["clip", "open_clip"]
