"""The only code that touches a model, and only through PyTorch forward hooks: small units with one job each,
kept by name on their handle (:class:`SegHooks`), as diffusers' ``HookRegistry`` keeps its hooks.

1. :class:`AppendPerturbedRows` ("append perturbed rows", a pre-hook on the denoiser) starts the call's
   perturbed rows: copies of the cond rows of every batch-shaped input (latents, timesteps, text embeddings,
   time ids, ControlNet residuals, IP-Adapter embeddings), appended there or — :class:`WidenForkedBlock`,
   "widen the inputs of forked block i" — at the first block holding a SEG layer, so the shared prefix runs
   once;
2. :class:`BlurQueries` ("blur queries of <layer>", on each selected attention's query projection) blurs the
   perturbed rows of its output over the layer's grid, as :func:`.core.tokens.blur_image_queries` lays the
   tokens out;
   Where code after the blocks cannot take extra rows, the perturbed prediction is a call of its own instead
   (:class:`ReplayPlan`): :class:`RecordPrefixOutput` keeps the cond rows' output of the blocks before the
   first SEG block in the host's call, and in the perturbed call those blocks return it instead of running.
   With a host cache method on (``DenoiserPlan.cache_enabled``), every family takes that call of its own,
   nothing replayed, in a cache context of its own (``PERTURBED_CACHE_CONTEXT``);
3. an output unit on the denoiser: :class:`CombinePredictions` combines uncond / cond / perturbed into the SEG
   prediction and hands the host pipeline rows it turns back into exactly that prediction;
   :class:`HandOverPerturbed` hands a guider the perturbed prediction and the host the cond one, and removes
   the handle when its one denoiser call ends, raised or not.

They act only in calls the call context (:mod:`.core.context`) names them for. Hooking the query projection
keeps every attention backend and LoRA-wrapped projections working.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from .core.context import SegCall, close_call, current_call, forget_call, open_call
from .core.grids import DenoiserInputs, layer_grid, unet_call_inputs
from .core.guidance import SegConfig, apply_seg, split_rows
from .core.tokens import TokenLayout, blur_image_queries


@dataclass(frozen=True)
class QueryTarget:
    """One selected self-attention: where its queries come from and how coarse its grid is."""

    name: str
    attention: nn.Module
    projection: nn.Module  # the module whose output holds the queries (to_q, to_qkv or norm_q)
    downsample: int  # ceil-halvings from the latent grid to this layer's grid
    token_dim: int = 1  # 1: queries are (B, N, …); 2: per-head (B, heads, N, head_dim)
    source: str = "to_q"  # the attention's attribute that ``projection`` is
    tokens: TokenLayout = TokenLayout.IMAGE_ONLY  # where the queries keep the image tokens
    parts: int = 1  # 3 when the queries are the first third of a fused QKV projection


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
class ReplayPlan:
    """The perturbed prediction as a denoiser call of its own after the host's, whose blocks before the first
    SEG layer replay what they computed for the cond rows in the host's call.

    For denoisers whose code outside any module uses pre-block tensors with the host's rows only (output
    modulation, unpatchify by the input batch), so rows cannot fork inside one call. ``prefixes`` holds, per
    block list in execution order, the blocks before the first SEG block (a list wholly before it: all of its
    blocks); the host's call records the cond rows' output of the last block of each, and in the perturbed
    call every block of a prefix returns that output, so only the embeddings, the blocks from the first SEG
    block on and the output head run again.
    """

    prefixes: tuple[tuple[nn.Module, ...], ...]
    # the host's hook point that lets a hook replace a module's forward: (block, forward(original, *args,
    # **kwargs), name) → a handle with remove()
    replace_forward: Callable[[nn.Module, Callable[..., Any], str], Any]
    # only for a host that makes the perturbed prediction as a call of its own and hands it the outputs it
    # recorded in its cond call (the guider's separate perturbed batch): no call of SEG's own is made
    whole_call_only: bool = False


@dataclass(frozen=True)
class DenoiserPlan:
    """What SEG hooks on one denoiser: its selected attentions, where the perturbed rows join, how its call reads.

    ``read_inputs`` reads a call's batch, grid and token counts; inputs named in ``unbatched`` (position ids)
    are never given perturbed rows; ``query_source(target)`` names the module the attention's processor really
    takes its queries from now, so a swapped projection is refused instead of missed; ``undo_hint`` tells the
    user how to recover from that.
    """

    denoiser: nn.Module
    targets: tuple[QueryTarget, ...]
    undo_hint: str = ""
    fork: ForkPlan | None = None
    replay: ReplayPlan | None = None
    read_inputs: Callable[[tuple, dict], DenoiserInputs] = unet_call_inputs
    unbatched: frozenset[str] = frozenset()
    query_source: Callable[[QueryTarget], nn.Module | None] = lambda target: getattr(
        target.attention, target.source, None
    )
    # a cache method of the host (diffusers' enable_cache) on the denoiser now, and the host's context manager
    # that gives a named call its own cache state
    cache_enabled: Callable[[], bool] = lambda: False
    cache_context: Callable[[str], Any] | None = None


@dataclass(frozen=True)
class HostStep:
    """What the host pipeline is doing on the current denoiser call."""

    cfg: bool
    guidance_scale: float
    guidance_rescale: float
    # step index / number of steps; or a function that reads it, called only when SEG has a step window
    # (a compiled denoiser then never reads the host's step counters, which change on every step)
    progress: float | Callable[[], float]
    seg_allowed: bool = True  # False for calls SEG must leave alone (e.g. a separate uncond pass)
    seg_scale_factor: float = 1.0  # scales s where the host's own guidance multiplies it (true CFG)


@dataclass(frozen=True)
class PerturbedCall:
    """Per-call state of one SEG denoiser call, made by the pre-hook."""

    host: HostStep
    host_rows: int
    group_rows: int
    latent_hw: tuple[int, ...]
    seg_scale: float
    text_tokens: int | None = None
    forked: bool = False  # the perturbed rows fork off at the first SEG block (else: joined at the input)
    frames: int = 1
    # the perturbed rows come from a call of their own after this one, its prefix replayed (ReplayPlan)
    separate: bool = False
    # a cache method is on: the perturbed call of its own runs in its own cache context, nothing replayed, and
    # the cache may skip SEG's layers there (that step's perturbed prediction is then the cache's)
    cached: bool = False

    @property
    def perturbed(self) -> slice:
        """The perturbed rows inside the denoiser, where each sample is ``frames`` rows."""
        return slice(self.host_rows * self.frames, (self.host_rows + self.group_rows) * self.frames)

    @property
    def cond_rows(self) -> slice:
        """The host's cond rows: the last group of its batch."""
        return slice(self.host_rows - self.group_rows, self.host_rows)


