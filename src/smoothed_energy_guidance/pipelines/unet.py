"""Turning SEG on for a pipeline whose denoiser is a diffusers UNet (SD / SDXL families)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..core.context import SegCall
from ..core.guidance import SegConfig
from ..core.layers import AttentionInventory, resolve_layers, unet_self_attention_inventory
from ..hooks import DenoiserPlan, ForkPlan, HostStep, OutputUnit, QueryTarget, SegHooks, append_cond_rows
from .caches import cache_enabled, perturbed_cache_context
from .compiled import unwrap_compiled
from .progress import LoopProgress
from .queries import query_source

UNDO_HINT = (
    "Enable SEG again after fusing QKV projections, loading LoRA or replacing the UNet "
    "(or undo the change, e.g. pipe.unfuse_qkv_projections())."
)


def unet_inventory(unet: nn.Module) -> AttentionInventory:
    """Self-attention (``attn1``) modules of a UNet by part; raises if there are none."""
    inventory = unet_self_attention_inventory(name for name, _ in unet.named_modules())
    if not inventory.names:
        raise ValueError(
            f"{type(unet).__name__} has no self-attention over an image grid (no '*.attn1' module in "
            "down_blocks / mid_block / up_blocks), so SEG cannot perturb it."
        )
    return inventory


def unet_downsample_levels(unet: nn.Module, name: str) -> int:
    """How many times the latent was halved before the block holding module ``name``."""
    part, *rest = name.split(".")
    down_steps = [block.downsamplers is not None for block in unet.down_blocks]
    if part == "mid_block":
        return sum(down_steps)
    index = int(rest[0])
    if part == "down_blocks":
        return sum(down_steps[:index])
    up_steps = [block.upsamplers is not None for block in unet.up_blocks]
    return sum(down_steps) - sum(up_steps[:index])


def unet_query_targets(unet: nn.Module, layer_names: Sequence[str]) -> list[QueryTarget]:
    """The query projection each selected attention's processor really calls: ``to_q`` or fused ``to_qkv``."""
    modules = dict(unet.named_modules())
    targets = []
    for name in layer_names:
        attention = modules[name]
        source = query_source(attention)
        targets.append(
            QueryTarget(
                name,
                attention,
                source.module,
                unet_downsample_levels(unet, name),
                token_dim=source.token_dim,
                source=source.attribute,
                parts=source.parts,
            )
        )
    return targets


def current_query_module(target: QueryTarget) -> nn.Module:
    """The module the target's processor takes its queries from now (to spot swaps after enabling)."""
    return query_source(target.attention, target.token_dim).module


def default_unet_layers(unet: nn.Module, inventory: AttentionInventory) -> tuple[str, ...]:
    """``["mid"]``; for a UNet whose mid block has no self-attention (SSD-1B and other distilled
    SDXL layouts), every self-attention at its lowest-resolution level, which sees the mid block's grid."""
    if inventory.parts.get("mid"):
        return ("mid",)
    levels = {name: unet_downsample_levels(unet, name) for name in inventory.names}
    deepest = max(levels.values())
    return tuple(name for name in inventory.names if levels[name] == deepest)


