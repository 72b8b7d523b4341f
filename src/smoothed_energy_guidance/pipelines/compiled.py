"""The module a ``torch.compile`` wrapper runs, where SEG's hooks and layer names belong."""

from __future__ import annotations

from typing import Any


def unwrap_compiled(module: Any) -> Any:
    """``module`` itself, or the module inside ``torch.compile(module)``'s wrapper (which holds no submodules of
    its own; hooks on the inner module are seen by the compiled call).

    torch.compile's wrapper keeps the module it wraps as ``_orig_mod``: the one way back to it that torch offers
    (diffusers' ``unwrap_module`` reads the same attribute). It says which module runs, never what SEG serves.
    """
    return getattr(module, "_orig_mod", module)
