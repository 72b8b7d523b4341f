"""An independent reference guider: SEG by the definition, through diffusers' guider protocol.

It asks for three batches (cond, uncond, cond again), and during the third call replaces the output of
the chosen attentions' ``norm_q`` by its dense-matrix blur over the image tokens (``reference_dit``),
with the grid read from that call's inputs by the test's own reader. ``forward`` writes out
``uncond + g·(cond − uncond) + s·(cond − perturbed)``. Nothing of the package is used.
"""

from __future__ import annotations

import math

from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput
from reference_dit import _blur_rows


class ReferenceSEGGuider(BaseGuidance):
    _input_predictions = ["pred_cond", "pred_uncond", "pred_cond_seg"]

    @register_to_config
    def __init__(self, guidance_scale, seg_scale, sigma, attentions, read_grid, image_offset=None, temporal_sigma=0.0):
        super().__init__(0.0, 1.0, True)
        self.temporal_sigma = temporal_sigma
        self.guidance_scale, self.seg_scale, self.sigma = guidance_scale, seg_scale, sigma
        self.attentions, self.read_grid = attentions, read_grid
        # attention name → text tokens ahead of the image tokens, or "end": the image tokens end the query
        self.image_offset = image_offset or {}
        self._undo = None

    def _names(self):
        names = [("pred_cond", 0)]
        if self.guidance_scale > 1:
            names.append(("pred_uncond", 1))
        return [*names, ("pred_cond_seg", 0)]

    @property
    def num_conditions(self):
        return len(self._names())

    @property
    def is_conditional(self):
        return self._names()[self._count_prepared - 1][0] != "pred_uncond"

    def prepare_inputs(self, data):
        return [self._prepare_batch(data, index, name) for name, index in self._names()]

    def prepare_inputs_from_block_state(self, data, input_fields):
        return [self._prepare_batch_from_block_state(input_fields, data, index, name) for name, index in self._names()]

    def prepare_models(self, denoiser):
        super().prepare_models(denoiser)
        if self._names()[self._count_prepared - 1][0] != "pred_cond_seg":
            return
        self._undo = blur_norm_q(
            denoiser, self.attentions, self.read_grid, self.sigma, self.image_offset, self.temporal_sigma
        )

    def cleanup_models(self, denoiser):
        if self._undo is not None:
            self._undo()
            self._undo = None

    def forward(self, pred_cond, pred_uncond=None, pred_cond_seg=None):
        pred = pred_cond if pred_uncond is None else pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
        pred = pred + self.seg_scale * (pred_cond - pred_cond_seg)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)


def blur_norm_q(denoiser, attentions, read_grid, sigma, image_offset=None, temporal_sigma=0.0, token_dim=1):
    """For the next calls of ``denoiser``: every row of the chosen attentions' ``norm_q`` output blurred over the
    grid ``read_grid(args, kwargs)`` reads from the call (image tokens after ``image_offset[name]`` text tokens,
    or ending the query with "end"; tokens along ``token_dim``). Returns the function that undoes it."""
    image_offset = image_offset or {}
    grid = {}
    grid_hook = denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: grid.update(hw=read_grid(args, kwargs)), with_kwargs=True
    )
    modules = dict(denoiser.named_modules())
    patched = []
    for name in attentions:
        norm = modules[name].norm_q
        original = norm.forward
        offset = image_offset.get(name, 0)
        norm.forward = lambda q, original=original, offset=offset: _blur_rows(
            original(q),
            slice(None),
            grid["hw"],
            sigma,
            token_dim,
            _offset(offset, q, grid["hw"], token_dim),
            temporal_sigma,
        )
        patched.append(norm)

    def undo():
        for norm in patched:
            del norm.forward
        grid_hook.remove()

    return undo


def _offset(offset, q, grid, token_dim=1):
    return q.shape[token_dim] - math.prod(grid) if offset == "end" else offset
