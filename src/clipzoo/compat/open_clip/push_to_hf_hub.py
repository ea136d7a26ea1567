"""``open_clip.push_to_hf_hub`` through the shim: open_clip's own module, name for name (the models the shim
hands out are open_clip's classes, so there is nothing of clipzoo's to put in their place)."""
from ._passthrough import passthrough

__getattr__, __dir__, __all__ = passthrough("push_to_hf_hub", globals())
