"""Smoothed Energy Guidance (SEG) for Hugging Face diffusers.

Names load on first use, so ``import smoothed_energy_guidance as seg`` stays light and the
core (blur, layers, guidance) never pulls in diffusers.

>>> import smoothed_energy_guidance as seg
>>> seg.SegConfig(scale=3.0, blur_sigma=10.0).infinite_blur
False
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Names of the core and of the engine; the SEG pipeline classes come from the family table (see _exports).
_EXPORTS = {
    "SegConfig": "core.guidance",
    "apply_seg": "core.guidance",
    "blur_queries": "core.blur",
    "SegHooks": "hooks",
    "enable_seg": "pipelines",
    "from_pipe": "pipelines",
    "SmoothedEnergyGuidance": "pipelines",
    "load_pipeline": "pipelines",
    "StableDiffusionXLSEGControlNetPipeline": "pipelines",  # the name the official SEG repository uses
}


def _exports() -> dict[str, str]:
    """Every public name and the submodule it lives in: the names above and every SEG class in the table."""
    from .families import seg_class_hosts

    return {**_EXPORTS, **dict.fromkeys(seg_class_hosts(), "pipelines")}


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return sorted(_exports())
    module = _EXPORTS.get(name) or _exports().get(name)
    if module is None:
        raise AttributeError(f"module 'smoothed_energy_guidance' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_exports()})