def unet_blocks_in_order(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The UNet's top-level blocks in the order its forward runs them."""
    blocks = [(f"down_blocks.{i}", block) for i, block in enumerate(unet.down_blocks)]
    if unet.mid_block is not None:
        blocks.append(("mid_block", unet.mid_block))
    blocks += [(f"up_blocks.{i}", block) for i, block in enumerate(unet.up_blocks)]
    return blocks


def unet_fork_plan(unet: nn.Module, layer_names: Sequence[str]) -> ForkPlan:
    """Fork at the first top-level block holding a SEG layer; everything before it runs once.

    ControlNet residuals are added inside the UNet's forward, outside any block: the down
    residuals of skip connections made after the fork and the mid residual (when the mid block
    is at or after the fork) get perturbed copies up front.
    """
    blocks = unet_blocks_in_order(unet)
    first = next(i for i, (name, _) in enumerate(blocks) if any(n.startswith(name + ".") for n in layer_names))
    fork_name = blocks[first][0]
    down_count = len(unet.down_blocks)
    if fork_name.startswith("down_blocks."):
        index = int(fork_name.split(".")[1])
        skips_before_fork = 1 + sum(
            len(block.resnets) + (block.downsamplers is not None) for block in unet.down_blocks[:index]
        )
    else:
        skips_before_fork = None  # every skip connection is made before the fork
    mid_after_fork = first <= down_count

    def widen_inputs(args: tuple, kwargs: dict, host_rows: int, cond_rows: slice) -> tuple[tuple, dict]:
        kwargs = dict(kwargs)
        down = kwargs.get("down_block_additional_residuals")
        if down is not None and skips_before_fork is not None:
            kwargs["down_block_additional_residuals"] = type(down)(
                residual if i < skips_before_fork else append_cond_rows(residual, host_rows, cond_rows)
                for i, residual in enumerate(down)
            )
        mid = kwargs.get("mid_block_additional_residual")
        if mid is not None and mid_after_fork:
            kwargs["mid_block_additional_residual"] = append_cond_rows(mid, host_rows, cond_rows)
        return args, kwargs

    return ForkPlan(tuple(block for _, block in blocks[first:]), widen_inputs)


def host_reader(pipe: Any, timestep_scale: float = 1.0):
    """Read, per denoiser call, what the host pipeline's own loop is doing: its public CFG properties,
    or (PixArt, AuraFlow, which have none) the call's own ``guidance_scale`` argument, CFG on above 1 as there.
    ``timestep_scale``: the pipeline hands its denoiser ``timestep / timestep_scale`` (AuraFlow: 1000)."""

    progress = LoopProgress(pipe, timestep_scale)

    def read(timestep: Any, call: SegCall) -> HostStep:
        if hasattr(type(pipe), "do_classifier_free_guidance"):
            cfg, guidance_scale = pipe.do_classifier_free_guidance, pipe.guidance_scale
        else:
            guidance_scale = call.arguments.get("guidance_scale")
            if not isinstance(guidance_scale, (int, float)):
                raise RuntimeError(
                    f"SEG could not read the guidance_scale of this {type(pipe).__name__} call; call the pipeline "
                    "through its SEG class or a handle from seg.enable_seg."
                )
            cfg = guidance_scale > 1.0
        return HostStep(
            cfg=bool(cfg),
            guidance_scale=float(guidance_scale),
            guidance_rescale=float(getattr(pipe, "guidance_rescale", 0.0) or 0.0),
            progress=lambda: progress(timestep),
        )

    return read


def refuse_split_inference(unet: nn.Module) -> None:
    """FreeNoise split inference runs each attention on slices of the frames (diffusers' ``SplitInferenceModule``),
    so no SEG layer sees the call's rows together: say so before any step runs."""
    if any(type(module).__name__ == "SplitInferenceModule" for module in unet.modules()):
        raise ValueError(
            "SEG cannot run with FreeNoise split inference (enable_free_noise_split_inference): it runs each "
            "attention on slices of the frames, so SEG's perturbed rows never reach a layer together. FreeNoise "
            "context windows alone work with SEG: build the pipeline again and call enable_free_noise(...) only."
        )


def enable_seg_unet(pipe: Any, config: SegConfig, share_prefix: bool = True) -> SegHooks:
    """Attach SEG to ``pipe.unet`` (SD 1.x / 2.x / SDXL families), acting on ``pipe``'s calls only."""
    return attach_seg_to_unet(pipe.unet, config, host_reader(pipe), share_prefix, scope=pipe)


def attach_seg_to_unet(
    unet: nn.Module,
    config: SegConfig,
    read_host: Callable[[Any, SegCall], HostStep],
    share_prefix: bool = True,
    scope: Any = None,
    output: OutputUnit | None = None,
) -> SegHooks:
    """Attach SEG's hooks to a UNet driven by any loop; ``read_host(timestep, call)`` describes each call.

    ``scope``: the pipeline or guider the hooks serve; ``output``: what the host gets back (see
    :class:`SegHooks`; by default a pipeline's combined prediction).
    """
    model = unwrap_compiled(unet)
    refuse_split_inference(model)
    inventory = unet_inventory(model)
    specs = config.layers if config.layers is not None else default_unet_layers(model, inventory)
    layer_names = resolve_layers(specs, inventory)
    fork = unet_fork_plan(model, layer_names) if share_prefix else None
    plan = DenoiserPlan(
        unet,
        tuple(unet_query_targets(model, layer_names)),
        UNDO_HINT,
        fork,
        query_source=current_query_module,
        cache_enabled=lambda: cache_enabled(model),
        cache_context=perturbed_cache_context(model),
    )
    return SegHooks(plan, config, read_host, scope=scope, output=output).attach()
