"""The one place left where the engine reads the Python stack: the guider's step-0 batch plan.

A guider plans its batches (``prepare_inputs``) before any denoiser reaches it (``prepare_models``), and a
denoiser that cannot take extra rows (Z-Image, ERNIE-Image, Qwen-Image 2.1, HunyuanVideo 1.5) needs a third
batch. The guider remembers the denoiser each ``prepare_models`` hands it; only before the first one does it
look at the calling modular denoise block's ``components`` for the denoiser. Nothing here decides whether a
denoiser call gets SEG: that is the explicit call context (:mod:`..context`).
"""

from __future__ import annotations

import sys

from torch import nn

DENOISER_ATTRIBUTES = ("unet", "transformer")
_MAX_DEPTH = 64


def denoiser_of_modular_caller() -> nn.Module | None:
    """The denoiser of the modular pipeline whose denoise block is calling (its ``components`` local), read only."""
    frame = sys._getframe(1)
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return None
        components = frame.f_locals.get("components")
        for attribute in DENOISER_ATTRIBUTES if components is not None else ():
            denoiser = getattr(components, attribute, None)
            if isinstance(denoiser, nn.Module):
                return denoiser
        frame = frame.f_back
    return None
