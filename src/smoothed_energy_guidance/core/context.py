"""The explicit call context: which SEG call, if any, the current thread or task is serving.

Only an entry point knows that a denoiser call is a SEG call: a SEG pipeline's ``__call__``, a pipeline
armed by ``enable_seg``, the guider's ``prepare_models``. It sets a :class:`SegCall` for the duration of its
call: ``open_call`` … ``close_call`` in ``try/finally`` (``SegHooks.serving``), or in the two host callbacks
that start and end it (the guider's ``prepare_models`` / ``cleanup_models``). Hooks act only when the
context names them; everything else — other threads, plain functions calling the denoiser, sibling
pipelines sharing it — runs untouched.

A ``contextvars.ContextVar`` is private to its thread and asyncio task, so concurrent calls never mix.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_CURRENT: contextvars.ContextVar[SegCall | None] = contextvars.ContextVar("smoothed_energy_guidance_call", default=None)


@dataclass(frozen=True)
class SegCall:
    """What an entry point tells the hooks about the call it started.

    Args:
        hooks: the SEG hooks that may act on this call (every other handle's hooks stay inert).
        arguments: the host call's own arguments with their defaults filled in (read-only), for hosts
            that keep their CFG settings nowhere else (PixArt).
        perturb_whole_call: the denoiser call is itself the perturbed prediction (every row blurred);
            the guider's separate perturbed call for denoisers that cannot take extra rows.
    """

    hooks: object
    arguments: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    perturb_whole_call: bool = False
    # the hooks' scratch for this call (the rows in flight, the layers reached): it belongs to the call,
    # so concurrent calls never share it
    state: Any = field(default=None, compare=False)


def current_call() -> SegCall | None:
    """The SEG call this thread / task is serving now, or None."""
    return _CURRENT.get()


def open_call(call: SegCall) -> contextvars.Token:
    """Start serving ``call`` until :func:`close_call` (for hosts whose call starts and ends in two callbacks)."""
    return _CURRENT.set(call)


def close_call(token: contextvars.Token | None) -> None:
    """Stop serving the call opened with ``token``; a token already closed, or from another context, is a no-op
    apart from clearing the call (the host's call is over either way)."""
    if token is None:
        return
    try:
        _CURRENT.reset(token)
    except (RuntimeError, ValueError):  # used already, or opened in another thread / task
        _CURRENT.set(None)


def forget_call(hooks: object) -> None:
    """Stop serving the call of ``hooks`` in this thread / task, if it is the one served now (for a call that was
    interrupted before its host could close it)."""
    call = _CURRENT.get()
    if call is not None and call.hooks is hooks:
        _CURRENT.set(None)
