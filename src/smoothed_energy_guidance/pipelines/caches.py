"""What diffusers' cache methods (``enable_cache``: First Block Cache, Pyramid Attention Broadcast, TaylorSeer,
MagCache, FasterCache) mean for SEG: they skip blocks, so SEG's layers may not run."""

from __future__ import annotations

from torch import nn


def cache_skip_cause(model: nn.Module) -> str | None:
    """Where a diffusers cache is enabled on ``model`` (``enable_cache``), the cause of blocks not running."""
    if not getattr(model, "is_cache_enabled", False):
        return None
    return (
        f"a cache is enabled on this {type(model).__name__} (diffusers' enable_cache), and it skipped the blocks "
        "holding them; SEG does not compose with diffusers' cache methods yet: call disable_cache() on it to use "
        "SEG, or pass seg_scale=0 to keep the cache"
    )
