"""SEG for ComfyUI: the ``SmoothedEnergyGuidance`` node (MODEL → MODEL), on the same core as the diffusers side.

ComfyUI loads it from ``custom_nodes/`` (a clone of this repository, or a one-line shim after
``pip install smoothed-energy-guidance``): this package exposes ``comfy_entrypoint``, ``NODE_CLASS_MAPPINGS``
and ``NODE_DISPLAY_NAME_MAPPINGS``. Nothing here imports diffusers; the nodes import ComfyUI's API only when
ComfyUI asks for them.
"""

from __future__ import annotations

import importlib
from typing import Any

_NODE_NAMES = ("comfy_entrypoint", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "SmoothedEnergyGuidance")
__all__ = list(_NODE_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NODE_NAMES:
        return getattr(importlib.import_module(".nodes", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
