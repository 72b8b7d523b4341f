"""The ``seg_*`` call arguments, added to any diffusers pipeline class."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

from ..core.guidance import SegConfig
from ..families import family_of_seg_class
from .enable import attach_seg, host_arguments

SEG_CALL_DOC = """
SEG arguments (Smoothed Energy Guidance, added by smoothed-energy-guidance):
    seg_scale (`float`, defaults to 3.0): SEG guidance scale; about 3 works well. 0 is the plain
        pipeline in every respect (nothing is resolved, checked or run). Negative values are refused.
    seg_blur_sigma (`float`, defaults to inf): Gaussian σ over the attention grid; vary it exponentially
        (1, 4, 16, …); any value > 9999 such as ``float("inf")`` gives uniform queries.
    seg_applied_layers (`list[str]`, *optional*): layer specs; default ``["mid"]`` (all mid-block
        self-attentions) for UNets (the lowest-resolution level where the mid block has no attention)
        and the middle block for transformers. An empty list is an error.
    seg_applied_layers_index (`list[str]`, *optional*): official index names (``"d4"``, ``"m0"``,
        ``"u30"``); when given, they take precedence over ``seg_applied_layers``.
    seg_temporal_sigma (`float`, defaults to 0.0): video models only: Gaussian σ along time, in latent
        frames (0: each frame blurred on its own; any value > 9999: the mean over frames).
    seg_guidance_start, seg_guidance_end (`float`, defaults to 0.0 and 1.0): SEG runs on the
        denoising steps whose index / number of steps lies in ``[start, end)``, counting the steps
        of the loop the pipeline really runs (img2img and inpaint: the steps left after ``strength``;
        Heun, KDPM2 and other multi-call schedulers: each step's calls together).
"""

_SEG_PARAMETERS = [
    inspect.Parameter("seg_scale", inspect.Parameter.KEYWORD_ONLY, default=3.0, annotation="float"),
    inspect.Parameter("seg_blur_sigma", inspect.Parameter.KEYWORD_ONLY, default=float("inf"), annotation="float"),
    inspect.Parameter(
        "seg_applied_layers", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Sequence[str] | None"
    ),
    inspect.Parameter(
        "seg_applied_layers_index", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Sequence[str] | None"
    ),
    inspect.Parameter("seg_guidance_start", inspect.Parameter.KEYWORD_ONLY, default=0.0, annotation="float"),
    inspect.Parameter("seg_guidance_end", inspect.Parameter.KEYWORD_ONLY, default=1.0, annotation="float"),
    inspect.Parameter("seg_temporal_sigma", inspect.Parameter.KEYWORD_ONLY, default=0.0, annotation="float"),
]
SEG_PARAMETER_NAMES = tuple(parameter.name for parameter in _SEG_PARAMETERS)


def signature_with_seg(host_call: Any) -> inspect.Signature:
    """The host ``__call__`` signature with the ``seg_*`` keyword-only parameters before any ``**kwargs``."""
    host = inspect.signature(host_call)
    params = [p for p in host.parameters.values() if p.name not in SEG_PARAMETER_NAMES]
    var_keyword = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    plain = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return host.replace(parameters=[*plain, *_SEG_PARAMETERS, *var_keyword])


class SegCallMixin:
    """Adds the official SEG call arguments to a diffusers pipeline's ``__call__``.

    Every argument the host pipeline accepts is passed through unchanged; the host's loop,
    schedulers, callbacks, LoRA, IP-Adapter and offloading stay diffusers' own. Each subclass's
    ``__call__`` shows the host's own signature and docstring, followed by the ``seg_*`` ones.
    """

    # Pipelines that run CFG as separate cond / uncond calls: the argument holding its scale; each SEG class
    # takes it and its family (whose record says which negative inputs make that CFG run) from the table.
    true_cfg_argument = "true_cfg_scale"
    family = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:
            return  # a subclass that writes its own __call__ keeps it
        family = family_of_seg_class(cls.__name__)
        if family is not None:
            cls.true_cfg_argument, cls.family = family.cfg_argument, family
        host = next(
            base
            for base in cls.__mro__[1:]
            if (base is not SegCallMixin and "__call__" in vars(base)) or base is object
        )
        if host is object:
            return  # diffusers' placeholder for a pipeline whose backend (e.g. sentencepiece) is not installed
        host_call = super().__call__

        @functools.wraps(host_call)
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return SegCallMixin._call_with_seg(self, *args, **kwargs)

        del __call__.__wrapped__  # the signature is ours, not the host's
        __call__.__signature__ = signature_with_seg(host_call)
        __call__.__doc__ = (inspect.getdoc(host_call) or "") + "\n" + SEG_CALL_DOC
        __call__.__qualname__ = f"{cls.__qualname__}.__call__"
        cls.__call__ = __call__
        cls._host_call = host_call
        cls._host_defaults = {
            name: parameter.default for name, parameter in inspect.signature(host_call).parameters.items()
        }

    def _call_with_seg(
        self,
        *args: Any,
        seg_scale: float = 3.0,
        seg_blur_sigma: float = float("inf"),
        seg_applied_layers: Sequence[str] | None = None,
        seg_applied_layers_index: Sequence[str] | None = None,
        seg_guidance_start: float = 0.0,
        seg_guidance_end: float = 1.0,
        seg_temporal_sigma: float = 0.0,
        **kwargs: Any,
    ) -> Any:
        if kwargs.get("use_dynamic_cfg") and seg_scale != 0:
            raise ValueError(
                "use_dynamic_cfg changes the CFG scale after each denoiser call, so SEG cannot combine with it "
                "exactly; pass use_dynamic_cfg=False (or seg_scale=0)."
            )
        layers = seg_applied_layers_index if seg_applied_layers_index is not None else seg_applied_layers
        true_cfg = self._true_cfg_scale(kwargs)
        config = SegConfig(
            scale=seg_scale,
            blur_sigma=seg_blur_sigma,
            temporal_sigma=seg_temporal_sigma,
            layers=layers,
            start=seg_guidance_start,
            end=seg_guidance_end,
        )
        hooks = attach_seg(self, config, true_cfg_scale=true_cfg)
        if not hooks.attached:  # seg_scale == 0: the plain pipeline (an enable_seg handle may still serve it)
            return super().__call__(*args, **kwargs)
        # This call is the entry point: its hooks act on the denoiser calls made inside it, and no others.
        with hooks, hooks.serving(host_arguments(type(self)._host_call, self, args, kwargs)):
            return super().__call__(*args, **kwargs)

    def _true_cfg_scale(self, kwargs: dict[str, Any]) -> float:
        """The separate-call CFG scale this call will use, 1.0 when it runs no such CFG."""
        name, defaults = self.true_cfg_argument, getattr(type(self), "_host_defaults", {})
        if name not in defaults:
            return 1.0
        value = kwargs.get(name, defaults[name])
        scale = float(value) if isinstance(value, (int, float)) else 1.0
        # the pipeline's own rule for running its CFG call (e.g. Flux and HunyuanVideo need negative embeddings
        # together with their pooled ones; a lone negative_prompt_embeds runs no CFG there)
        runs_cfg = self.family is None or self.family.cfg_negative_given(kwargs)
        return scale if scale > 1 and runs_cfg else 1.0
