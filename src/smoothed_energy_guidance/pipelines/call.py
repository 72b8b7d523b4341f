"""The ``seg_*`` call arguments, added to any diffusers pipeline class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .enable import enable_seg


class SegCallMixin:
    """Adds the official SEG call arguments to a diffusers pipeline's ``__call__``.

    Every argument the host pipeline accepts is passed through unchanged; the host's loop,
    schedulers, callbacks, LoRA, IP-Adapter and offloading stay diffusers' own.
    """

    def __call__(
        self,
        *args: Any,
        seg_scale: float = 3.0,
        seg_blur_sigma: float = float("inf"),
        seg_applied_layers: Sequence[str] | None = None,
        seg_applied_layers_index: Sequence[str] | None = None,
        seg_guidance_start: float = 0.0,
        seg_guidance_end: float = 1.0,
        **kwargs: Any,
    ) -> Any:
        """Run the host pipeline with Smoothed Energy Guidance.

        Args:
            seg_scale: SEG guidance scale; about 3 works well, 0 is the plain pipeline.
            seg_blur_sigma: Gaussian σ over the attention grid; vary it exponentially
                (1, 4, 16, …); any value > 9999 such as ``float("inf")`` gives uniform queries.
            seg_applied_layers: layer specs; default ``["mid"]`` (all mid-block self-attentions)
                for UNets and the middle block for transformers.
            seg_applied_layers_index: official index names (``"d4"``, ``"m0"``, ``"u30"``);
                when given, they take precedence over ``seg_applied_layers``.
            seg_guidance_start, seg_guidance_end: fraction of the denoising steps
                ``[start, end)`` during which SEG runs.
        """
        layers = seg_applied_layers_index or seg_applied_layers
        true_cfg = float(kwargs.get("true_cfg_scale", 1.0) or 1.0)
        has_negative = kwargs.get("negative_prompt") is not None or kwargs.get("negative_prompt_embeds") is not None
        with enable_seg(
            self,
            scale=seg_scale,
            blur_sigma=seg_blur_sigma,
            layers=layers,
            start=seg_guidance_start,
            end=seg_guidance_end,
            true_cfg_scale=true_cfg if true_cfg > 1 and has_negative else 1.0,
        ):
            return super().__call__(*args, **kwargs)
