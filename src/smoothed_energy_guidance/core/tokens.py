"""Blurring the image tokens of a query tensor laid out as a model keeps them. Pure torch.

The one place that knows token layouts: queries per token ``(B, N, C)`` or per head ``(B, heads, N, d)``; the
image's tokens alone, first (followed by reference-image or text tokens), or after the text tokens; video
frames folded into the batch (AnimateDiff). Every host (diffusers hooks, ComfyUI patches) calls this.
"""

from __future__ import annotations

import enum
import math

import torch

from .blur import blur_queries


class TokenLayout(enum.Enum):
    """Where a query tensor keeps the generated image's tokens."""

    IMAGE_ONLY = "image tokens only"
    IMAGE_FIRST = "image tokens first, then other tokens (reference images, text, padding)"
    TEXT_FIRST = "text tokens first, then the image tokens, then any reference-image tokens"


def blur_image_queries(
    q: torch.Tensor,
    grid: tuple[int, ...],
    sigma: float,
    temporal_sigma: float = 0.0,
    *,
    layout: TokenLayout = TokenLayout.IMAGE_ONLY,
    token_dim: int = 1,
    text_tokens: int | None = None,
    frames: int = 1,
    layer: str = "this layer",
) -> torch.Tensor:
    """Blur the image tokens of ``q`` over ``grid``; every other token passes unchanged.

    Args:
        q: queries, (B, N, …) with ``token_dim=1`` or per head (B, heads, N, head_dim) with ``token_dim=2``.
        grid: the image's token grid, (h, w) or (t, h, w).
        sigma, temporal_sigma: the blur (see :func:`~smoothed_energy_guidance.core.blur.blur_queries`).
        layout: where the image tokens sit; ``text_tokens`` (for ``TEXT_FIRST``) is how many text tokens open
            the query; None: the image tokens end it.
        frames: each sample's frames as consecutive rows of ``q`` (frames folded into the batch); they are
            blurred as one (frames, h, w) grid.
        layer: named in errors.

    >>> q = torch.arange(8.0).view(1, 4, 2)  # 2 text tokens, then a 1 × 2 image
    >>> blur_image_queries(q, (1, 2), float("inf"), layout=TokenLayout.TEXT_FIRST)[0, :, 0].tolist()
    [0.0, 2.0, 5.0, 5.0]
    """
    if token_dim == 2:  # (B, heads, N, head_dim) → (B, N, heads·head_dim)
        batch, heads, tokens, head_dim = q.shape
        flat = q.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    else:
        flat = q.reshape(q.shape[0], q.shape[1], -1)
    if frames > 1:  # (B·F, N, C) → (B, F·N, C): frame-major tokens, as blur_queries reads a (t, h, w) grid
        per_frame = flat.shape
        flat = flat.reshape(per_frame[0] // frames, frames * per_frame[1], per_frame[2])
        grid = (frames, *grid)
    image_tokens = math.prod(grid)
    if layout is TokenLayout.IMAGE_ONLY and flat.shape[1] != image_tokens:
        raise ValueError(
            f"SEG layer {layer} has {flat.shape[1]} query tokens but its grid is "
            f"{'x'.join(map(str, grid))} = {image_tokens}; the grid must be the layer's real feature-map size."
        )
    start = 0
    if layout is TokenLayout.TEXT_FIRST:
        start = flat.shape[1] - image_tokens if text_tokens is None else text_tokens
    if start < 0 or start + image_tokens > flat.shape[1]:
        raise ValueError(
            f"SEG layer {layer} has {flat.shape[1]} query tokens, too few for {start} text tokens and a "
            f"{'x'.join(map(str, grid))} image grid."
        )
    image = flat[:, start : start + image_tokens]
    blurred_image = blur_queries(image, grid, sigma, temporal_sigma).to(q.dtype)
    blurred = torch.cat([flat[:, :start], blurred_image, flat[:, start + image_tokens :]], dim=1)
    if frames > 1:
        blurred = blurred.reshape(per_frame)
    if token_dim == 2:
        return blurred.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
    return blurred.reshape(q.shape)
