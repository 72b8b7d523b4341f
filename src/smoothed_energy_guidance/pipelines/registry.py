"""Which SEG pipeline class serves which diffusers pipeline class, and :func:`from_pipe`."""

from __future__ import annotations

from typing import Any

from .classes import SEG_CLASSES_BY_NAME
from .enable import SUPPORTED_FAMILIES

# diffusers pipeline class → the SEG class made from it (the first the table lists, for a class two tasks share)
SEG_CLASSES: dict[type, type] = {}
for _seg_class in SEG_CLASSES_BY_NAME.values():
    SEG_CLASSES.setdefault(_seg_class.__bases__[1], _seg_class)


def seg_pipeline_class(pipe: Any) -> type:
    """The SEG pipeline class for a diffusers pipeline object (by its class or a base class)."""
    for cls in type(pipe).__mro__:
        if cls in SEG_CLASSES.values():
            return cls
        if cls in SEG_CLASSES:
            return SEG_CLASSES[cls]
    raise ValueError(f"{type(pipe).__name__} is not supported: SEG supports {SUPPORTED_FAMILIES} pipelines.")


def from_pipe(pipe: Any, **kwargs: Any) -> Any:
    """The matching SEG pipeline sharing ``pipe``'s components (no reload), e.g. SDXL → SDXL SEG."""
    return seg_pipeline_class(pipe).from_pipe(pipe, **kwargs)
