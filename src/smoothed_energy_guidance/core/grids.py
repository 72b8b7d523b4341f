"""What SEG reads from a denoiser call, and the token grid of each layer. Pure torch.

A host's grid reader turns one denoiser call's arguments into :class:`DenoiserInputs`; :func:`layer_grid` gives
the grid a layer ``downsample`` levels below the latent sees (a UNet level halves with ceil).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DenoiserInputs:
    """What SEG reads from one denoiser call's arguments."""

    rows: int
    grid: tuple[int, ...]  # latent (UNet) or token (transformer) grid; (t, h, w) for video
    timestep: Any
    # A cond-only call whose output the host subtracts from its cond prediction (SD3 skip-layer
    # guidance): SEG adds no rows there, and shifts it so the host's subtraction sees the true cond.
    cond_reference: bool = False
    # Text tokens ahead of the image tokens in ``TEXT_FIRST`` queries; None: the image tokens end the query.
    text_tokens: int | None = None
    # False when this call carries inputs the blocks consume in the denoiser's own loop (SD3 ControlNet
    # residuals): the perturbed rows then join at the input instead of forking after the shared prefix.
    shares_prefix: bool = True
    # Frames a video UNet folds into its batch (AnimateDiff: row b·F + f is frame f of sample b); its
    # spatial attentions see one frame per row, and SEG blurs over the (frames, h, w) grid of each sample.
    frames: int = 1


def unet_call_inputs(args: tuple, kwargs: dict) -> DenoiserInputs:
    """UNet2DConditionModel.forward(sample, timestep, …); a 5-D sample is (B, C, F, H, W) video (UNetMotionModel)."""
    sample = args[0] if args else kwargs["sample"]
    timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
    frames = sample.shape[2] if sample.ndim == 5 else 1
    return DenoiserInputs(sample.shape[0], tuple(sample.shape[-2:]), timestep, frames=frames)


def layer_grid(latent_hw: tuple[int, ...], downsample: int) -> tuple[int, ...]:
    """Grid of a layer ``downsample`` levels below the latent: each level halves with ceil.

    A video token grid (t, h, w) of a transformer is used as it is (its layers share one grid).
    """
    if len(latent_hw) == 3:
        return latent_hw
    height, width = latent_hw
    for _ in range(downsample):
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    return height, width
