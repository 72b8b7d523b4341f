"""The SEG pipeline classes, made from the family table.

Each is a diffusers pipeline class plus SEG's ``seg_*`` call arguments (:class:`.call.SegCallMixin`), named
and documented by its table entry (:mod:`..families.table`), so adding a family's pipelines means adding
their ``Task`` entries only. Default layers: ``["mid"]`` for UNets; the middle transformer block for
transformers (for Flux and Chroma the middle of the double and single stacks taken together), the DiT
counterpart of a UNet's mid block, which SEG's paper perturbs. Video families blur over the (t, h, w) token
grid, with ``seg_temporal_sigma`` along time.
"""

from __future__ import annotations

import diffusers

from ..families import FAMILIES
from .call import SegCallMixin


def _seg_class(name: str, host: type, doc: str) -> type:
    namespace = {"__doc__": doc, "__module__": __name__, "__qualname__": name}
    return type(name, (SegCallMixin, host), namespace)


def _make_seg_classes() -> dict[str, type]:
    """SEG class name → class, for every task of every family, in table order."""
    classes: dict[str, type] = {}
    for family in FAMILIES:
        for _, _, entry in family.tasks():
            if entry.seg_class not in classes:
                classes[entry.seg_class] = _seg_class(
                    entry.seg_class, getattr(diffusers, entry.diffusers_class), entry.doc
                )
    return classes


SEG_CLASSES_BY_NAME: dict[str, type] = _make_seg_classes()
globals().update(SEG_CLASSES_BY_NAME)  # importable and picklable by name from this module

#: The name the official SEG repository uses.
StableDiffusionXLSEGControlNetPipeline = SEG_CLASSES_BY_NAME["StableDiffusionXLControlNetSEGPipeline"]
