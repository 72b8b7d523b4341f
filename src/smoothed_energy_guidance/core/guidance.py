"""SEG guidance arithmetic and its settings (DESIGN.md §2). Pure torch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .blur import is_infinite_sigma


@dataclass(frozen=True)
class SegConfig:
    """What SEG does on one call, validated on creation.

    Args:
        scale: SEG guidance scale ``s`` >= 0; 0 turns SEG off (nothing extra runs). Negative
            scales are refused (they would be anti-guidance, which the official pipeline never runs).
        blur_sigma: Gaussian σ over the image grid; any value > 9999 (``float("inf")``) means
            uniform queries.
        layers: layer specs (see :mod:`smoothed_energy_guidance.core.layers`); None picks the model
            family's default (``["mid"]`` for UNets, the middle block for transformers).
        start: first fraction of the denoising steps during which SEG runs.
        end: fraction of the steps at which SEG stops (exclusive).
        temporal_sigma: video only: Gaussian σ along time, in frames of the token grid (0: none; any
            value > 9999: the mean over frames). ``blur_sigma`` is then the spatial σ within each frame.
    """

    scale: float = 3.0
    blur_sigma: float = float("inf")
    layers: tuple[str, ...] | None = None
    start: float = 0.0
    end: float = 1.0
    temporal_sigma: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"seg_scale must be a finite number, got {self.scale!r}; 3.0 is a good start.")
        if self.scale < 0:
            raise ValueError(
                f"seg_scale must be >= 0, got {self.scale!r}: a negative scale would pull samples towards the "
                "blurred prediction (anti-guidance). Use 0 to turn SEG off, or about 3 to guide."
            )
        if not isinstance(self.blur_sigma, (int, float)) or math.isnan(self.blur_sigma) or self.blur_sigma <= 0:
            raise ValueError(
                f"seg_blur_sigma must be > 0 (use float('inf') for uniform queries), got {self.blur_sigma!r}."
            )
        if (
            not isinstance(self.temporal_sigma, (int, float))
            or math.isnan(self.temporal_sigma)
            or self.temporal_sigma < 0
        ):
            raise ValueError(
                f"seg_temporal_sigma must be >= 0 (0: no blur along time; float('inf'): the mean over frames), "
                f"got {self.temporal_sigma!r}."
            )
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, (str, int)) else tuple(self.layers)
            object.__setattr__(self, "layers", layers)
        for name, value in (("seg_guidance_start", self.start), ("seg_guidance_end", self.end)):
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction of the steps in [0, 1], got {value!r}.")
        if self.start >= self.end:
            raise ValueError(
                f"seg_guidance_start ({self.start}) must be below seg_guidance_end ({self.end}); "
                "to turn SEG off, set seg_scale=0 instead."
            )

    @property
    def enabled(self) -> bool:
        """False when ``scale == 0``: then SEG adds no work at all."""
        return self.scale != 0

    @property
    def windowed(self) -> bool:
        """Whether SEG runs on only part of the steps (``start > 0`` or ``end < 1``)."""
        return self.start > 0.0 or self.end < 1.0

    @property
    def infinite_blur(self) -> bool:
        return is_infinite_sigma(self.blur_sigma)

    def active_at(self, progress: float) -> bool:
        """Whether SEG runs at ``progress`` = step index / number of steps."""
        return self.enabled and self.start <= progress < self.end


def rescale_noise_cfg(pred: torch.Tensor, pred_cond: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Rescale ``pred`` towards the per-sample std of ``pred_cond`` (Lin et al. 2023, Sec. 3.4)."""
    dims = list(range(1, pred_cond.ndim))
    std_cond = pred_cond.std(dim=dims, keepdim=True)
    std_pred = pred.std(dim=dims, keepdim=True)
    rescaled = pred * (std_cond / std_pred)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * pred


def apply_seg(
    pred_cond: torch.Tensor,
    pred_perturbed: torch.Tensor,
    seg_scale: float,
    pred_uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
) -> torch.Tensor:
    """Combine predictions as SEG does (Hong 2024, Eq. 9 with CFG).

    With CFG: ``uncond + g·(cond − uncond) + s·(cond − perturbed)``, then optionally
    rescaled towards ``cond``; without CFG (``pred_uncond is None``): ``cond + s·(cond − perturbed)``.
    All tensors share one shape (B, C, H, W).
    """
    seg_term = seg_scale * (pred_cond - pred_perturbed)
    if pred_uncond is None:
        return pred_cond + seg_term
    pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond) + seg_term
    if guidance_rescale > 0.0:
        pred = rescale_noise_cfg(pred, pred_cond, guidance_rescale)
    return pred


def split_rows(rows: torch.Tensor, groups: int) -> Sequence[torch.Tensor]:
    """Split a batch into ``groups`` equal row blocks (e.g. uncond, cond, perturbed)."""
    if rows.shape[0] % groups:
        raise ValueError(f"Batch of {rows.shape[0]} rows cannot be split into {groups} equal groups.")
    return rows.chunk(groups)
