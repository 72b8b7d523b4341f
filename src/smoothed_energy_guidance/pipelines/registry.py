"""Which SEG pipeline class serves which diffusers pipeline class."""

from __future__ import annotations

from . import animatediff, dit, kolors, sd, sdxl
from .call import SegCallMixin


def _seg_classes() -> dict[type, type]:
    """Every SEG class the pipeline modules define, keyed by the diffusers class it extends."""
    classes = {}
    for module in (sdxl, sd, kolors, dit, animatediff):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, SegCallMixin) and value.__module__ == module.__name__:
                host = next(base for base in value.__bases__ if base is not SegCallMixin)
                classes[host] = value
    return classes


SEG_CLASSES: dict[type, type] = _seg_classes()