def append_cond_rows(
    value: Any, host_rows: int, cond_rows: slice, unbatched: frozenset[str] = frozenset(), frames: int = 1
) -> Any:
    """Copy the cond rows of every batch-shaped tensor in ``value`` onto its end (nested ok).

    Dict entries named in ``unbatched`` (e.g. Flux's position ids) are left alone. With ``frames`` > 1,
    tensors holding ``frames`` rows per sample (AnimateDiff's per-frame text embeddings and block
    inputs) get the cond samples' frame rows.
    """
    if isinstance(value, torch.Tensor):
        if value.ndim >= 1 and value.shape[0] == host_rows:
            return torch.cat([value, value[cond_rows]])
        if frames > 1 and value.ndim >= 1 and value.shape[0] == host_rows * frames:
            return torch.cat([value, value[cond_rows.start * frames : cond_rows.stop * frames]])
        return value
    if isinstance(value, dict):
        return {
            key: item if key in unbatched else append_cond_rows(item, host_rows, cond_rows, unbatched, frames)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(append_cond_rows(item, host_rows, cond_rows, unbatched, frames) for item in value)
    return value


def cond_rows_only(value: Any, host_rows: int, cond_rows: slice, unbatched: frozenset[str] = frozenset()) -> Any:
    """The cond rows of every batch-shaped tensor in ``value`` (nested ok; entries named in ``unbatched`` and
    tensors without the batch axis stay whole): the inputs of the perturbed call of :class:`ReplayPlan`."""
    if isinstance(value, torch.Tensor):
        return value[cond_rows] if value.ndim >= 1 and value.shape[0] == host_rows else value
    if isinstance(value, dict):
        return {
            key: item if key in unbatched else cond_rows_only(item, host_rows, cond_rows, unbatched)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(cond_rows_only(item, host_rows, cond_rows, unbatched) for item in value)
    return value


def same_call_inputs(a: Any, b: Any) -> bool:
    """Whether two denoiser calls' arguments are the same: equal tensors (shape, dtype, values) in the same
    nested structure, equal other values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and bool(torch.equal(a, b))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_call_inputs(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_call_inputs(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:  # objects without a plain equality
        return a is b


def fresh_copy(value: Any) -> Any:
    """A copy of a block output's tensors (the host may add to a block's output in place)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(fresh_copy(item) for item in value)
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


def make_torch_compile_see_hooks() -> None:
    """Let torch.compile notice SEG's forward hooks coming and going between calls.

    By default dynamo does not guard on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``,
    documented there as unsafe when hooks are added or removed after compiling): a graph traced before
    SEG's hooks existed — a plain warm-up call, a SEG-off call, another UNet of the same class, another
    instance of a repeated block — would keep running without them. Turning the guard on makes dynamo
    trace once with and once without the hooks (measured: no recompiles when SEG is toggled). Graphs
    traced before this call carry no such guard, so the first time it flips the setting it clears
    torch.compile's caches once (``torch.compiler.reset``).
    """
    config = torch._dynamo.config
    if config.skip_nnmodule_hook_guards:
        config.skip_nnmodule_hook_guards = False
        torch.compiler.reset()


# The SEG handles attached to each denoiser, in attach order (our own record: torch's hook dicts are private).
_ATTACHED: weakref.WeakKeyDictionary[nn.Module, list[SegHooks]] = weakref.WeakKeyDictionary()


def active_seg_hooks(denoiser: nn.Module) -> list[SegHooks]:
    """The SEG handles whose hooks are on ``denoiser`` now."""
    return [hooks for hooks in _ATTACHED.get(denoiser, ()) if hooks.attached]


class CallState:
    """The hooks' scratch for one served call (made by its entry point, so concurrent calls never mix)."""

    def __init__(self) -> None:
        self.call: PerturbedCall | None = None  # the denoiser call in flight
        self.finished = False  # the denoiser call in flight returned normally
        self.reached: set[str] = set()
        self.reference_call = False  # the call in flight is a cond-only reference call
        # (pred_seg, pred_cond) of the latest SEG call, for a reference call that follows it
        self.last_seg: tuple[torch.Tensor, torch.Tensor] | None = None
        # ReplayPlan: "record" during the host's call, "replay" during the perturbed call of its own
        self.phase: str | None = None
        self.perturbed_inputs: tuple[tuple, dict] | None = None
        self.recorded: dict[int, Any] = {}  # prefix index → the cond rows' output of its last block


# What to tell the user when SEG's layers or replayed blocks did not run.
MISSED_CAUSE = (
    "something skipped or replaced the blocks holding them (another hook on the model, such as a layer-skip "
    "hook, or a block replaced after SEG was enabled)"
)
# Phases of SEG's own perturbed call inside a host's call: with the prefix replayed, or in its own cache context.
NESTED_PHASES = ("replay", "perturb")
# The cache context (diffusers' cache_context) SEG's perturbed call runs in when a cache method is on.
PERTURBED_CACHE_CONTEXT = "smoothed-energy-guidance-perturbed"

# Names of the hooks on the denoiser itself.
APPEND_ROWS, OUTPUT, END_OF_CALL = "append perturbed rows", "combine or hand over predictions", "end of call"
Handles = dict[str, torch.utils.hooks.RemovableHandle]


class SegHooks:
    """One SEG handle: the named forward hooks that run SEG on a denoiser, and their lifecycle.

    Use as a context manager or call :meth:`remove`; removing twice is harmless.
    The hooks act only on denoiser calls whose call context (:mod:`.core.context`) names this handle: an
    entry point (a SEG pipeline's ``__call__``, a pipeline armed by ``enable_seg``, the guider) sets it;
    every other call — another thread, a plain function, a sibling pipeline sharing the denoiser — runs
    untouched. ``plan`` says what is hooked (None: nothing, SEG is off); ``scope`` is the pipeline or guider
    the handle serves (two handles on one denoiser need different scopes); ``read_host(timestep, call)`` tells,
    for each denoiser call, whether CFG is on and how far the denoising has progressed; ``output`` is the unit
    that turns the predictions into what the host gets (:class:`CombinePredictions` for a pipeline,
    :class:`HandOverPerturbed` for a guider).
    """

    def __init__(
        self,
        plan: DenoiserPlan | None,
        config: SegConfig,
        read_host: Callable[[Any, SegCall], HostStep] | None,
        scope: Any = None,
        output: OutputUnit | None = None,
    ) -> None:
        self.plan = plan
        self.config = config
        self.read_host = read_host
        self.scope = scope
        self.output = output if output is not None else CombinePredictions()
        # Every hook by name, as diffusers' HookRegistry keeps them; each does one job (see attach).
        self._handles: Handles = {}
        self._on_remove: list[Callable[[], None]] = []
        # The call being served, for code torch.compile traces: dynamo cannot read a ContextVar, but it
        # guards on this attribute (None, or the call), so a compiled graph never serves the wrong call.
        self._published: SegCall | None = None
        self._opened_in: int | None = None  # the thread serving a call with these hooks now

    def __repr__(self) -> str:
        scope = "any caller" if self.scope is None else f"{type(self.scope).__name__} at {id(self.scope):#x}"
        return f"<SegHooks scale={self.config.scale} sigma={self.config.blur_sigma} for {scope}>"

    # lifecycle -------------------------------------------------------------------------------
    def attach(self) -> SegHooks:
        if self._handles or self.plan is None or not self.config.enabled:
            return self  # attached already, or s == 0: nothing may run
        plan = self.plan
        self._sweep_interrupted()
        self._refuse_stacking()
        make_torch_compile_see_hooks()
        handles = self._handles
        try:
            handles[APPEND_ROWS] = plan.denoiser.register_forward_pre_hook(AppendPerturbedRows(self), with_kwargs=True)
            for target in plan.targets:
                handles[f"blur queries of {target.name}"] = target.projection.register_forward_hook(
                    BlurQueries(self, target)
                )
            for index, block in enumerate(plan.fork.blocks if plan.fork else ()):
                handles[f"widen the inputs of forked block {index}"] = block.register_forward_pre_hook(
                    WidenForkedBlock(self), with_kwargs=True
                )
            for index, prefix in enumerate(plan.replay.prefixes if plan.replay else ()):
                handles[f"record the cond rows' output of prefix {index}"] = prefix[-1].register_forward_hook(
                    RecordPrefixOutput(self, index)
                )
                for position, block in enumerate(prefix):
                    handles[f"replay block {position} of prefix {index}"] = replay_block(block, self, index)
            handles.update(self.output.register(self))
        except BaseException:
            self.remove()
            raise
        _ATTACHED.setdefault(plan.denoiser, []).append(self)
        return self

    def _sweep_interrupted(self) -> None:
        """Remove one-call handles this thread opened and never closed: their call was interrupted by an
        exception no hook sees (KeyboardInterrupt, SystemExit), and this thread has moved on."""
        for other in active_seg_hooks(self.plan.denoiser):
            if other.output.one_call and other._opened_in == threading.get_ident():
                other.abandon()

    def abandon(self) -> None:
        """Remove every hook and stop serving this handle's call in this thread (it will not finish)."""
        forget_call(self)
        self._opened_in = None
        self.remove()

    def _refuse_stacking(self) -> None:
        """Two handles may share a denoiser only when each is scoped to a different pipeline."""
        for other in active_seg_hooks(self.plan.denoiser):
            if other.scope is None or self.scope is None or other.scope is self.scope:
                raise RuntimeError(
                    f"SEG is already enabled on this {type(self.plan.denoiser).__name__} by {other!r}; remove "
                    "that handle first (handle.remove(), or leave its `with` block), or pass seg_scale=0 to a SEG "
                    "pipeline call while it is active."
                )

    def call_on_remove(self, undo: Callable[[], None]) -> None:
        """Run ``undo`` when the handle is removed (an entry point's own arming, e.g. a pipeline's class)."""
        self._on_remove.append(undo)

    def remove(self) -> None:
        """Remove every hook; safe to call more than once."""
        while self._on_remove:
            self._on_remove.pop()()
        self.remove_hooks()
        attached = _ATTACHED.get(self.plan.denoiser) if self.plan is not None else None
        if attached is not None and self in attached:
            attached.remove(self)
        self._published = None

    def remove_hooks(self, keep: Sequence[str] = ()) -> None:
        """Remove the hooks not named in ``keep``."""
        for name in [name for name in self._handles if name not in keep]:
            self._handles.pop(name).remove()

    # serving calls ---------------------------------------------------------------------------
    def new_call(self, arguments: Mapping[str, Any] | None = None, perturb_whole_call: bool = False) -> SegCall:
        """A call record naming these hooks, with the host call's ``arguments`` and a fresh scratch."""
        return SegCall(self, MappingProxyType(dict(arguments or {})), perturb_whole_call, state=CallState())

    @contextmanager
    def serving(self, arguments: Mapping[str, Any] | None = None) -> Iterator[SegCall]:
        """Serve one entry-point call: inside the block, the denoiser calls of this thread / task get SEG."""
        call = self.new_call(arguments)
        token = self.open(call)
        try:
            yield call
        finally:
            self.close(token)

    def open(self, call: SegCall) -> contextvars.Token:
        """Start serving ``call`` (see :meth:`serving`); pair with :meth:`close`."""
        self._published = call
        self._opened_in = threading.get_ident()
        return open_call(call)

    def close(self, token: contextvars.Token | None) -> None:
        close_call(token)
        self._published = None
        self._opened_in = None

    def serving_call(self) -> SegCall | None:
        """The call this thread serves with these hooks, or None: their hooks stay inert."""
        call = self._published if torch.compiler.is_compiling() else current_call()
        return call if call is not None and call.hooks is self else None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    @property
    def hook_names(self) -> tuple[str, ...]:
        """The names of the hooks on the model now, in the order they were registered."""
        return tuple(self._handles)

    def __enter__(self) -> SegHooks:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def finish_call(self) -> tuple[CallState | None, PerturbedCall | None]:
        """The served call's scratch and its perturbed call, now over; refuses a pass that missed a layer."""
        serving_call = self.serving_call()
        if serving_call is None:
            return None, None
        state = serving_call.state
        state.finished = True
        call, state.call = state.call, None
        targets = self.plan.targets
        # with a cache method on, the cache may skip SEG's layers in the perturbed call's own context
        missed = [target.name for target in targets if target.name not in state.reached] if call else []
        missed = [] if call is not None and call.cached else missed
        if missed:
            raise RuntimeError(
                f"SEG ran a perturbed pass but {len(missed)} of its {len(targets)} layers were "
                f"never reached (first: {missed[0]}), so their queries were not blurred: {MISSED_CAUSE}."
            )
        return state, call

    def perturbed_call(self, state: CallState) -> torch.Tensor:
        """Run the perturbed prediction as a call of its own: the denoiser once more on the cond rows' inputs,
        every row blurred; the prefix blocks replay what they recorded in the host's call (:class:`ReplayPlan`),
        or, with a cache method on, the call runs in its own cache context."""
        host_call = state.call
        args, kwargs = state.perturbed_inputs
        state.call = PerturbedCall(
            host_call.host,
            0,
            host_call.group_rows,
            host_call.latent_hw,
            host_call.seg_scale,
            host_call.text_tokens,
            frames=host_call.frames,
        )
        state.phase = "perturb" if host_call.cached else "replay"
        try:
            if not host_call.cached and len(state.recorded) != len(self.plan.replay.prefixes):
                raise RuntimeError(
                    f"SEG's host call reached {len(state.recorded)} of the {len(self.plan.replay.prefixes)} "
                    f"blocks whose outputs its perturbed call replays: {MISSED_CAUSE}."
                )
            own_cache = host_call.cached and self.plan.cache_context is not None
            with self.plan.cache_context(PERTURBED_CACHE_CONTEXT) if own_cache else contextlib.nullcontext():
                output = self.plan.denoiser(*args, **kwargs)
        finally:
            state.phase, state.perturbed_inputs, state.recorded = None, None, {}
            state.call = host_call
        return _first_output(output)


# The hook units: each one job, each reading the served call through its handle. ---------------------------
def _with_cond_rows_appended(plan: DenoiserPlan, call: PerturbedCall, args: tuple, kwargs: dict) -> tuple:
    return (
        append_cond_rows(args, call.host_rows, call.cond_rows, plan.unbatched, call.frames),
        append_cond_rows(kwargs, call.host_rows, call.cond_rows, plan.unbatched, call.frames),
    )


class AppendPerturbedRows:
    """Denoiser pre-hook: start the call's perturbed rows (appended here, or forked at the first SEG block)."""

    def __init__(self, hooks: SegHooks) -> None:
        self.hooks = hooks

    def _check_projections(self) -> None:
        """Refuse to run when a projection was swapped (fused QKV, LoRA added) after attaching."""
        plan = self.hooks.plan
        for target in plan.targets:
            if plan.query_source(target) is not target.projection:
                raise RuntimeError(
                    f"The query projection of SEG layer {target.name} changed after SEG was enabled "
                    f"(fused QKV or a LoRA added?). {plan.undo_hint}"
                )

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        hooks = self.hooks
        serving_call = hooks.serving_call()
        if serving_call is None:
            return None  # not a call of this handle's entry point: it runs exactly as without SEG
        plan, config = hooks.plan, hooks.config
        state = serving_call.state
        if state.phase in NESTED_PHASES:
            return None  # SEG's own perturbed call: its inputs are ready
        if state.call is not None and hooks.output.one_call:
            # the one call these hooks served never reached its end (interrupted by an exception that no hook
            # sees, such as KeyboardInterrupt): they serve nothing more, and this call runs plain
            hooks.abandon()
            return None
        state.call = None
        state.finished = False
        state.reference_call = False
        inputs = plan.read_inputs(args, kwargs)
        if inputs.cond_reference:
            state.reference_call = True
            return None
        state.last_seg = None
        host = hooks.read_host(inputs.timestep, serving_call)
        if not host.seg_allowed:
            return None
        if config.windowed:
            progress = host.progress() if callable(host.progress) else host.progress
            if not config.active_at(progress):
                return None
        self._check_projections()
        host_rows = inputs.rows
        groups = 2 if host.cfg else 1
        if host_rows % groups:
            raise ValueError(f"CFG batch of {host_rows} rows is not [uncond, cond]; cannot add SEG rows.")
        seg_scale = config.scale * host.seg_scale_factor
        state.reached = set()
        if serving_call.perturb_whole_call:  # a perturbed call of its own: blur every row, add none
            # with a cache on, the host runs this call in a cache context of its own, and the cache may skip SEG's
            # layers there (taking its estimate of the perturbed prediction); nothing is replayed under a cache
            cached = plan.cache_enabled()
            state.call = PerturbedCall(
                host, 0, host_rows, inputs.grid, seg_scale, inputs.text_tokens, frames=inputs.frames, cached=cached
            )
            # the host recorded its cond call's prefix (ReplayPlan.whole_call_only): replay it if this call's
            # inputs are that call's
            handed = plan.replay is not None and state.recorded and state.perturbed_inputs is not None and not cached
            replays = handed and same_call_inputs((args, kwargs), state.perturbed_inputs)
            state.phase = "replay-own" if replays else None
            return None
        state.phase, state.perturbed_inputs, state.recorded = None, None, {}
        cached = plan.cache_enabled()
        forked = plan.fork is not None and inputs.shares_prefix and not cached
        replayed = plan.replay is not None and not plan.replay.whole_call_only and inputs.shares_prefix
        separate = cached or replayed
        state.call = call = PerturbedCall(
            host,
            host_rows,
            host_rows // groups,
            inputs.grid,
            seg_scale,
            inputs.text_tokens,
            forked=forked,
            frames=inputs.frames,
            separate=separate,
            cached=cached,
        )
        if separate:  # the host's rows run as they are; their cond rows are the perturbed call's inputs
            state.phase, state.recorded = ("host" if cached else "record"), {}
            state.perturbed_inputs = (
                cond_rows_only(args, host_rows, call.cond_rows, plan.unbatched),
                cond_rows_only(kwargs, host_rows, call.cond_rows, plan.unbatched),
            )
            return None
        if forked:
            return plan.fork.widen_inputs(args, kwargs, host_rows, call.cond_rows)
        return _with_cond_rows_appended(plan, call, args, kwargs)


class WidenForkedBlock:
    """Pre-hook of a block from the fork on: copies of the cond rows for the pre-fork tensors it consumes."""

    def __init__(self, hooks: SegHooks) -> None:
        self.hooks = hooks

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        serving_call = self.hooks.serving_call()
        call = None if serving_call is None else serving_call.state.call
        if call is None or not call.forked:
            return None
        return _with_cond_rows_appended(self.hooks.plan, call, args, kwargs)


class BlurQueries:
    """Forward hook of one SEG layer's query projection: blur the perturbed rows of its output."""

    def __init__(self, hooks: SegHooks, target: QueryTarget) -> None:
        self.hooks = hooks
        self.target = target

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        serving_call = self.hooks.serving_call()
        if serving_call is None or serving_call.state.call is None:
            return None
        target, config = self.target, self.hooks.config
        state = serving_call.state
        call = state.call
        if call.separate:
            return None  # the host's own rows: the perturbed ones come in a call of their own
        expected = (call.host_rows + call.group_rows) * call.frames
        if output.shape[0] != expected:
            raise RuntimeError(
                f"SEG layer {target.name} saw a batch of {output.shape[0]} rows, expected "
                f"{expected}; is it a self-attention of this denoiser?"
            )
        state.reached.add(target.name)
        perturbed = call.perturbed
        rows = output[perturbed]
        q_channels = output.shape[-1] // target.parts
        q = blur_image_queries(
            rows[..., :q_channels],
            layer_grid(call.latent_hw, target.downsample),
            config.blur_sigma,
            config.temporal_sigma,
            layout=target.tokens,
            token_dim=target.token_dim,
            text_tokens=call.text_tokens,
            frames=call.frames,
            layer=target.name,
        )
        rows = torch.cat([q, rows[..., q_channels:]], dim=-1) if target.parts > 1 else q
        return torch.cat([output[: perturbed.start], rows])


class RecordPrefixOutput:
    """Forward hook of the last block of a :class:`ReplayPlan` prefix: keep the cond rows of its output in the
    host's call, for the perturbed call to replay."""

    def __init__(self, hooks: SegHooks, index: int) -> None:
        self.hooks = hooks
        self.index = index

    def __call__(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        serving_call = self.hooks.serving_call()
        if serving_call is None or serving_call.state.phase != "record":
            return
        call = serving_call.state.call
        rows = cond_rows_only(output, call.host_rows, call.cond_rows)
        # own storage when only part of the batch is kept, so the host's batch can be freed
        serving_call.state.recorded[self.index] = rows if call.host_rows == call.group_rows else fresh_copy(rows)


def replay_block(block: nn.Module, hooks: SegHooks, index: int) -> Any:
    """In SEG's perturbed call of a :class:`ReplayPlan`, ``block`` returns the output recorded for the last block
    of its prefix instead of running (through the host's hook point ``ReplayPlan.replace_forward``)."""

    def forward(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        serving_call = hooks.serving_call()
        if serving_call is not None and serving_call.state.phase in ("replay", "replay-own"):
            return fresh_copy(serving_call.state.recorded[index])
        return original(*args, **kwargs)

    return hooks.plan.replay.replace_forward(block, forward, f"smoothed-energy-guidance-replay-{id(hooks)}")


class OutputUnit:
    """What the host gets from a SEG denoiser call: registers the denoiser's output hook(s), by name."""

    one_call = False  # the handle serves one denoiser call and goes with it

    def register(self, hooks: SegHooks) -> Handles:
        raise NotImplementedError


_NESTED = object()  # marks the end of SEG's own perturbed call


def _separate_perturbed_prediction(hooks: SegHooks) -> Any:
    """At the end of a denoiser call: the perturbed prediction of a :class:`ReplayPlan` host call (running its
    perturbed call now), ``_NESTED`` at the end of that perturbed call itself, else None."""
    serving_call = hooks.serving_call()
    if serving_call is None:
        return None
    state = serving_call.state
    if state.phase in NESTED_PHASES:
        return _NESTED
    if state.phase not in ("record", "host") or state.call is None or not state.call.separate:
        return None
    return hooks.perturbed_call(state)


class CombinePredictions(OutputUnit):
    """For a pipeline: combine uncond / cond / perturbed into the SEG prediction and hand the host rows its
    own CFG turns back into exactly that prediction."""

    def register(self, hooks: SegHooks) -> Handles:
        def combine(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            return self.combine(hooks, output)

        return {OUTPUT: hooks.plan.denoiser.register_forward_hook(combine, with_kwargs=True)}

    def combine(self, hooks: SegHooks, output: Any) -> Any:
        pred_separate = _separate_perturbed_prediction(hooks)
        if pred_separate is _NESTED:
            return None  # SEG's own perturbed call ends: its output goes to the host call's hook
        state, call = hooks.finish_call()
        if call is None:
            return self._shift_cond_reference(state, output) if state is not None and state.reference_call else None
        pred = _first_output(output)
        if pred_separate is not None:
            pred_uncond, pred_cond = split_rows(pred, 2) if call.host.cfg else (None, pred)
            pred_perturbed = pred_separate.to(pred.dtype)
        elif call.host.cfg:
            pred_uncond, pred_cond, pred_perturbed = split_rows(pred, 3)
        else:
            pred_uncond, (pred_cond, pred_perturbed) = None, split_rows(pred, 2)
        pred_seg = apply_seg(
            pred_cond,
            pred_perturbed,
            call.seg_scale,
            pred_uncond,
            call.host.guidance_scale,
            call.host.guidance_rescale,
        )
        state.last_seg = (pred_seg, pred_cond)
        # Under CFG the host computes uncond + g·(cond − uncond): handing it [pred, pred] yields pred.
        rows = torch.cat([pred_seg, pred_seg]) if call.host.cfg else pred_seg
        return _replace_first_output(output, rows)

    @staticmethod
    def _shift_cond_reference(state: CallState, output: Any) -> Any:
        """On a cond-only reference call, add pred_seg − cond so ``host_cond − output`` is ``cond − output``.

        The host reads its cond prediction back from the rows SEG handed it, which are pred_seg.
        """
        last_seg = state.last_seg
        if last_seg is None or output is None:
            return None
        pred_seg, pred_cond = last_seg
        pred = _first_output(output)
        if pred.shape != pred_seg.shape:
            return None
        return _replace_first_output(output, pred + (pred_seg - pred_cond).to(pred.dtype))


class HandOverPerturbed(OutputUnit):
    """For a guider's one perturbed denoiser call: the cond rows go back to the host, the perturbed prediction
    to ``take``; the handle is removed when that call ends, raised or not."""

    one_call = True

    def __init__(self, take: Callable[[torch.Tensor], None]) -> None:
        self.take = take

    def register(self, hooks: SegHooks) -> Handles:
        def hand_over(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            pred_separate = _separate_perturbed_prediction(hooks)
            if pred_separate is _NESTED:
                return None
            _, call = hooks.finish_call()
            if call is None or call.host_rows == 0:  # not ours, or a perturbed call of its own: the guider has it
                return None
            if pred_separate is not None:  # the host's rows are the cond rows as they are
                self.take(pred_separate)
                return None
            pred_cond, pred_perturbed = split_rows(_first_output(output), 2)
            self.take(pred_perturbed)
            return _replace_first_output(output, pred_cond)

        def end_of_call(module: nn.Module, args: tuple, output: Any) -> None:
            if torch.compiler.is_compiling():
                return  # a traced call cannot remove hooks; the guider removes them when the call is over
            serving_call = hooks.serving_call()
            if serving_call is None:
                return  # another caller's call ended; this handle's call is still to come
            if serving_call.state.phase in NESTED_PHASES:
                return  # SEG's own perturbed call inside the host's: the host's call ends later
            if serving_call.state.finished:
                hooks.remove()
                return
            # The forward raised: torch is iterating the denoiser's forward-hook dict right now, so our two
            # hooks there (inert without a call in flight) go at the next remove(); every other hook goes now.
            hooks.remove_hooks(keep=(OUTPUT, END_OF_CALL))
            serving_call.state.call = None

        denoiser = hooks.plan.denoiser
        return {
            OUTPUT: denoiser.register_forward_hook(hand_over, with_kwargs=True),
            END_OF_CALL: denoiser.register_forward_hook(end_of_call, always_call=True),
        }
