"""What diffusers' cache methods (``enable_cache``: First Block Cache, Pyramid Attention Broadcast, TaylorSeer,
MagCache, FasterCache) mean for SEG. They skip or reuse blocks per named call (``cache_context``), so with one on
SEG's perturbed prediction is a call of its own in a context of its own: it never reuses what the cache kept
for the cond or uncond call, and leaves their cache state as it was."""

from __future__ import annotations

from torch import nn


def cache_skip_cause(model: nn.Module) -> str | None:
    """Where a diffusers cache is enabled on ``model`` (``enable_cache``), the cause of blocks not running: only a
    guider's separate perturbed batch can meet it (pipeline calls give the perturbed call its own context)."""
    if not getattr(model, "is_cache_enabled", False):
        return None
    return (
        f"a cache is enabled on this {type(model).__name__} (diffusers' enable_cache), and it skipped the blocks "
        "holding them in a perturbed batch the guider asked for (that batch runs in the pipeline's cache context): "
        "call disable_cache() on it to use SEG there, or set the SEG scale to 0 to keep the cache"
    )


def cache_enabled(model: nn.Module) -> bool:
    """Whether a diffusers cache method is enabled on ``model`` now."""
    return bool(getattr(model, "is_cache_enabled", False))
