"""Which pipeline made the denoiser call in flight, so SEG acts only on its own pipeline's calls.

Pipelines built with ``from_pipe`` share their UNet / transformer. A denoiser call belongs to the
innermost pipeline method on the calling thread's stack whose pipeline holds that denoiser; the
stack is read, never changed, so nothing the user owns is wrapped or patched.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

DENOISER_ATTRIBUTES = ("unet", "transformer")
_MAX_DEPTH = 64


def calling_pipeline(denoiser: nn.Module) -> Any | None:
    """The innermost object on this thread's stack holding ``denoiser`` as its UNet or transformer."""
    frame = sys._getframe(1)
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if owner is not None and not isinstance(owner, nn.Module):
            for attribute in DENOISER_ATTRIBUTES:
                if getattr(owner, attribute, None) is denoiser:
                    return owner
        frame = frame.f_back
    return None


def call_owner_check(pipe: Any, denoiser: nn.Module):
    """``owns_call()`` for SEG hooks on ``pipe``: True unless another pipeline is making the call."""

    def owns_call() -> bool:
        owner = calling_pipeline(denoiser)
        return owner is None or owner is pipe

    return owns_call


def denoiser_of_caller() -> nn.Module | None:
    """The denoiser of the modular pipeline whose denoise block is calling (its ``components`` local)."""
    frame = sys._getframe(1)
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return None
        components = frame.f_locals.get("components")
        for attribute in DENOISER_ATTRIBUTES:
            denoiser = getattr(components, attribute, None) if components is not None else None
            if isinstance(denoiser, nn.Module):
                return denoiser
        frame = frame.f_back
    return None
