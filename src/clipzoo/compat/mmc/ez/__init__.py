"""mmc's ``mmc.ez`` ("easy mode"): ``from clipzoo.compat.mmc.ez.CLIP import clip``."""
from . import CLIP  # mmc's module name

__all__ = ["CLIP"]
