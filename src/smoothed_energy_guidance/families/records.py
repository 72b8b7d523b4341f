"""What a model family record says: the shape of its denoiser, how its host runs CFG, which pipelines serve it.

A record describes the model; the engine reads it and never learns a family's name. Pure Python (the grid
readers it names are pure torch).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..core.tokens import TokenLayout


class Cfg(enum.Enum):
    """How the family's diffusers pipelines run classifier-free guidance."""

    BATCHED = "uncond and cond rows in one denoiser call"
    SEPARATE_CALL = "a cond call and an uncond call (true CFG)"


class PerturbedRows(enum.Enum):
    """Where SEG's perturbed rows join a denoiser call."""

    AFTER_SHARED_PREFIX = "forked off the cond rows at the first block holding a SEG layer"
    # code outside any module after the blocks uses pre-block tensors with the host's rows only
    AT_INPUT = "appended to the denoiser's input (a whole extra pass)"
    # the same denoisers, without the extra prefix: a call of their own after the host's, in which the blocks
    # before the first SEG layer replay the outputs they computed for the cond rows in the host's call
    REPLAYED_PREFIX = "a call of their own after the host's, the blocks before the first SEG layer replayed"
    # per-sample input lists, sequence-first blocks, modulation rows beyond the batch
    SEPARATE_CALL = "a denoiser call of their own (the guider's separate batch)"


@dataclass(frozen=True, kw_only=True)
class Stack:
    """One list of blocks SEG layers are named from (``blocks.7``, ``double.3``)."""

    spec: str  # its name in the layer grammar
    path: str  # dotted attribute path of the ModuleList in the denoiser
    tokens: TokenLayout = TokenLayout.IMAGE_ONLY


