"""Which SEG pipeline class serves which diffusers pipeline class, and :func:`from_pipe`."""

from __future__ import annotations

from typing import Any

from ..families import seg_class_hosts
from . import animatediff, dit, kolors, sd, sdxl
from .call import SegCallMixin
from .enable import SUPPORTED_FAMILIES


def _seg_classes() -> dict[type, type]:
    """Every SEG class the family table lists, keyed by the diffusers class it extends.

    The classes themselves are written in the pipeline modules (each with its own docstring); a table entry
    without its class, or a class extending another diffusers class than the table says, stops the import.
    """
    defined = {
        name: value
        for module in (sdxl, sd, kolors, dit, animatediff)
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, SegCallMixin) and value.__module__ == module.__name__
    }
    classes = {}
    for seg_name, host_name in seg_class_hosts().items():
        seg_class = defined.get(seg_name)
        if seg_class is None:
            raise ImportError(f"The family table lists {seg_name}, but no pipelines module defines it.")
        host = next(base for base in seg_class.__bases__ if base is not SegCallMixin)
        if host.__name__ != host_name:
            raise ImportError(f"{seg_name} extends {host.__name__}; the family table says {host_name}.")
        classes[host] = seg_class
    return classes


SEG_CLASSES: dict[type, type] = _seg_classes()


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
