"""Gaussian blur of attention queries over the image grid (SEG, Hong 2024, Sec. 3).

Pure torch, no diffusers. The kernel rules reproduce the official SEG-SDXL implementation
exactly (DESIGN.md §2) while reading the real ``h × w`` grid instead of ``isqrt(N)``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

#: σ strictly above this value means "infinite blur": every query becomes the token mean.
INFINITE_SIGMA_THRESHOLD = 9999.0


def is_infinite_sigma(sigma: float) -> bool:
    """Whether ``sigma`` selects the uniform-query limit (σ > 9999, as in the official code)."""
    return sigma > INFINITE_SIGMA_THRESHOLD


def kernel_size(sigma: float) -> int:
    """Odd kernel size ``ceil(6σ) + 1``, minus one when ``ceil(6σ)`` is odd."""
    span = math.ceil(6 * sigma)
    return span + 1 - span % 2


def axis_kernel_size(size: int, side: int) -> int:
    """Kernel size clamped to a map side: an even side of 32 allows 33, an odd side of 33 allows 33."""
    return min(size, side - (side % 2 - 1))


def _gaussian_taps(sigma: float, size: int) -> torch.Tensor:
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return pdf / pdf.sum()


@functools.lru_cache(maxsize=256)
def gaussian_kernel_1d(
    sigma: float, size: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps, cached per (σ, size, dtype, device).

    The taps are computed in fp32 on the CPU, as the official code does, then cast.
    """
    return _gaussian_taps(float(sigma), int(size)).to(device=device, dtype=dtype)


def _blur_axis(x: torch.Tensor, sigma: float, size: int, dim: int) -> torch.Tensor:
    """Reflect-padded depthwise Gaussian along ``dim`` (-1: width, -2: height) of (B, C, h, w)."""
    side = x.shape[dim]
    taps = axis_kernel_size(size, side)
    if taps <= 1:
        return x
    if torch.compiler.is_compiling():  # traced into the graph as a constant; no Python cache inside
        kernel = _gaussian_taps(float(sigma), taps).to(device=x.device, dtype=x.dtype)
    else:
        kernel = gaussian_kernel_1d(sigma, taps, x.dtype, x.device)
    channels = x.shape[1]
    pad = taps // 2
    if dim == -1:
        weight = kernel.view(1, 1, 1, taps).expand(channels, 1, 1, taps)
        padded = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    else:
        weight = kernel.view(1, 1, taps, 1).expand(channels, 1, taps, 1)
        padded = F.pad(x, (0, 0, pad, pad), mode="reflect")
    return F.conv2d(padded, weight, groups=channels)


def blur_feature_map(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur a (B, C, h, w) map with the finite-σ SEG kernel, separably.

    Equivalent to the official 2-D reflect pad plus depthwise convolution with the outer
    product of the per-axis kernels; each axis is clamped to its own side.
    """
    size = kernel_size(sigma)
    return _blur_axis(_blur_axis(x, sigma, size, dim=-1), sigma, size, dim=-2)


def _blur_frames(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (B, C, t, s) along t (frames) with the SEG kernel rules; ∞ gives each position its mean over t."""
    if is_infinite_sigma(sigma):
        return x.mean(dim=2, keepdim=True).expand_as(x)
    return _blur_axis(x, sigma, kernel_size(sigma), dim=-2)


def blur_queries(q: torch.Tensor, grid: tuple[int, ...], sigma: float, temporal_sigma: float = 0.0) -> torch.Tensor:
    """Blur queries of shape (B, N, C) over their row-major token grid, ``h × w`` or ``t × h × w``.

    Token ``n = i·w + j`` (``n = (f·h + i)·w + j`` for video). For σ > 9999 every token's query becomes
    the per-channel mean over all of a frame's tokens; otherwise the Gaussian of
    :func:`blur_feature_map` is applied within each frame. Video grids are then blurred along time
    with ``temporal_sigma`` by the same kernel rules (0: no temporal blur; > 9999: the mean over frames),
    so both σ infinite make every query the mean over the whole clip.

    >>> q = torch.arange(12.0).view(1, 6, 2)
    >>> blur_queries(q, (2, 3), float("inf"))[0, :, 0].tolist()
    [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    """
    frames, (height, width) = (grid[0], grid[1:]) if len(grid) == 3 else (1, grid)
    batch, tokens, channels = q.shape
    if tokens != frames * height * width:
        shape = "x".join(map(str, grid))
        raise ValueError(
            f"Query has {tokens} tokens but the grid is {shape} = {frames * height * width}; "
            "the grid must be the layer's real feature-map size."
        )
    per_frame = q.reshape(batch * frames, height * width, channels)
    if is_infinite_sigma(sigma):
        blurred = per_frame.mean(dim=1, keepdim=True).expand_as(per_frame)
    else:
        feature_map = per_frame.transpose(1, 2).reshape(batch * frames, channels, height, width)
        blurred = blur_feature_map(feature_map, sigma).reshape(batch * frames, channels, height * width)
        blurred = blurred.transpose(1, 2)
    if frames > 1 and temporal_sigma > 0:
        clip = blurred.reshape(batch, frames, height * width, channels).permute(0, 3, 1, 2)
        blurred = _blur_frames(clip, temporal_sigma).permute(0, 2, 3, 1)
    return blurred.reshape(batch, tokens, channels)
