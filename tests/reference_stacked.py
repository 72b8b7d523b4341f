"""An independent reference for SEG stacked on another guider, through diffusers' guider protocol.

It asks for the base guider's own batches, in its order and with its hooks, then one more batch on the cond
inputs during which ``blur(denoiser)`` makes the chosen attentions blur their queries by the definition (the
dense reference blurs of ``reference`` / ``reference_guider``). ``__call__`` hands the base guider its own
batches and adds ``s·(cond − perturbed)`` to its prediction. Nothing of the package is used.
"""

from __future__ import annotations

from collections.abc import Callable

from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput

PERTURBED = "pred_cond_seg_reference"


class ReferenceStackedGuider(BaseGuidance):
    _input_predictions = ["pred_cond", PERTURBED]

    @register_to_config
    def __init__(self, base: BaseGuidance, seg_scale: float, blur: Callable) -> None:
        super().__init__(0.0, 1.0, True)
        self.base, self.seg_scale, self.blur = base, seg_scale, blur
        self._undo = None

    def set_state(self, step, num_inference_steps, timestep) -> None:
        super().set_state(step, num_inference_steps, timestep)
        self.base.set_state(step, num_inference_steps, timestep)

    @property
    def num_conditions(self) -> int:
        return self.base.num_conditions + 1

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared > self.base.num_conditions or self.base.is_conditional

    def prepare_inputs(self, data):
        return [*self.base.prepare_inputs(data), self._prepare_batch(data, 0, PERTURBED)]

    def prepare_inputs_from_block_state(self, data, input_fields):
        batches = self.base.prepare_inputs_from_block_state(data, input_fields)
        return [*batches, self._prepare_batch_from_block_state(input_fields, data, 0, PERTURBED)]

    def prepare_models(self, denoiser) -> None:
        super().prepare_models(denoiser)
        if self._count_prepared <= self.base.num_conditions:
            self.base.prepare_models(denoiser)
        else:
            self._undo = self.blur(denoiser)

    def cleanup_models(self, denoiser) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None
        else:
            self.base.cleanup_models(denoiser)

    def __call__(self, data) -> GuiderOutput:
        names = [getattr(batch, self._identifier_key) for batch in data]
        perturbed = data[names.index(PERTURBED)].noise_pred
        cond = data[names.index("pred_cond")].noise_pred
        out = self.base([batch for name, batch in zip(names, data, strict=True) if name != PERTURBED])
        pred = out.pred + self.seg_scale * (cond - perturbed)
        return GuiderOutput(pred=pred, pred_cond=out.pred_cond, pred_uncond=out.pred_uncond)
