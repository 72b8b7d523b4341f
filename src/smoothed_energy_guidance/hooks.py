"""The only code that touches a model, and only through PyTorch forward hooks.

Three kinds of hook make one SEG prediction out of one denoiser call:

1. a pre-hook on the denoiser appends the perturbed rows, copies of the cond rows of every
   batch-shaped input (latents, timesteps, text embeddings, time ids, ControlNet residuals,
   IP-Adapter embeddings);
2. a hook on each selected attention's query projection blurs the perturbed rows of its output;
3. a hook on the denoiser output combines uncond / cond / perturbed into the SEG prediction and
   hands the host pipeline rows it turns back into exactly that prediction.

Hooking the query projection keeps every attention backend and LoRA-wrapped projections working.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .blur import blur_queries
from .guidance import SegConfig, apply_seg, split_rows


@dataclass(frozen=True)
class QueryTarget:
    """One selected self-attention: where its queries come from and how coarse its grid is."""

    name: str
    attention: nn.Module
    projection: nn.Module
    fused_qkv: bool
    downsample: int  # ceil-halvings from the latent grid to this layer's grid


@dataclass(frozen=True)
class ForkPlan:
    """Where the perturbed rows join a denoiser call, so the shared prefix runs once.

    The perturbed rows equal the cond rows until the first SEG layer, so the denoiser runs on the
    host's rows up to ``blocks[0]`` and the cond rows are copied there. Every later block gets
    copies for the pre-fork tensors it consumes (time embedding, text embeddings, skip
    connections); ``widen_inputs`` does the same for denoiser inputs that are consumed after the
    fork outside any block (e.g. ControlNet residuals).
    """

    blocks: tuple[nn.Module, ...]
    widen_inputs: Callable[[tuple, dict, int, slice], tuple[tuple, dict]]


@dataclass(frozen=True)
class HostStep:
    """What the host pipeline is doing on the current denoiser call."""

    cfg: bool
    guidance_scale: float
    guidance_rescale: float
    progress: float  # step index / number of steps


@dataclass(frozen=True)
class PerturbedCall:
    """Per-call state of one SEG denoiser call, made by the pre-hook."""

    host: HostStep
    host_rows: int
    group_rows: int
    latent_hw: tuple[int, int]

    @property
    def perturbed(self) -> slice:
        return slice(self.host_rows, self.host_rows + self.group_rows)


def layer_grid(latent_hw: tuple[int, int], downsample: int) -> tuple[int, int]:
    """Grid of a layer ``downsample`` levels below the latent: each level halves with ceil."""
    height, width = latent_hw
    for _ in range(downsample):
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    return height, width


def append_cond_rows(value: Any, host_rows: int, cond_rows: slice) -> Any:
    """Copy the cond rows of every batch-shaped tensor in ``value`` onto its end (nested ok)."""
    if isinstance(value, torch.Tensor):
        if value.ndim >= 1 and value.shape[0] == host_rows:
            return torch.cat([value, value[cond_rows]])
        return value
    if isinstance(value, dict):
        return {key: append_cond_rows(item, host_rows, cond_rows) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(append_cond_rows(item, host_rows, cond_rows) for item in value)
    return value


def _first_output(output: Any) -> torch.Tensor:
    if isinstance(output, tuple):
        return output[0]
    if isinstance(output, torch.Tensor):
        return output
    return output["sample"]


def _replace_first_output(output: Any, sample: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (sample, *output[1:])
    if isinstance(output, torch.Tensor):
        return sample
    output["sample"] = sample
    return output


class SegHooks:
    """Forward hooks that run SEG on a denoiser, tracked by handle.

    Use as a context manager or call :meth:`remove`; removing twice is harmless.
    ``read_host(timestep)`` tells, for each denoiser call, whether CFG is on and how far the
    denoising has progressed.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        targets: Sequence[QueryTarget],
        config: SegConfig,
        read_host: Callable[[Any], HostStep],
        undo_hint: str = "",
        fork: ForkPlan | None = None,
    ) -> None:
        self.denoiser = denoiser
        self.fork = fork
        self.targets = tuple(targets)
        self.config = config
        self.read_host = read_host
        self.undo_hint = undo_hint
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._call: PerturbedCall | None = None
        self._reached: set[str] = set()

    # lifecycle -------------------------------------------------------------------------------
    def attach(self) -> SegHooks:
        if self._handles:
            return self
        if not self.config.enabled:
            return self  # s == 0: nothing may run
        try:
            self._handles.append(self.denoiser.register_forward_pre_hook(self._before_denoiser, with_kwargs=True))
            for target in self.targets:
                self._handles.append(target.projection.register_forward_hook(self._query_hook(target)))
            for block in self.fork.blocks if self.fork else ():
                self._handles.append(block.register_forward_pre_hook(self._widen_block_inputs, with_kwargs=True))
            self._handles.append(self.denoiser.register_forward_hook(self._after_denoiser, with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook; safe to call more than once."""
        while self._handles:
            self._handles.pop().remove()
        self._call = None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> SegHooks:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    # hooks -----------------------------------------------------------------------------------
    def _check_projections(self) -> None:
        """Refuse to run when a projection was swapped (fused QKV, LoRA added) after attaching."""
        for target in self.targets:
            current = target.attention.to_qkv if target.fused_qkv else target.attention.to_q
            fused_now = bool(getattr(target.attention, "fused_projections", False))
            if current is not target.projection or fused_now != target.fused_qkv:
                raise RuntimeError(
                    f"The query projection of SEG layer {target.name} changed after SEG was enabled "
                    f"(fused QKV or a LoRA added?). {self.undo_hint}"
                )

    def _before_denoiser(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._call = None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        host = self.read_host(timestep)
        if not self.config.active_at(host.progress):
            return None
        self._check_projections()
        host_rows = sample.shape[0]
        groups = 2 if host.cfg else 1
        if host_rows % groups:
            raise ValueError(f"CFG batch of {host_rows} rows is not [uncond, cond]; cannot add SEG rows.")
        group_rows = host_rows // groups
        cond_rows = slice(host_rows - group_rows, host_rows)
        self._call = PerturbedCall(host, host_rows, group_rows, tuple(sample.shape[-2:]))
        self._reached = set()
        if self.fork is not None:
            return self.fork.widen_inputs(args, kwargs, host_rows, cond_rows)
        return append_cond_rows(args, host_rows, cond_rows), append_cond_rows(kwargs, host_rows, cond_rows)

    def _widen_block_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        call = self._call
        if call is None:
            return None
        cond_rows = slice(call.host_rows - call.group_rows, call.host_rows)
        return append_cond_rows(args, call.host_rows, cond_rows), append_cond_rows(kwargs, call.host_rows, cond_rows)

    def _query_hook(self, target: QueryTarget) -> Callable:
        def blur_perturbed_queries(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            call = self._call
            if call is None:
                return None
            if output.shape[0] != call.host_rows + call.group_rows:
                raise RuntimeError(
                    f"SEG layer {target.name} saw a batch of {output.shape[0]} rows, expected "
                    f"{call.host_rows + call.group_rows}; is it a self-attention of this denoiser?"
                )
            self._reached.add(target.name)
            grid = layer_grid(call.latent_hw, target.downsample)
            rows = output[call.perturbed]
            if target.fused_qkv:
                q_channels = output.shape[-1] // 3
                q = blur_queries(rows[..., :q_channels], grid, self.config.blur_sigma)
                rows = torch.cat([q.to(rows.dtype), rows[..., q_channels:]], dim=-1)
            else:
                rows = blur_queries(rows, grid, self.config.blur_sigma).to(rows.dtype)
            return torch.cat([output[: call.host_rows], rows])

        return blur_perturbed_queries

    def _after_denoiser(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        call, self._call = self._call, None
        if call is None:
            return None
        missed = [target.name for target in self.targets if target.name not in self._reached]
        if missed:
            raise RuntimeError(
                f"SEG ran a perturbed pass but {len(missed)} of its {len(self.targets)} layers were "
                f"never reached (first: {missed[0]}), so their queries were not blurred. "
                f"{self.undo_hint}".strip()
            )
        pred = _first_output(output)
        if call.host.cfg:
            pred_uncond, pred_cond, pred_perturbed = split_rows(pred, 3)
        else:
            pred_uncond, (pred_cond, pred_perturbed) = None, split_rows(pred, 2)
        pred_seg = apply_seg(
            pred_cond,
            pred_perturbed,
            self.config.scale,
            pred_uncond,
            call.host.guidance_scale,
            call.host.guidance_rescale,
        )
        # Under CFG the host computes uncond + g·(cond − uncond): handing it [pred, pred] yields pred.
        rows = torch.cat([pred_seg, pred_seg]) if call.host.cfg else pred_seg
        return _replace_first_output(output, rows)
