"""Turning SEG on for diffusion transformers: Stable Diffusion 3 / 3.5 and Flux.1.

Only image-token queries are blurred, over the real token grid (latent size / patch size, or
Flux's position ids), after the per-head query norm where the model has one; text-token
queries, keys and values are untouched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..guidance import SegConfig
from ..hooks import DenoiserInputs, ForkPlan, HostStep, QueryTarget, SegHooks
from ..layers import BlockInventory, resolve_block_layers
from .progress import LoopProgress
from .queries import query_source
from .scope import call_owner_check

UNDO_HINT = "Enable SEG again after fusing QKV projections, loading LoRA or replacing the transformer."


@dataclass(frozen=True)
class TransformerFamily:
    """How one transformer family lays out blocks, queries and inputs."""

    name: str
    class_prefix: str  # the denoiser class name starts with this (e.g. "FluxTransformer")
    stacks: tuple[tuple[str, str], ...]  # (spec name, ModuleList attribute)
    query_token_dim: int  # token axis of norm_q's output
    read_inputs: Callable[[Any, tuple, dict], DenoiserInputs]
    unbatched: frozenset[str]
    image_tail_stacks: frozenset[str] = frozenset()  # stacks whose queries are [text, image]
    image_head_stacks: frozenset[str] = frozenset()  # stacks whose queries are [image, reference images]
    timestep_scale: float = 1.0  # the pipeline passes timestep / 1000 (Flux)
    # whose classic pipelines enable_seg drives (others: through the Modular Diffusers guider only)
    pipelines: bool = True
    attention_names: tuple[str, ...] = ("attn", "attn2")  # a block's attentions over image tokens
    # whether perturbed rows can join a call; False (per-sample input lists): a separate perturbed call
    forks: bool = True


def _sd3_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    latents = args[0] if args else kwargs["hidden_states"]
    patch = model.config.patch_size
    return DenoiserInputs(
        latents.shape[0],
        (latents.shape[-2] // patch, latents.shape[-1] // patch),
        kwargs.get("timestep"),
        # skip-layer guidance: a cond-only call that the pipeline subtracts from its cond prediction
        cond_reference=kwargs.get("skip_layers") is not None,
    )


def _flux_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    tokens = args[0] if args else kwargs["hidden_states"]
    ids = kwargs["img_ids"]
    ids = ids[0] if ids.ndim == 3 else ids
    grid = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
    if grid[0] * grid[1] != tokens.shape[1]:
        raise ValueError(
            f"Flux image ids describe a {grid[0]}x{grid[1]} grid but there are {tokens.shape[1]} image tokens; "
            "SEG supports one image grid per call (no reference-image tokens)."
        )
    return DenoiserInputs(tokens.shape[0], grid, kwargs.get("timestep"))


def _qwen_image_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    """Packed image tokens; ``img_shapes[sample][0]`` is the generated image's (frames, h, w) token grid.

    Reference images (Qwen-Image edit) follow the generated image's tokens and are left as they are.
    """
    tokens = args[0] if args else kwargs["hidden_states"]
    shapes = kwargs.get("img_shapes")
    if not shapes:
        raise ValueError("Qwen-Image transformer called without img_shapes; SEG needs the image token grid.")
    frames, height, width = shapes[0][0]
    if frames != 1:
        raise ValueError(f"Qwen-Image call with {frames} frames per image; SEG supports single images here.")
    return DenoiserInputs(tokens.shape[0], (int(height), int(width)), kwargs.get("timestep"))


SD3 = TransformerFamily(
    "Stable Diffusion 3", "SD3Transformer", (("blocks", "transformer_blocks"),), 2, _sd3_inputs, frozenset()
)
_FLUX_STACKS = (("double", "transformer_blocks"), ("single", "single_transformer_blocks"))
FLUX = TransformerFamily(
    "Flux.1",
    "FluxTransformer",
    _FLUX_STACKS,
    1,
    _flux_inputs,
    frozenset({"img_ids", "txt_ids", "image_rotary_emb"}),
    image_tail_stacks=frozenset({"single"}),
    timestep_scale=1000.0,
)
# Flux.2 lays out blocks, queries (norm_q on (B, N, heads, head_dim)) and ids as Flux.1 does.
FLUX2 = dataclasses.replace(FLUX, name="Flux.2", class_prefix="Flux2Transformer", pipelines=False)
QWEN_IMAGE = TransformerFamily(
    "Qwen-Image",
    "QwenImageTransformer",
    (("blocks", "transformer_blocks"),),
    1,  # norm_q sees (B, N, heads, head_dim)
    _qwen_image_inputs,
    frozenset({"image_rotary_emb"}),
    image_head_stacks=frozenset({"blocks"}),
    pipelines=False,
)


def _z_image_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    """Per-sample latents ``x[i]`` of shape (C, F, H, W), patchified by ``patch_size`` (default 2)."""
    samples = args[0] if args else kwargs["x"]
    channels, frames, height, width = samples[0].shape
    patch, frame_patch = kwargs.get("patch_size", 2), kwargs.get("f_patch_size", 1)
    if frames // frame_patch != 1:
        raise ValueError(f"Z-Image call with {frames} frames; SEG supports single images here.")
    return DenoiserInputs(len(samples), (height // patch, width // patch), kwargs.get("t"))


Z_IMAGE = TransformerFamily(
    "Z-Image",
    "ZImageTransformer",
    (("blocks", "layers"),),
    1,  # norm_q sees (B, N, heads, head_dim)
    _z_image_inputs,
    frozenset(),
    image_head_stacks=frozenset({"blocks"}),  # [image, padding, caption] in the unified sequence
    pipelines=False,
    attention_names=("attention",),
    forks=False,
)
#: Every transformer family SEG knows, found by the denoiser's class name.
TRANSFORMER_FAMILIES = (SD3, FLUX, FLUX2, QWEN_IMAGE, Z_IMAGE)


def transformer_family(model: nn.Module) -> TransformerFamily | None:
    kind = type(model).__name__
    return next((family for family in TRANSFORMER_FAMILIES if kind.startswith(family.class_prefix)), None)


def transformer_inventory(model: nn.Module, family: TransformerFamily) -> BlockInventory:
    stacks = {}
    for spec_name, attribute in family.stacks:
        blocks = []
        for index, block in enumerate(getattr(model, attribute)):
            prefix = f"{attribute}.{index}"
            names = tuple(f"{prefix}.{a}" for a in family.attention_names if getattr(block, a, None) is not None)
            blocks.append((prefix, names))
        stacks[spec_name] = tuple(blocks)
    return BlockInventory(stacks)


def transformer_query_targets(model: nn.Module, names: Sequence[str], family: TransformerFamily) -> list[QueryTarget]:
    """Hook the queries where the processor really takes them: after ``norm_q`` where it applies one,
    else the output of ``to_q`` or the first third of a fused ``to_qkv``."""
    modules = dict(model.named_modules())
    attribute_to_stack = {attribute: spec for spec, attribute in family.stacks}
    targets = []
    for name in names:
        attention = modules[name]
        source = query_source(attention, family.query_token_dim)
        stack = attribute_to_stack[name.split(".")[0]]
        targets.append(
            QueryTarget(
                name,
                attention,
                source.module,
                0,
                token_dim=source.token_dim,
                source=source.attribute,
                image_tail=stack in family.image_tail_stacks,
                image_head=stack in family.image_head_stacks,
                parts=source.parts,
            )
        )
    return targets


def transformer_fork_plan(model: nn.Module, names: Sequence[str], family: TransformerFamily) -> ForkPlan:
    """Fork at the first block holding a SEG layer; later blocks and the output norm get widened inputs."""
    ordered = [
        (f"{attribute}.{i}", block)
        for _, attribute in family.stacks
        for i, block in enumerate(getattr(model, attribute))
    ]
    first = next(i for i, (prefix, _) in enumerate(ordered) if any(n.startswith(prefix + ".") for n in names))
    blocks = tuple(block for _, block in ordered[first:]) + (model.norm_out,)
    return ForkPlan(blocks, lambda args, kwargs, rows, cond: (args, kwargs))


class _TrueCfgContext:
    """Reads which denoising call the pipeline is making ("cond" / "uncond") from diffusers' cache context."""

    def __init__(self, model: nn.Module) -> None:
        from diffusers.hooks import HookRegistry, ModelHook
        from diffusers.hooks.hooks import StateManager

        class ContextReader(ModelHook):
            _is_stateful = True

            def __init__(self) -> None:
                super().__init__()
                self.state = StateManager(dict)

            def reset_state(self, module: nn.Module) -> nn.Module:
                return module

        self.registry = HookRegistry.check_if_exists_or_initialize(model)
        self.hook = ContextReader()
        self.name = f"smoothed-energy-guidance-context-{id(self)}"
        self.registry.register_hook(self.hook, self.name)

    def current(self) -> str | None:
        context = self.hook.state._context
        return None if context is None else context.name

    def remove(self) -> None:
        if self.name in self.registry.hooks:
            self.registry.remove_hook(self.name, recurse=False)


