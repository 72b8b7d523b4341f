"""What diffusers' cache methods (``enable_cache``: First Block Cache, Pyramid Attention Broadcast, TaylorSeer,
MagCache, FasterCache) mean for SEG: its perturbed prediction has a cache state of its own, so it never reuses
what the cache kept for the cond or uncond rows, and leaves their cache state as it was.

First Block Cache, TaylorSeer and MagCache keep one state per named call (``cache_context``): SEG's perturbed call
runs in a context of its own. Pyramid Attention Broadcast and FasterCache keep one state per module for every
call, so around SEG's perturbed call their hooks hold a second state, kept from one perturbed call to the next
(:func:`own_context_free_states`); FasterCache there treats the call as guidance-distilled, since its rows are one
group of cond rows, not the ``[uncond, cond]`` halves its CFG shortcut splits."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

# diffusers' names of the cache hooks that keep one state per module, whatever cache_context is set
_CONTEXT_FREE_HOOKS = ("pyramid_attention_broadcast", "faster_cache_denoiser", "faster_cache_block")

# hook -> (the host's iteration when SEG's perturbed call last ended, the perturbed call's own state)
_perturbed_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cache_enabled(model: nn.Module) -> bool:
    """Whether a diffusers cache method is enabled on ``model`` now."""
    return bool(getattr(model, "is_cache_enabled", False))


def _context_free_cache_hooks(model: nn.Module) -> Iterator[Any]:
    for module in model.modules():
        # diffusers keeps a module's HookRegistry in this attribute (its own cache_context and cache reset find
        # them the same way); it offers no public getter
        registry = getattr(module, "_diffusers_hook", None)
        for name in _CONTEXT_FREE_HOOKS if registry is not None else ():
            hook = registry.get_hook(name)
            if hook is not None and hasattr(hook, "state"):
                yield hook


@contextlib.contextmanager
def own_context_free_states(model: nn.Module) -> Iterator[None]:
    """Within: every Pyramid Attention Broadcast / FasterCache hook on ``model`` uses SEG's perturbed state.

    That state is fresh when the host's own state went back (the cache was reset for a new run: the host's
    iteration count grows between two perturbed calls of one run, as every step runs a host call first)."""
    swapped = []
    for hook in list(_context_free_cache_hooks(model)):
        host_state = hook.state
        last_iteration, own = _perturbed_states.get(hook, (None, None))
        if own is None or host_state.iteration <= last_iteration:
            own = type(host_state)()
            if hasattr(own, "batch_size"):  # FasterCache's attention hook: compute first (it has no past outputs)
                own.iteration = hook.block_skip_range
        swapped.append((hook, host_state, getattr(hook, "is_guidance_distilled", None)))
        hook.state = own
        if hasattr(hook, "is_guidance_distilled"):
            hook.is_guidance_distilled = True  # one group of cond rows: no [uncond, cond] halves to split
    try:
        yield
    finally:
        for hook, host_state, distilled in swapped:
            _perturbed_states[hook] = (host_state.iteration, hook.state)
            hook.state = host_state
            if distilled is not None:
                hook.is_guidance_distilled = distilled


def perturbed_cache_context(model: nn.Module) -> Callable[[str], Any] | None:
    """The context manager maker SEG's perturbed call runs in while a cache is on: diffusers' ``cache_context``
    under SEG's name, and SEG's own state for the caches that ignore contexts; None for a model without caches."""
    if not callable(getattr(model, "cache_context", None)):
        return None

    @contextlib.contextmanager
    def perturbed(name: str) -> Iterator[None]:
        with model.cache_context(name), own_context_free_states(model):
            yield

    return perturbed