@dataclass(frozen=True, kw_only=True)
class Task:
    """One diffusers pipeline class SEG runs, and the SEG class made from it."""

    diffusers_class: str
    seg_class: str
    cli: bool = True  # ``seg generate --task`` offers it (else: the Python class only)
    doc: str = ""  # the SEG class's docstring


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, kw_only=True)
class Family:
    """Everything SEG needs to know about one model family.

    Args:
        name: what users call it ("Flux.1").
        denoiser_classes: class-name prefixes of its denoisers (``"FluxTransformer"``).
        architecture: ``"unet"`` (self-attention ``attn1`` modules in down / mid / up blocks) or
            ``"transformer"`` (attentions named ``attention_names`` in the blocks of ``stacks``).
        video: its pipelines make videos.
        stacks, attention_names: where its SEG layers are (transformers).
        query_token_dim: token axis of ``norm_q``'s output (2: per-head ``(B, heads, N, head_dim)``).
        read_inputs: grid source, ``read_inputs(model, args, kwargs) -> DenoiserInputs`` (a named reader).
        unbatched_inputs: call arguments without a batch axis (position ids), left alone when rows join.
        timestep_scale: the pipeline passes ``timestep / timestep_scale`` (Flux: 1000).
        cfg: how its pipelines run CFG; ``cfg_argument`` is the argument holding that CFG's scale when it is a
            separate call, and ``cfg_negative_inputs`` the call arguments that, as the pipeline itself decides,
            make that CFG run when its scale is > 1: any one group of them all given (empty: none needed).
        perturbed_rows: where SEG's perturbed rows join a call.
        fork_stacks: every block list in execution order where it differs from ``stacks`` (where rows fork or
            a prefix is replayed).
        output_modules: run on the widened rows after the last block when the rows fork.
        pipelines: CLI family key → task → :class:`Task`; the first task of a key is what its models load as.
        pipeline_prefixes: CLI family key → diffusers pipeline class-name prefixes that belong to it.
        unsupported_pipeline_prefixes: pipeline class-name prefixes of this family SEG does not run.
        guider: whether ``seg.SmoothedEnergyGuidance`` serves its denoiser in Modular Diffusers.
        note: shown after the name where families are listed ("with Fill and Kontext").
    """

    name: str
    denoiser_classes: tuple[str, ...]
    architecture: str = "transformer"
    video: bool = False
    stacks: tuple[Stack, ...] = ()
    attention_names: tuple[str, ...] = ("attn", "attn2")
    query_token_dim: int = 1
    read_inputs: Callable[[Any, tuple, dict], Any] | None = None
    unbatched_inputs: frozenset[str] = frozenset()
    timestep_scale: float = 1.0
    cfg: Cfg = Cfg.BATCHED
    cfg_argument: str = "true_cfg_scale"
    # Flux's, HunyuanVideo's rule: a negative prompt, or negative embeddings together with their pooled ones
    cfg_negative_inputs: tuple[tuple[str, ...], ...] = (
        ("negative_prompt",),
        ("negative_prompt_embeds", "negative_pooled_prompt_embeds"),
    )
    perturbed_rows: PerturbedRows = PerturbedRows.AFTER_SHARED_PREFIX
    fork_stacks: tuple[str, ...] = ()
    output_modules: tuple[str, ...] = ("norm_out",)
    pipelines: Mapping[str, Mapping[str, Task]] = field(default_factory=dict)
    pipeline_prefixes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    unsupported_pipeline_prefixes: tuple[str, ...] = ()
    guider: bool = True  # Modular Diffusers' guider serves its denoiser
    note: str = ""

    def __post_init__(self) -> None:
        if self.architecture not in ("unet", "transformer"):
            raise ValueError(f"{self.name}: architecture must be 'unet' or 'transformer', got {self.architecture!r}.")
        if self.architecture == "transformer" and (not self.stacks or self.read_inputs is None):
            raise ValueError(f"{self.name}: a transformer family needs its stacks and a grid reader (read_inputs).")
        if set(self.pipelines) != set(self.pipeline_prefixes):
            raise ValueError(
                f"{self.name}: every CLI family key needs its pipeline class-name prefixes, and no more "
                f"(pipelines: {sorted(self.pipelines)}, prefixes: {sorted(self.pipeline_prefixes)})."
            )
        object.__setattr__(self, "pipelines", _frozen({k: _frozen(v) for k, v in self.pipelines.items()}))
        object.__setattr__(self, "pipeline_prefixes", _frozen(self.pipeline_prefixes))

    # what the engine reads ---------------------------------------------------------------------
    def cfg_negative_given(self, arguments: Mapping[str, Any]) -> bool:
        """Whether a call's arguments hold what its pipeline needs to run its separate CFG call."""
        if not self.cfg_negative_inputs:
            return True
        return any(all(arguments.get(name) is not None for name in group) for group in self.cfg_negative_inputs)

    @property
    def has_pipelines(self) -> bool:
        """Whether ``enable_seg`` and SEG classes drive its classic pipelines (else: the guider only)."""
        return bool(self.pipelines)

    @property
    def forks(self) -> bool:
        """Whether perturbed rows can join one of its denoiser calls at all."""
        return self.perturbed_rows is not PerturbedRows.SEPARATE_CALL

    @property
    def shares_prefix(self) -> bool:
        return self.perturbed_rows is PerturbedRows.AFTER_SHARED_PREFIX

    @property
    def replays_prefix(self) -> bool:
        return self.perturbed_rows is PerturbedRows.REPLAYED_PREFIX

    @property
    def separate_cfg(self) -> bool:
        return self.cfg is Cfg.SEPARATE_CALL

    def stack_tokens(self, spec: str) -> TokenLayout:
        return next(stack.tokens for stack in self.stacks if stack.spec == spec)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.note})" if self.note else self.name

    def tasks(self) -> list[tuple[str, str, Task]]:
        """(CLI family key, task, Task) of every pipeline it serves, in table order."""
        return [(key, task, entry) for key, tasks in self.pipelines.items() for task, entry in tasks.items()]
