"""SEG as a diffusers guider (Modular Diffusers), on the same hook engine as the SEG pipelines.

A guider hands the pipeline one batch of inputs per prediction it needs, and the pipeline calls
the denoiser once per batch. This guider asks for the usual CFG batches only (cond, and uncond
when CFG is on): on the cond call, SEG's hooks fork the perturbed rows off after the shared
prefix, blur their queries over the real grid, and hand the perturbed prediction to the guider,
which combines ``uncond + g·(cond − uncond) + s·(cond − perturbed)`` (DESIGN.md §2) in
:meth:`forward`. No third full pass is run — except for denoisers that cannot take extra rows
(Z-Image's per-sample lists, ERNIE-Image's sequence-first blocks): there the guider asks for a
third, cond batch and blurs that whole call, in which the blocks before the first SEG block return what they
computed in the cond call (recorded there by :class:`PrefixRecorder`) when its inputs are the cond call's.

The guider is an entry point: ``prepare_models(denoiser)`` opens the call context (:mod:`..context`)
that lets its hooks act on that denoiser call, and ``cleanup_models`` closes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput
from torch import nn

from ..core.blur import INFINITE_SIGMA_THRESHOLD
from ..core.guidance import SegConfig, rescale_noise_cfg
from ..families import guider_family_names
from ..hooks import HandOverPerturbed, HostStep, SegHooks, fresh_copy
from .caches import cache_enabled, own_context_free_states
from .compiled import unwrap_compiled
from .transformer import attach_seg_to_transformer, seg_layer_names, transformer_family, transformer_replay_plan
from .unet import attach_seg_to_unet

_LAYER_NAMES = ("layers", "seg_guidance_layers", "seg_guidance_config")
# the names of one setting: diffusers' first, then ours
_SETTING_NAMES = (("seg_guidance_scale", "scale"), ("seg_blur_sigma", "blur_sigma"), _LAYER_NAMES)
_UNSET_BY_DEFAULT = {"scale", "blur_sigma", *_LAYER_NAMES}  # None means "not given"

_GUIDER_CALL = HostStep(cfg=False, guidance_scale=1.0, guidance_rescale=0.0, progress=0.0)


class PrefixRecorder:
    """Forward hooks for the guider's cond call of a separate-pass denoiser: keep the call's arguments and the
    output of the last block before the first SEG block in each block list, for the perturbed call to replay."""

    def __init__(self, denoiser: nn.Module, config: SegConfig) -> None:
        model = unwrap_compiled(denoiser)
        family, names = seg_layer_names(model, config)
        prefixes = transformer_replay_plan(model, names, family).prefixes
        self.inputs: tuple[tuple, dict] | None = None
        self.outputs: dict[int, Any] = {}
        self._handles = [denoiser.register_forward_pre_hook(self._keep_inputs, with_kwargs=True)]
        for index, prefix in enumerate(prefixes):
            self._handles.append(prefix[-1].register_forward_hook(self._keeper(index)))
        self.prefixes = len(prefixes)

    def _keep_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.inputs = (args, dict(kwargs))

    def _keeper(self, index: int):
        def keep(module: nn.Module, args: tuple, output: Any) -> None:
            self.outputs[index] = fresh_copy(output)  # the host may add to a block's output in place

        return keep

    def stop(self) -> None:
        """Remove the hooks; what was recorded stays."""
        while self._handles:
            self._handles.pop().remove()

    def recorded(self) -> tuple[dict[int, Any], tuple[tuple, dict] | None]:
        """(outputs, inputs) when every prefix output was recorded, else nothing to replay."""
        if self.prefixes and len(self.outputs) == self.prefixes and self.inputs is not None:
            return self.outputs, self.inputs
        return {}, None


def _layer_specs(layers: Any, seg_guidance_layers: Any, seg_guidance_config: Any) -> tuple | None:
    """Our layer specs from our ``layers`` or diffusers' ``seg_guidance_layers`` / ``seg_guidance_config``."""
    given = [
        name
        for name, value in (
            ("layers", layers),
            ("seg_guidance_layers", seg_guidance_layers),
            ("seg_guidance_config", seg_guidance_config),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(f"Pass only one of {' / '.join(given)}; they all choose the SEG layers.")
    if layers is not None:
        return (layers,) if isinstance(layers, (str, int)) else tuple(layers)
    if seg_guidance_layers is not None:
        indices = [seg_guidance_layers] if isinstance(seg_guidance_layers, int) else list(seg_guidance_layers)
        return tuple(indices)  # block indices of the (single) transformer stack, as in diffusers
    if seg_guidance_config is not None:
        configs = seg_guidance_config if isinstance(seg_guidance_config, (list, tuple)) else [seg_guidance_config]
        specs: list[Any] = []
        for config in configs:
            values = config if isinstance(config, dict) else vars(config)
            indices = values.get("indices")
            indices = [indices] if isinstance(indices, int) else list(indices)
            fqn = values.get("fqn", "auto")
            specs += indices if fqn == "auto" else [f"{fqn}.{index}" for index in indices]
        return tuple(specs)
    return None


class SmoothedEnergyGuidance(BaseGuidance):
    """Smoothed Energy Guidance for Modular Diffusers pipelines: a drop-in for
    ``diffusers.guiders.SmoothedEnergyGuidance`` that really blurs, over the real token grid.

    Args (diffusers' names, with their documented meaning):
        guidance_scale: CFG scale ``g``; CFG is off at 1 (at 0 with ``use_original_formulation``).
        seg_guidance_scale: SEG scale ``s`` (>= 0; 0 turns SEG off and adds no work).
        seg_blur_sigma: Gaussian σ over the attention grid; above ``seg_blur_threshold_inf``: uniform queries.
        seg_blur_threshold_inf: σ above this is infinite (9999 as in the official SEG; it may only be raised
            up to the point where this engine's own threshold, 9999, would already blur uniformly).
        seg_guidance_start, seg_guidance_stop: SEG runs on steps ``int(start·n) <= i < int(stop·n)``, the
            rule of every diffusers guider (step 0 included, which diffusers' own SEG guider skips).
        seg_guidance_layers: transformer block indices (ints), as in diffusers.
        seg_guidance_config: diffusers' ``SmoothedEnergyGuidanceConfig`` (or its dict / a list of them):
            ``indices`` of blocks, in the stack named by ``fqn`` (``"auto"``: the model's one stack).
        guidance_rescale: rescale towards the std of the cond prediction (Lin et al. 2023, Sec. 3.4).
        use_original_formulation: CFG as ``cond + g·(cond − uncond)`` instead of ``uncond + g·(cond − uncond)``.
        start, stop: CFG runs on steps ``int(start·n) <= i < int(stop·n)``, as in ``ClassifierFreeGuidance``.
        enabled: False turns all guidance off (with a base guider: SEG's own term; the base keeps its switch).
        base_guider: another diffusers guider to stack SEG on (APG, CFG-Zero*, PAG, skip-layer guidance, …; None:
            the built-in CFG above). It asks for its own batches and combines them exactly as alone, state and
            all; SEG adds ``s·(cond − perturbed)`` to its prediction, its rows forked inside the base's cond call
            where the denoiser allows. The CFG settings above are then the base's own business: set them on it.
    Our own names, usable instead: ``scale`` (= ``seg_guidance_scale``), ``blur_sigma``
    (= ``seg_blur_sigma``), ``temporal_sigma`` (video: σ along time, 0 by default), ``layers``
    (our grammar: ``["mid"]``, ``"d4-d9"``, ``"blocks.7"``, …;
    default: the family's own default, the mid block for UNets and the middle block for transformers).

    Every name is the live setting, whichever name set it: assigning ``seg_guidance_scale`` (or ``scale``,
    ``seg_blur_sigma``, ``layers``, …) takes effect from the next step, and ``new(**overrides)`` applies its
    overrides under either name. Without CFG the prediction is ``cond + s·(cond − perturbed)``, as in the
    official SEG pipeline; the perturbed prediction always takes the cond inputs.
    """

    _input_predictions = ["pred_cond", "pred_uncond", "pred_cond_seg"]
    ignore_for_config = ["base_guider"]  # a guider object, carried by new(); see save_pretrained

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 7.5,
        seg_guidance_scale: float = 3.0,
        seg_blur_sigma: float = 9999999.0,
        seg_blur_threshold_inf: float = 9999.0,
        seg_guidance_start: float = 0.0,
        seg_guidance_stop: float = 1.0,
        seg_guidance_layers: int | list[int] | None = None,
        seg_guidance_config: Any = None,
        guidance_rescale: float = 0.0,
        use_original_formulation: bool = False,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
        scale: float | None = None,
        blur_sigma: float | None = None,
        layers: str | Sequence[str] | None = None,
        temporal_sigma: float = 0.0,
        base_guider: BaseGuidance | None = None,
    ) -> None:
        super().__init__(start, stop, enabled)
        _check_base_guider(base_guider, guidance_rescale, use_original_formulation)
        self.base_guider = base_guider
        self.guidance_scale = guidance_scale
        self.guidance_rescale = guidance_rescale
        self.use_original_formulation = use_original_formulation
        self.seg_blur_threshold_inf = seg_blur_threshold_inf
        self.seg = SegConfig(
            scale=seg_guidance_scale if scale is None else scale,
            blur_sigma=self._uniform_above_threshold(seg_blur_sigma if blur_sigma is None else blur_sigma),
            layers=_layer_specs(layers, seg_guidance_layers, seg_guidance_config),
            start=seg_guidance_start,
            end=seg_guidance_stop,
            temporal_sigma=temporal_sigma,
        )
        # one name per setting in the config (diffusers' where it has one), so `new()` and saving see the live value
        self.register_to_config(
            seg_guidance_scale=self.seg.scale,
            scale=None,
            seg_blur_sigma=seg_blur_sigma if blur_sigma is None else blur_sigma,
            blur_sigma=None,
        )
        self._hooks: SegHooks | None = None
        self._call_token = None  # the call context opened by prepare_models
        self._pred_perturbed: torch.Tensor | None = None
        self._separate_pass = False  # the denoiser cannot take perturbed rows inside the cond call
        self._recorder: PrefixRecorder | None = None  # the cond call's prefix, for the separate perturbed call
        self._planned: tuple[list, Any] | None = None  # this step's batch list and a maker of one more batch
        self._cache_states: contextlib.ExitStack | None = None  # the separate batch's own cache states

    # every configured name is the live setting, whichever name set it ------------------------------------
    def _uniform_above_threshold(self, sigma: float) -> float:
        if INFINITE_SIGMA_THRESHOLD < sigma <= self.seg_blur_threshold_inf:
            raise ValueError(
                f"seg_blur_sigma={sigma} lies between 9999 and seg_blur_threshold_inf={self.seg_blur_threshold_inf}: "
                "a finite blur that wide is not offered (the official SEG treats σ > 9999 as uniform queries)."
            )
        return math.inf if sigma > self.seg_blur_threshold_inf else sigma

    def _update(self, config: dict[str, Any], **seg_changes: Any) -> None:
        self.seg = dataclasses.replace(self.seg, **seg_changes)  # validates, as on construction
        self.register_to_config(**config)

    @property
    def seg_guidance_scale(self) -> float:
        """SEG's scale ``s`` (also ``scale``); 0 turns SEG off from the next step on."""
        return self.seg.scale

    @seg_guidance_scale.setter
    def seg_guidance_scale(self, value: float) -> None:
        self._update({"seg_guidance_scale": value, "scale": None}, scale=value)

    scale = seg_guidance_scale

    @property
    def seg_blur_sigma(self) -> float:
        """The Gaussian's σ (also ``blur_sigma``); ``inf`` for uniform queries."""
        return self.seg.blur_sigma

    @seg_blur_sigma.setter
    def seg_blur_sigma(self, value: float) -> None:
        self._update({"seg_blur_sigma": value, "blur_sigma": None}, blur_sigma=self._uniform_above_threshold(value))

    blur_sigma = seg_blur_sigma

    @property
    def seg_guidance_start(self) -> float:
        return self.seg.start

    @seg_guidance_start.setter
    def seg_guidance_start(self, value: float) -> None:
        self._update({"seg_guidance_start": value}, start=value)

    @property
    def seg_guidance_stop(self) -> float:
        return self.seg.end

    @seg_guidance_stop.setter
    def seg_guidance_stop(self, value: float) -> None:
        self._update({"seg_guidance_stop": value}, end=value)

    @property
    def temporal_sigma(self) -> float:
        return self.seg.temporal_sigma

    @temporal_sigma.setter
    def temporal_sigma(self, value: float) -> None:
        self._update({"temporal_sigma": value}, temporal_sigma=value)

    def _layer_setting(name: str) -> property:  # noqa: N805 - builds the three layer-choosing properties
        def get(self: SmoothedEnergyGuidance) -> Any:
            return self.config.get(name)

        def set_(self: SmoothedEnergyGuidance, value: Any) -> None:
            chosen = dict.fromkeys(_LAYER_NAMES) | {name: value}
            self._update(chosen, layers=_layer_specs(**chosen))

        return property(get, set_, doc=f"``{name}`` as configured (setting it replaces the other layer choices).")

    layers = _layer_setting("layers")
    seg_guidance_layers = _layer_setting("seg_guidance_layers")
    seg_guidance_config = _layer_setting("seg_guidance_config")
    del _layer_setting

    def new(self, **kwargs: Any) -> SmoothedEnergyGuidance:
        """A copy with ``kwargs`` applied; a setting overridden under any of its names replaces the others."""
        # every stored value is the live one (diffusers would fall back to defaults for names first left unset)
        config = {name: value for name, value in self.config.items() if name != "_use_default_values"}
        for names in _SETTING_NAMES:
            if any(name in kwargs for name in names):
                config.update({name: None for name in names if name in _UNSET_BY_DEFAULT and name not in kwargs})
        # the base is no config entry (ignore_for_config): a fresh copy of it goes to the new guider directly
        base = kwargs.pop("base_guider", None if self.base_guider is None else self.base_guider.new())
        guider = self.__class__.from_config(config, **kwargs)
        _check_base_guider(base, guider.guidance_rescale, guider.use_original_formulation)
        guider.base_guider = base
        return guider

    def save_pretrained(self, save_directory: Any, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Save SEG's settings (diffusers' guider config); a guider stacked on a base guider is refused, since
        the config cannot hold the base: save the base guider and these settings apart, and stack them again."""
        if self.base_guider is not None:
            raise ValueError(
                f"This SEG guider is stacked on {type(self.base_guider).__name__}, which its config cannot hold: "
                "save the base guider (its own save_pretrained) and SEG's settings (a copy without the base: "
                "guider.new(base_guider=None)) apart, and pass base_guider= again after loading."
            )
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    # which predictions this step needs ---------------------------------------------------------
    def _within(self, start: float, stop: float) -> bool:
        """diffusers' guider window: steps ``int(start·n) <= i < int(stop·n)``; before the loop (no step yet)
        every window counts as open, as diffusers' guiders count their conditions there."""
        if self._num_inference_steps is None or self._step is None:
            return True
        steps = self._num_inference_steps
        return int(start * steps) <= self._step < int(stop * steps)

    def _is_cfg_enabled(self) -> bool:
        if not self._enabled or not self._within(self._start, self._stop):
            return False
        neutral = 0.0 if self.use_original_formulation else 1.0
        return not math.isclose(self.guidance_scale, neutral)

    def _is_seg_enabled(self) -> bool:
        return self._enabled and self.seg.enabled and self._within(self.seg.start, self.seg.end)

    @property
    def num_conditions(self) -> int:
        if self.base_guider is None:
            return len(self._batches())
        return self.base_guider.num_conditions + int(self._separate_pass and self._is_seg_enabled())

    @property
    def is_conditional(self) -> bool:
        batch = self._current_batch()
        if self.base_guider is not None and batch != "pred_cond_seg":
            return self.base_guider.is_conditional
        return batch != "pred_uncond"

    def prepare_inputs(self, data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[Any]:
        base = None if self.base_guider is None else lambda: self.base_guider.prepare_inputs(data)
        return self._plan(lambda index, name: self._prepare_batch(data, index, name), base)

    def prepare_inputs_from_block_state(self, data: Any, input_fields: dict[str, Any]) -> list[Any]:
        base = None
        if self.base_guider is not None:
            base = lambda: self.base_guider.prepare_inputs_from_block_state(data, input_fields)  # noqa: E731
        return self._plan(
            lambda index, name: self._prepare_batch_from_block_state(input_fields, data, index, name), base
        )

    def _plan(self, make_batch: Any, base_batches: Any = None) -> list[Any]:
        """This step's batches: ours (cond, uncond), or the base guider's own, in its order; then SEG's separate
        perturbed batch where the denoiser needs one."""
        if base_batches is None:
            batches = [make_batch(index, name) for index, name in self._batches()]
        else:
            batches = list(base_batches())
            if self._separate_pass and self._is_seg_enabled():
                batches.append(make_batch(0, "pred_cond_seg"))
            if "pred_cond" not in self._names_of(batches):
                raise ValueError(
                    f"The base guider {type(self.base_guider).__name__} asked for no cond batch ('pred_cond') on "
                    "this step, and SEG's term needs the cond prediction."
                )
        self._planned = (batches, make_batch)
        return batches

    def _names_of(self, batches: list[Any]) -> list[str]:
        return [getattr(batch, self._identifier_key) for batch in batches]

    def _learn_family(self, denoiser: nn.Module) -> None:
        """Whether the denoiser needs a separate perturbed batch; on the first step, before any denoiser
        reached the guider, the batch joins the list the pipeline is iterating (its cond inputs)."""
        family = transformer_family(unwrap_compiled(denoiser))
        separate = family is not None and not family.forks
        if separate and not self._separate_pass and self._planned is not None and self._is_seg_enabled():
            batches, make_batch = self._planned
            batches.append(make_batch(0, "pred_cond_seg"))
        self._separate_pass = separate

    def _batches(self) -> list[tuple[int, str]]:
        batches = [(0, "pred_cond")] + ([(1, "pred_uncond")] if self._is_cfg_enabled() else [])
        if self._separate_pass and self._is_seg_enabled():
            batches.append((0, "pred_cond_seg"))  # cond inputs, blurred as a whole call
        return batches

    def _current_batch(self) -> str:
        """The prediction the denoiser call being prepared makes (the first before any is prepared)."""
        if self.base_guider is not None and self._planned is not None:
            names = self._names_of(self._planned[0])
        else:
            names = [name for _, name in self._batches()]
        return names[min(max(self._count_prepared, 1), len(names)) - 1]

    # the denoiser calls ---------------------------------------------------------------------------
    def prepare_models(self, denoiser: nn.Module) -> None:
        super().prepare_models(denoiser)
        self._remove_hooks()  # an interrupted earlier call may have left its hooks
        self._learn_family(denoiser)
        batch = self._current_batch()
        model = unwrap_compiled(denoiser)
        if self.base_guider is not None and batch != "pred_cond_seg":
            self.base_guider.prepare_models(denoiser)  # the base's own batch: its hooks, its count
        if batch == "pred_cond":
            self._pred_perturbed = None
            self._recorder = None
            # under a cache, the perturbed batch has a cache state of its own and replays nothing
            separate = self._is_seg_enabled() and self._separate_pass and not cache_enabled(model)
            if separate and transformer_family(denoiser) is not None:
                self._recorder = PrefixRecorder(denoiser, self.seg)
        if self._is_seg_enabled() and batch == ("pred_cond_seg" if self._separate_pass else "pred_cond"):
            # the guider decides the steps itself: its hooks get the settings without a window of their own
            every_step = dataclasses.replace(self.seg, start=0.0, end=1.0)
            self._hooks = attach_seg_hooks(denoiser, every_step, self._receive_perturbed, scope=self)
            # the guider's entry point: its hooks act on the denoiser call it prepared, and on no other
            call = self._hooks.new_call(perturb_whole_call=batch == "pred_cond_seg")
            if batch == "pred_cond_seg" and self._recorder is not None:
                call.state.recorded, call.state.perturbed_inputs = self._recorder.recorded()
                self._recorder = None  # the call holds what it needs; nothing else keeps it
            self._call_token = self._hooks.open(call)
            if batch == "pred_cond_seg":
                # the pipeline runs this batch in its cache context; caches that ignore contexts get SEG's state
                self._cache_states = contextlib.ExitStack()
                self._cache_states.enter_context(own_context_free_states(model))

    def cleanup_models(self, denoiser: nn.Module) -> None:
        self._remove_hooks()
        if self.base_guider is not None and self._current_batch() != "pred_cond_seg":
            self.base_guider.cleanup_models(denoiser)

    def set_state(self, step: int, num_inference_steps: int, timestep: torch.Tensor) -> None:
        super().set_state(step, num_inference_steps, timestep)
        if self.base_guider is not None:
            self.base_guider.set_state(step, num_inference_steps, timestep)
        self._remove_hooks()
        self._pred_perturbed = None
        self._recorder = None  # a new step: the last step's record is stale

    def _remove_hooks(self) -> None:
        if self._recorder is not None:
            self._recorder.stop()  # after the cond call: its record waits for the perturbed call
        # the hooks also remove themselves when their denoiser call ends, raised or not
        if self._cache_states is not None:
            self._cache_states.close()
            self._cache_states = None
        if self._hooks is not None:
            self._hooks.close(self._call_token)
            self._call_token = None
            self._hooks.remove()
            self._hooks = None

    def _receive_perturbed(self, pred_perturbed: torch.Tensor) -> None:
        self._pred_perturbed = pred_perturbed

    def __call__(self, data: list[Any]) -> GuiderOutput:
        if self.base_guider is None:
            return super().__call__(data)
        # the base guider combines its own batches exactly as alone; SEG's term goes on top
        names = self._names_of(data)
        own = [batch for name, batch in zip(names, data, strict=True) if name != "pred_cond_seg"]
        if "pred_cond_seg" in names:
            self._pred_perturbed = data[names.index("pred_cond_seg")].noise_pred
        out = self.base_guider(own)
        pred = self._add_seg(out.pred, data[names.index("pred_cond")].noise_pred)
        self._end_step()
        return GuiderOutput(pred=pred, pred_cond=out.pred_cond, pred_uncond=out.pred_uncond)

    def forward(
        self,
        pred_cond: torch.Tensor,
        pred_uncond: torch.Tensor | None = None,
        pred_cond_seg: torch.Tensor | None = None,
    ) -> GuiderOutput:
        if pred_cond_seg is not None:  # the separate perturbed batch
            self._pred_perturbed = pred_cond_seg
        pred = pred_cond
        if self._is_cfg_enabled():
            base = pred_cond if self.use_original_formulation else pred_uncond
            pred = base + self.guidance_scale * (pred_cond - pred_uncond)
        pred = self._add_seg(pred, pred_cond)
        if self.guidance_rescale > 0.0:
            pred = rescale_noise_cfg(pred, pred_cond, self.guidance_rescale)
        self._end_step()
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)

    def _add_seg(self, pred: torch.Tensor, pred_cond: torch.Tensor) -> torch.Tensor:
        """``pred + s·(cond − perturbed)`` on the steps SEG runs; ``pred`` itself on the others."""
        if not self._is_seg_enabled():
            return pred
        if self._pred_perturbed is None:
            raise RuntimeError(
                "SEG is active on this step but the denoiser made no perturbed prediction: the pipeline did "
                "not call guider.prepare_models(denoiser) before the cond prediction."
            )
        return pred + self.seg.scale * (pred_cond - self._pred_perturbed.to(pred_cond.dtype))

    def _end_step(self) -> None:
        self._pred_perturbed = None
        if self._num_inference_steps is not None and self._step == self._num_inference_steps - 1:
            # the run is over: the next run's pipeline counts its conditions before its first step, and must
            # not see this run's last step (diffusers' own guiders do, and drop the negative prompt there)
            self._step = self._num_inference_steps = None


def _check_base_guider(base: Any, guidance_rescale: float, use_original_formulation: bool) -> None:
    """Refuse a base guider SEG cannot stack on, and CFG settings of ours that a base would leave unused."""
    if base is None:
        return
    from diffusers.guiders import SmoothedEnergyGuidance as DiffusersSEG

    if not isinstance(base, BaseGuidance):
        raise TypeError(f"base_guider must be a diffusers guider (a BaseGuidance), got {type(base).__name__}.")
    if isinstance(base, (SmoothedEnergyGuidance, DiffusersSEG)):
        raise ValueError("base_guider is a SEG guider already: SEG stacks once; set its scale instead.")
    if "pred_cond" not in (type(base)._input_predictions or []):
        raise ValueError(
            f"{type(base).__name__} makes no cond prediction ('pred_cond' is not among its predictions), which "
            "SEG's term s·(cond − perturbed) needs."
        )
    if guidance_rescale or use_original_formulation:
        raise ValueError(
            "guidance_rescale and use_original_formulation belong to the base guider when one is given: set them "
            f"on the {type(base).__name__}."
        )


def guider_families() -> list[str]:
    """The denoiser families the guider serves (every modular pipeline built on one of them)."""
    return guider_family_names()


def attach_seg_hooks(denoiser: nn.Module, config: SegConfig, take_perturbed: Any, scope: Any) -> SegHooks:
    """SEG hooks on any supported denoiser for one call whose every row is a cond row to perturb."""
    model = unwrap_compiled(denoiser)
    read_host = lambda timestep, call: _GUIDER_CALL  # noqa: E731 - the guider decides steps itself
    per_call = dict(scope=scope, output=HandOverPerturbed(take_perturbed))
    if any(cls.__name__ == "UNet2DConditionModel" for cls in type(model).__mro__):
        return attach_seg_to_unet(denoiser, config, read_host, **per_call)
    if transformer_family(model) is not None:
        return attach_seg_to_transformer(denoiser, config, read_host, **per_call)
    raise ValueError(
        f"SEG's guider does not know the denoiser {type(model).__name__}; it serves the denoisers of "
        f"{', '.join(guider_family_names())}."
    )
