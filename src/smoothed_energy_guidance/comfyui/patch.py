"""SEG as a ComfyUI model patch: a post-CFG function that adds ``scale·(cond − perturbed)`` to ComfyUI's result.

The perturbed prediction is a cond-only pass of the same model (ComfyUI's own ``calc_cond_batch``, so area
conds, ControlNets and other patches apply as for the cond pass) during which forward hooks blur the queries
of the selected self-attentions with the core's blur. The hooks exist only for that pass (removed in
``finally``), so no other call of the shared model ever sees them. ComfyUI works on denoised (x0)
predictions; SEG's combination has weights that sum to 1, so it is the same there as in ε space.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.guidance import SegConfig
from ..core.tokens import TokenLayout, blur_image_queries
from .models import ComfyFamily, QueryLayer, comfy_family, image_grid
from .prefix import PrefixReplay


@dataclass
class _PassState:
    """What the hooks need to know about the perturbed pass in flight."""

    latent_size: tuple[int, ...]  # the latent's axes after the channels: (h, w) or (t, h, w)
    text_tokens: int | None = None
    reached: set[str] = field(default_factory=set)


def _blur_hook(layer: QueryLayer, config: SegConfig, state: _PassState, patch: Any):
    def blur(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        tokens = output.shape[-2] if layer.token_dim == 2 else output.shape[1]
        grid = image_grid(state.latent_size, tokens, patch, layer.name)
        state.reached.add(layer.name)
        return blur_image_queries(
            output,
            grid,
            config.blur_sigma,
            config.temporal_sigma,
            layout=layer.tokens,
            token_dim=layer.token_dim,
            text_tokens=state.text_tokens if layer.tokens is TokenLayout.TEXT_FIRST else None,
            layer=layer.name,
        )

    return blur


def _record_text_tokens(state: _PassState):
    """Pre-hook on the diffusion model: how many text tokens open the joint sequence (ComfyUI's ``context``)."""

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        context = kwargs.get("context", args[2] if len(args) > 2 else None)
        state.text_tokens = None if context is None else int(context.shape[1])

    return record


class SegPatch:
    """The post-CFG function the node installs: SEG on the steps inside its sigma window.

    ``config.layers``: layer specs in the project's grammar (None: the family's default); ``sigma_start`` /
    ``sigma_end``: SEG runs while ``sigma_end <= sigma <= sigma_start`` (ComfyUI's window convention).
    """

    def __init__(self, config: SegConfig, sigma_start: float = float("inf"), sigma_end: float = 0.0) -> None:
        self.config = config
        self.sigma_start = sigma_start
        self.sigma_end = sigma_end
        # replays the layers before the first SEG layer in the perturbed pass, where the node installed it
        self.prefix: PrefixReplay | None = None
        # the last model's family and layers, so that each step does not search the model again
        self._resolved: tuple[weakref.ref, ComfyFamily, tuple[QueryLayer, ...]] | None = None
        self._model_cond: torch.Tensor | None = None  # this step's cond prediction as the model made it

    def __deepcopy__(self, memo: dict) -> SegPatch:
        # ComfyUI deep-copies model_options on every ModelPatcher.clone() (any node after this one): a copy
        # would hold copies of the model's query layers and of the prefix replay the clone's wrappers still
        # talk to, so the patch is shared, as those are
        return self

    def resolve(self, diffusion_model: nn.Module, model_name: str) -> tuple[ComfyFamily, tuple[QueryLayer, ...]]:
        """The model's family and the layers SEG blurs (raises on an unknown family or layer spec)."""
        if self._resolved is not None and self._resolved[0]() is diffusion_model:
            return self._resolved[1], self._resolved[2]
        family = comfy_family(diffusion_model, model_name)
        layers = family.layers(diffusion_model, self.config.layers)
        self._resolved = (weakref.ref(diffusion_model), family, layers)
        return family, layers

    def active_at(self, sigma: torch.Tensor) -> bool:
        value = float(sigma.flatten()[0])
        return self.sigma_end <= value <= self.sigma_start

    @contextlib.contextmanager
    def perturbing(self, model: Any, latent_shape: torch.Size) -> Iterator[None]:
        """Blur the selected queries of every row of the denoiser calls made inside the block."""
        diffusion_model = model.diffusion_model
        family, layers = self.resolve(diffusion_model, type(getattr(model, "model_config", model)).__name__)
        state = _PassState(latent_size=tuple(latent_shape[2:]))
        patch = family.patch_size(diffusion_model) if family.patch_size is not None else None
        handles = []
        if self.prefix is not None:
            self.prefix.perturbing = True
        try:
            if family.text_first:
                handles.append(diffusion_model.register_forward_pre_hook(_record_text_tokens(state), with_kwargs=True))
            for layer in layers:
                handles.append(layer.module.register_forward_hook(_blur_hook(layer, self.config, state, patch)))
            yield
        finally:
            for handle in handles:
                handle.remove()
            if self.prefix is not None:
                self.prefix.perturbing = False
                self.prefix.clear()
        missed = [layer.name for layer in layers if layer.name not in state.reached]
        if missed:
            raise RuntimeError(
                f"SEG's perturbed pass never reached {len(missed)} of its {len(layers)} layers (first: {missed[0]}): "
                "another patch replaced those blocks, so their queries could not be blurred."
            )

    def keep_model_cond(self, args: dict[str, Any]) -> list[torch.Tensor | None]:
        """ComfyUI's pre-CFG hook, installed ahead of every other: keep the step's cond prediction as the model
        made it, before a pre-CFG patch (APG) rewrites it; returns the predictions unchanged."""
        self._model_cond = args["conds_out"][0]
        return args["conds_out"]

    def __call__(self, args: dict[str, Any]) -> torch.Tensor:
        """ComfyUI's post-CFG hook: ``denoised + scale·(cond − perturbed)``, with the model's own cond
        prediction (the same as ``cond_denoised`` unless a pre-CFG patch rewrote that)."""
        import comfy.samplers  # the host: only present inside ComfyUI

        model_cond, self._model_cond = self._model_cond, None
        denoised, sigma = args["denoised"], args["sigma"]
        if not self.config.enabled or not self.active_at(sigma):
            return denoised
        cond = args["cond_denoised"]
        if model_cond is not None and model_cond.shape == cond.shape:
            cond = model_cond
        x, model = args["input"], args["model"]
        with self.perturbing(model, x.shape):
            (perturbed,) = comfy.samplers.calc_cond_batch(model, [args["cond"]], x, sigma, args["model_options"])
        return denoised + self.config.scale * (cond - perturbed)
