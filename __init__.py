"""ComfyUI's entry point for a clone of this repository in ``ComfyUI/custom_nodes/``.

ComfyUI imports this file as the node pack and reads ``NODE_CLASS_MAPPINGS``, ``NODE_DISPLAY_NAME_MAPPINGS``
and ``comfy_entrypoint`` from it. They come from the clone's own ``src/`` (only torch is needed on this path;
diffusers is never imported), so a clone works without ``pip install``; they load when ComfyUI asks for them.
"""

import os
import sys

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SOURCE not in sys.path:
    sys.path.insert(0, _SOURCE)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "comfy_entrypoint"]


def __getattr__(name):
    if name in __all__:
        from smoothed_energy_guidance.comfyui import nodes

        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