def transformer_host_reader(pipe: Any, family: TransformerFamily, true_cfg_scale: float, context: Any):
    """SD3 batches CFG like the UNet pipelines; Flux runs true CFG as a second, "uncond" call."""
    from .unet import host_reader

    if family is not FLUX:
        return host_reader(pipe)
    loop_progress = LoopProgress(pipe)

    def read(timestep: Any) -> HostStep:
        progress = loop_progress(timestep * family.timestep_scale if timestep is not None else None)
        # SEG joins the cond call only, with s/g, so that
        # neg + g·(pos' − neg) = neg + g·(pos − neg) + s·(pos − perturbed)
        uncond = context is not None and context.current() == "uncond"
        return HostStep(False, 1.0, 0.0, progress, seg_allowed=not uncond, seg_scale_factor=1.0 / true_cfg_scale)

    return read


class TransformerSegHooks(SegHooks):
    """SEG hooks plus, for Flux, the reader of diffusers' cond / uncond call context."""

    context: _TrueCfgContext | None = None

    def remove(self) -> None:
        super().remove()
        if self.context is not None:
            self.context.remove()
            self.context = None


def enable_seg_transformer(
    pipe: Any, config: SegConfig, share_prefix: bool = True, true_cfg_scale: float = 1.0
) -> SegHooks:
    """Attach SEG to ``pipe.transformer`` (SD3 / SD3.5 / Flux.1), acting on ``pipe``'s calls only."""
    model = getattr(pipe.transformer, "_orig_mod", pipe.transformer)
    family = transformer_family(model)
    if true_cfg_scale <= 0 or not math.isfinite(true_cfg_scale):
        raise ValueError(f"true_cfg_scale must be a positive number, got {true_cfg_scale!r}.")
    context = _TrueCfgContext(model) if family is FLUX and config.enabled else None
    try:
        return attach_seg_to_transformer(
            pipe.transformer,
            config,
            transformer_host_reader(pipe, family, true_cfg_scale, context),
            share_prefix,
            owns_call=call_owner_check(pipe, pipe.transformer),
            scope=pipe,
            context=context,
        )
    except BaseException:
        if context is not None:
            context.remove()
        raise


