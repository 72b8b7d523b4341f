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


def _caller_locals(depth: int = 2):
    """The local variables of this thread's calling frames, innermost first (read only)."""
    frame = sys._getframe(depth)
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return
        yield frame.f_locals
        frame = frame.f_back


def calling_pipeline(denoiser: nn.Module) -> Any | None:
    """The innermost object on this thread's stack holding ``denoiser`` as its UNet or transformer."""
    for local_names in _caller_locals():
        owner = local_names.get("self")
        if owner is None or isinstance(owner, nn.Module):
            continue
        if any(getattr(owner, attribute, None) is denoiser for attribute in DENOISER_ATTRIBUTES):
            return owner
    return None


def pipeline_call_locals(pipe: Any) -> dict[str, Any]:
    """The local variables of ``pipe``'s innermost method on this thread's stack (its ``__call__``), read
    only; empty when ``pipe`` is not calling. For pipelines that keep CFG settings in locals (PixArt)."""
    for local_names in _caller_locals():
        if local_names.get("self") is pipe:
            return local_names
    return {}


def call_owner_check(pipe: Any, denoiser: nn.Module):
    """``owns_call()`` for SEG hooks on ``pipe``: True unless another pipeline is making the call."""

    def owns_call() -> bool:
        owner = calling_pipeline(denoiser)
        return owner is None or owner is pipe

    return owns_call


def denoiser_of_caller() -> nn.Module | None:
    """The denoiser of the modular pipeline whose denoise block is calling (its ``components`` local)."""
    for local_names in _caller_locals():
        components = local_names.get("components")
        for attribute in DENOISER_ATTRIBUTES if components is not None else ():
            denoiser = getattr(components, attribute, None)
            if isinstance(denoiser, nn.Module):
                return denoiser
    return None
