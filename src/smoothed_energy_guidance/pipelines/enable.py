"""One way to turn SEG on for any supported pipeline: :func:`enable_seg` and :func:`from_pipe`."""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from torch import nn

from ..core.guidance import SegConfig
from ..families import supported_pipelines_text
from ..hooks import SegHooks
from .compiled import unwrap_compiled
from .transformer import enable_seg_transformer, transformer_family
from .unet import enable_seg_unet

SUPPORTED_FAMILIES = supported_pipelines_text()


def enable_seg(
    pipe: Any,
    scale: float = 3.0,
    blur_sigma: float = float("inf"),
    layers: str | Sequence[str] | None = None,
    start: float = 0.0,
    end: float = 1.0,
    share_prefix: bool = True,
    true_cfg_scale: float = 1.0,
    temporal_sigma: float = 0.0,
) -> SegHooks:
    """Make the pipeline's plain ``__call__`` run SEG until the returned handle is removed.

    Works on any supported diffusers pipeline (text2img, img2img, inpaint, ControlNet where the
    family has them). While the handle lives, the pipeline object's class is a generated subclass of
    its own class (same name, same signature) whose ``__call__`` tells the denoiser's hooks that the
    call is a SEG call and then runs the pipeline's own ``__call__``; removing the handle restores the
    class and removes every hook (``torch.nn.utils.parametrize`` changes modules the same way). The
    handle is a context manager and has an idempotent ``.remove()``.

    Args:
        pipe: the diffusers pipeline.
        scale: SEG guidance scale (0 adds no work at all).
        blur_sigma: Gaussian σ; anything above 9999, e.g. ``float("inf")``, gives uniform queries.
        layers: layer specs; None is the family default: ``["mid"]`` for UNets (every self-attention
            of the lowest-resolution level where the mid block has none), the middle transformer
            block for transformers (see the README for the grammar). An empty list is an error.
        start, end: SEG runs on the steps whose index / number of steps is in ``[start, end)``,
            counting the steps of the loop the pipeline really runs (see :mod:`.progress`).

    SEG acts only on calls of ``pipe.__call__``: other pipelines sharing its UNet / transformer (e.g.
    built with ``from_pipe``), other threads and plain calls of the denoiser run untouched. Enabling
    SEG again on the same pipeline while a handle is active is refused; remove that handle first.
        share_prefix: run the denoiser up to the first SEG block once for cond and perturbed rows
            (exact, and cheaper); False repeats the whole pass, as the official pipeline does.
        true_cfg_scale: families that run CFG as a second call (Flux, Chroma, Qwen-Image): the CFG scale
            the pipeline call uses (``true_cfg_scale`` with a negative prompt; Chroma's
            ``guidance_scale``), so that SEG adds exactly ``s·(cond − perturbed)`` on top of that CFG.
        temporal_sigma: video models: σ along time over the latent frames (0: none; > 9999: the mean
            over frames); ``blur_sigma`` is then the spatial σ within each frame.
    """
    config = SegConfig(
        scale=scale, blur_sigma=blur_sigma, layers=layers, start=start, end=end, temporal_sigma=temporal_sigma
    )
    hooks = attach_seg(pipe, config, share_prefix, true_cfg_scale)
    if hooks.attached:
        arm_pipeline(pipe, hooks)
    return hooks


def attach_seg(pipe: Any, config: SegConfig, share_prefix: bool = True, true_cfg_scale: float = 1.0) -> SegHooks:
    """SEG's hooks on the pipeline's denoiser, inert until an entry point serves a call with them."""
    if not config.enabled:
        # s == 0 is the plain pipeline in every respect: nothing is resolved, checked or hooked.
        return SegHooks(None, config, read_host=None)
    refuse_attention_guidance_pipelines(pipe)
    unet = getattr(pipe, "unet", None)
    if isinstance(unet, nn.Module) and _is_conditional_unet(unwrap_compiled(unet)):
        return enable_seg_unet(pipe, config, share_prefix)
    transformer = getattr(pipe, "transformer", None)
    family = transformer_family(unwrap_compiled(transformer)) if transformer is not None else None
    if family is not None and family.has_pipelines:
        return enable_seg_transformer(pipe, config, share_prefix, true_cfg_scale)
    if family is not None:
        raise ValueError(
            f"{type(pipe).__name__}: SEG supports {family.name} through Modular Diffusers' guider "
            "(seg.SmoothedEnergyGuidance), not through this pipeline class yet."
        )
    raise ValueError(f"{type(pipe).__name__} is not supported: SEG supports {SUPPORTED_FAMILIES} pipelines.")


# The handle serving each armed pipeline object.
_ARMED: weakref.WeakKeyDictionary[Any, SegHooks] = weakref.WeakKeyDictionary()


def host_arguments(host_call: Callable, pipe: Any, args: tuple, kwargs: dict) -> Mapping[str, Any]:
    """The host call's arguments by name, defaults filled in (empty when they do not bind: the host
    then raises its own error)."""
    try:
        bound = inspect.signature(host_call).bind(pipe, *args, **kwargs)
    except TypeError:
        return MappingProxyType({})
    bound.apply_defaults()
    return MappingProxyType({name: value for name, value in bound.arguments.items() if name != "self"})


@functools.cache
def _armed_class(cls: type) -> type:
    """``cls`` whose ``__call__`` serves the call with the pipeline's handle, then runs ``cls.__call__``."""
    host_call = cls.__call__

    @functools.wraps(host_call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        hooks = _ARMED.get(self)
        if hooks is None or not hooks.attached:
            return host_call(self, *args, **kwargs)
        with hooks.serving(host_arguments(host_call, self, args, kwargs)):
            return host_call(self, *args, **kwargs)

    namespace = {"__call__": __call__, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (cls,), {**namespace, "__doc__": cls.__doc__})


def arm_pipeline(pipe: Any, hooks: SegHooks) -> None:
    """Let ``pipe.__call__`` serve its calls with ``hooks`` until they are removed (then its class comes back)."""
    original = type(pipe)
    armed = _armed_class(original)
    pipe.__class__ = armed
    _ARMED[pipe] = hooks

    def disarm() -> None:
        if _ARMED.get(pipe) is hooks:
            del _ARMED[pipe]
        if type(pipe) is armed:
            pipe.__class__ = original

    hooks.call_on_remove(disarm)


def refuse_attention_guidance_pipelines(pipe: Any) -> None:
    """diffusers' PAG pipelines re-split the denoiser batch inside attention, so SEG rows cannot join it."""
    if hasattr(pipe, "set_pag_applied_layers"):
        plain = type(pipe).__name__.replace("PAG", "")
        raise ValueError(
            f"{type(pipe).__name__} runs Perturbed-Attention Guidance, whose attention processors split the batch "
            "into fixed [uncond, cond, perturbed] thirds, so SEG cannot add its rows to it. Use SEG on the plain "
            f"pipeline instead (e.g. seg.from_pipe({plain}.from_pipe(pipe))), or set seg_scale=0."
        )


def _is_conditional_unet(model: nn.Module) -> bool:
    """A diffusers UNet2DConditionModel (or subclass): SD / SDXL and their fine-tunes; or AnimateDiff's
    UNetMotionModel, the same UNet with motion modules, frames folded into its batch."""
    return any(cls.__name__ in ("UNet2DConditionModel", "UNetMotionModel") for cls in type(model).__mro__)
