"""Turning SEG on for diffusion transformers, as each family's record in the family table describes them.

Only image-token queries are blurred, over the real token grid (latent size / patch size, or the
model's position ids), after the per-head query norm where the model has one; text-token and
reference-image-token queries, keys and values are untouched.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..core.context import SegCall
from ..core.guidance import SegConfig
from ..core.layers import BlockInventory, resolve_block_layers
from ..families import Family, family_of_denoiser
from ..hooks import DenoiserPlan, ForkPlan, HostStep, OutputUnit, QueryTarget, ReplayPlan, SegHooks
from .caches import cache_enabled, perturbed_cache_context
from .compiled import unwrap_compiled
from .progress import LoopProgress
from .queries import query_source

UNDO_HINT = "Enable SEG again after fusing QKV projections, loading LoRA or replacing the transformer."


def transformer_family(model: nn.Module) -> Family | None:
    """The transformer family of ``model`` from the family table; None for any other model."""
    family = family_of_denoiser(model)
    return family if family is not None and family.architecture == "transformer" else None


def _block_list(model: nn.Module, path: str) -> Sequence[nn.Module]:
    """The blocks at a dotted attribute path; empty where the model lacks it (e.g. no reference-image mode)."""
    try:
        return functools.reduce(getattr, path.split("."), model)
    except AttributeError:
        return ()


def transformer_inventory(model: nn.Module, family: Family) -> BlockInventory:
    stacks = {}
    for stack in family.stacks:
        spec_name, attribute = stack.spec, stack.path
        blocks = []
        for index, block in enumerate(_block_list(model, attribute)):
            prefix = f"{attribute}.{index}"
            names = tuple(f"{prefix}.{a}" for a in family.attention_names if getattr(block, a, None) is not None)
            blocks.append((prefix, names))
        stacks[spec_name] = tuple(blocks)
    return BlockInventory(stacks)


def _stack_of(name: str, family: Family) -> str:
    return next(stack.spec for stack in family.stacks if name.startswith(stack.path + "."))


def transformer_query_targets(model: nn.Module, names: Sequence[str], family: Family) -> list[QueryTarget]:
    """Hook the queries where the processor really takes them: after ``norm_q`` where it applies one,
    else the output of ``to_q`` or the first third of a fused ``to_qkv``."""
    modules = dict(model.named_modules())
    targets = []
    for name in names:
        attention = modules[name]
        source = query_source(attention, family.query_token_dim)
        targets.append(
            QueryTarget(
                name,
                attention,
                source.module,
                0,
                token_dim=source.token_dim,
                source=source.attribute,
                tokens=family.stack_tokens(_stack_of(name, family)),
                parts=source.parts,
            )
        )
    return targets


def _blocks_in_order(model: nn.Module, family: Family) -> list[tuple[str, int, nn.Module]]:
    """(block list path, index, block) of every block in execution order."""
    paths = family.fork_stacks or tuple(stack.path for stack in family.stacks)
    return [(path, i, block) for path in paths for i, block in enumerate(_block_list(model, path))]


def _first_seg_block(ordered: list[tuple[str, int, nn.Module]], names: Sequence[str]) -> int:
    return next(i for i, (path, index, _) in enumerate(ordered) if any(n.startswith(f"{path}.{index}.") for n in names))


def transformer_replay_plan(model: nn.Module, names: Sequence[str], family: Family) -> ReplayPlan:
    """The blocks before the first SEG block, per block list (each list's own run of them). Families that take
    no extra rows at all (``forks=False``) get them only for the guider's perturbed call of its own."""
    ordered = _blocks_in_order(model, family)
    prefixes: dict[str, list[nn.Module]] = {}
    for path, _, block in ordered[: _first_seg_block(ordered, names)]:
        prefixes.setdefault(path, []).append(block)
    blocks = tuple(tuple(run) for run in prefixes.values())
    return ReplayPlan(blocks, replace_forward, whole_call_only=not family.forks)


def seg_layer_names(model: nn.Module, config: SegConfig) -> tuple[Family, list[str]]:
    """The transformer's family and the attention names ``config`` selects (the family's default if none)."""
    family = transformer_family(model)
    inventory = transformer_inventory(model, family)
    specs = config.layers if config.layers is not None else inventory.default_layers()
    return family, resolve_block_layers(specs, inventory)


def replace_forward(block: nn.Module, forward: Callable[..., Any], name: str) -> _RegistryHandle:
    """Replace ``block``'s forward by ``forward(original, *args, **kwargs)`` through diffusers' ``HookRegistry``
    (the hook point diffusers' own layer-skip and cache hooks use)."""
    from diffusers.hooks import HookRegistry, ModelHook

    class ReplacedForward(ModelHook):
        def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return forward(self.fn_ref.original_forward, *args, **kwargs)

    registry = HookRegistry.check_if_exists_or_initialize(block)
    registry.register_hook(ReplacedForward(), name)
    return _RegistryHandle(registry, name)


class _RegistryHandle:
    """A diffusers ``HookRegistry`` hook with the ``remove()`` of a torch hook handle."""

    def __init__(self, registry: Any, name: str) -> None:
        self.registry, self.name = registry, name

    def remove(self) -> None:
        if self.name in self.registry.hooks:
            self.registry.remove_hook(self.name, recurse=False)


def transformer_fork_plan(model: nn.Module, names: Sequence[str], family: Family) -> ForkPlan:
    """Fork at the first block holding a SEG layer; later blocks and the output modules get widened inputs."""
    ordered = [(f"{path}.{i}", block) for path, i, block in _blocks_in_order(model, family)]
    first = _first_seg_block(_blocks_in_order(model, family), names)
    outputs = tuple(getattr(model, name) for name in family.output_modules)
    blocks = tuple(block for _, block in ordered[first:]) + outputs
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
        try:
            return self.hook.state.context.name
        except ValueError:  # diffusers' way of saying that no cache context is set
            return None

    def remove(self) -> None:
        if self.name in self.registry.hooks:
            self.registry.remove_hook(self.name, recurse=False)


def transformer_host_reader(pipe: Any, family: Family, true_cfg_scale: float, context: Any):
    """Batched-CFG families read the pipeline like the UNet pipelines; separate-call ("true") CFG
    families get SEG on the cond call only."""
    from .unet import host_reader

    if not family.separate_cfg:
        return host_reader(pipe, family.timestep_scale)
    loop_progress = LoopProgress(pipe, family.timestep_scale)
    last_timestep = threading.local()

    def is_uncond_call(timestep: Any) -> bool:
        # diffusers' cache context names the call where the pipeline sets one (Flux, Qwen-Image); elsewhere
        # (Flux Kontext, Flux img2img, Chroma) the uncond call is the second call on the same timestep
        named = context.current() if context is not None else None
        if named is not None:
            return named == "uncond"
        if true_cfg_scale <= 1:
            return False  # no uncond call to tell apart (and no device sync to read the timestep)
        value = None if timestep is None else float(torch.as_tensor(timestep).flatten()[0])
        repeated = value is not None and getattr(last_timestep, "value", None) == value
        last_timestep.value = None if repeated else value
        return repeated

    def read(timestep: Any, call: SegCall) -> HostStep:
        # SEG joins the cond call only, with s/g, so that
        # neg + g·(pos' − neg) = neg + g·(pos − neg) + s·(pos − perturbed)
        uncond = is_uncond_call(timestep)
        return HostStep(
            False,
            1.0,
            0.0,
            lambda: loop_progress(timestep),
            seg_allowed=not uncond,
            seg_scale_factor=1.0 / true_cfg_scale,
        )

    return read


def enable_seg_transformer(
    pipe: Any, config: SegConfig, share_prefix: bool = True, true_cfg_scale: float = 1.0
) -> SegHooks:
    """Attach SEG to ``pipe.transformer`` (SD3 / SD3.5 / Flux.1), acting on ``pipe``'s calls only."""
    model = unwrap_compiled(pipe.transformer)
    family = transformer_family(model)
    if true_cfg_scale <= 0 or not math.isfinite(true_cfg_scale):
        raise ValueError(f"true_cfg_scale must be a positive number, got {true_cfg_scale!r}.")
    context = _TrueCfgContext(model) if family.separate_cfg and config.enabled else None
    try:
        return attach_seg_to_transformer(
            pipe.transformer,
            config,
            transformer_host_reader(pipe, family, true_cfg_scale, context),
            share_prefix,
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
    read_host: Callable[[Any, SegCall], HostStep],
    share_prefix: bool = True,
    scope: Any = None,
    output: OutputUnit | None = None,
    context: _TrueCfgContext | None = None,
) -> SegHooks:
    """Attach SEG's hooks to a transformer driven by any loop; ``read_host(timestep, call)`` describes each call.

    Families that cannot take extra rows inside a call (``forks=False``) get their perturbed prediction
    from a call of its own (the guider's separate batch), every row of it blurred.
    """
    model = unwrap_compiled(transformer)
    family, names = seg_layer_names(model, config)
    replays = family.replays_prefix or not family.forks
    plan = DenoiserPlan(
        transformer,
        tuple(transformer_query_targets(model, names, family)),
        UNDO_HINT,
        transformer_fork_plan(model, names, family) if share_prefix and family.forks and family.shares_prefix else None,
        transformer_replay_plan(model, names, family) if share_prefix and replays else None,
        read_inputs=lambda args, kwargs: family.read_inputs(model, args, kwargs),
        unbatched=family.unbatched_inputs,
        query_source=lambda target: query_source(target.attention, family.query_token_dim).module,
        cache_enabled=lambda: cache_enabled(model),
        cache_context=perturbed_cache_context(model),
    )
    hooks = SegHooks(plan, config, read_host, scope=scope, output=output)
    if context is not None:  # Flux's reader of diffusers' cond / uncond call context goes with the handle
        hooks.call_on_remove(context.remove)
    try:
        return hooks.attach()
    except BaseException:
        hooks.remove()
        raise