def attach_seg_to_transformer(
    transformer: nn.Module,
    config: SegConfig,
    read_host: Callable[[Any], HostStep],
    share_prefix: bool = True,
    owns_call: Callable[[], bool] | None = None,
    scope: Any = None,
    take_perturbed: Callable[[Any], None] | None = None,
    context: _TrueCfgContext | None = None,
    one_call: bool = False,
) -> SegHooks:
    """Attach SEG's hooks to a transformer driven by any loop; ``read_host(timestep)`` describes each call.

    Families that cannot take extra rows inside a call (``forks=False``) get hooks that perturb the
    whole call in place: the caller makes a separate perturbed call.
    """
    model = getattr(transformer, "_orig_mod", transformer)
    family = transformer_family(model)
    inventory = transformer_inventory(model, family)
    specs = config.layers if config.layers is not None else inventory.default_layers()
    names = resolve_block_layers(specs, inventory)
    hooks = TransformerSegHooks(
        transformer,
        transformer_query_targets(model, names, family),
        config,
        read_host,
        UNDO_HINT,
        transformer_fork_plan(model, names, family) if share_prefix and family.forks else None,
        read_inputs=lambda args, kwargs: family.read_inputs(model, args, kwargs),
        unbatched=family.unbatched,
        owns_call=owns_call,
        scope=scope,
        query_source=lambda target: query_source(target.attention, family.query_token_dim).module,
        take_perturbed=take_perturbed,
        one_call=one_call,
        in_place=not family.forks,
    )
    hooks.context = context
    try:
        return hooks.attach()
    except BaseException:
        hooks.remove()
        raise
