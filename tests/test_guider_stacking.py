"""SEG stacked on diffusers' other guiders (``base_guider=``): the base guider decides its batches and combines
its predictions exactly as alone (its state, such as APG's momentum, intact), and SEG adds ``s·(cond − perturbed)``
on top, its rows still forked inside the cond call. Checked on modular SDXL and modular LTX-Video against an
independent reference (``reference_stacked``): the base guider alone, plus a perturbed batch blurred by the
definition."""

from __future__ import annotations

import pytest
import torch
from diffusers import guiders
from reference_guider import blur_norm_q
from reference_stacked import ReferenceStackedGuider

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, TOLERANCE, latents, layer_names, no_hooks_left
from reference import blur_unet_layers
from smoothed_energy_guidance.testing import diffusers_base_guiders, tiny_sdxl_components

pytestmark = pytest.mark.filterwarnings("ignore:Guiders are currently an experimental feature")

SIGMA = 2.0


base_guiders = diffusers_base_guiders  # each diffusers guider SEG stacks on, by name


BASES = list(base_guiders("transformer_blocks"))


def sdxl_case():
    """(run(guider) → latents, the reference's blur of a denoiser, the denoiser, SEG layer arguments, the base
    guiders for it)."""
    from test_guider import modular

    parts = tiny_sdxl_components(seed=0)
    names = layer_names(parts["unet"], "mid_block")  # the guider's default SEG layers on a UNet

    def run(guider):
        pipe = modular("StableDiffusionXLAutoBlocks", parts, guider)
        return pipe(prompt="a cube", num_inference_steps=3, latents=latents(1, 16, 16), output="latents")

    bases = base_guiders("mid_block.attentions.0.transformer_blocks")
    return run, lambda unet: blur_unet_layers(unet, names, SIGMA), parts["unet"], {}, bases


def ltx_case():
    from test_video import modular_ltx_denoise

    pipe, run_steps = modular_ltx_denoise()

    def read_grid(args, kwargs):
        return int(kwargs["num_frames"]), int(kwargs["height"]), int(kwargs["width"])

    def blur(transformer):
        return blur_norm_q(transformer, ["transformer_blocks.1.attn1"], read_grid, SIGMA)

    run = lambda guider: run_steps(guider, steps=3)  # noqa: E731
    return run, blur, pipe.transformer, {}, base_guiders("transformer_blocks")


def qwen_image_case():
    from test_guider_families import modular_denoise

    pipe, run, names, read_grid, offsets = modular_denoise("qwen-image")
    blur = lambda transformer: blur_norm_q(transformer, names, read_grid, SIGMA, offsets)  # noqa: E731
    return run, blur, pipe.transformer, {}, base_guiders("transformer_blocks")


def sd3_case():
    from test_guider import modular

    from smoothed_energy_guidance.testing import tiny_sd3_components

    parts = tiny_sd3_components(seed=0)
    layer = "transformer_blocks.1.attn"

    def run(guider):
        noise = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(0))
        call = dict(prompt="a cube", num_inference_steps=3, height=32, width=48, max_sequence_length=16)
        return modular("StableDiffusion3AutoBlocks", parts, guider)(**call, latents=noise, output="latents")

    def read_grid(args, kwargs):
        hidden = kwargs["hidden_states"]
        return hidden.shape[-2] // 2, hidden.shape[-1] // 2  # 2 × 2 patches

    def blur(transformer):  # SD3's processor normalises queries as (batch, heads, tokens, dim)
        return blur_norm_q(transformer, [layer], read_grid, SIGMA, token_dim=2)

    return run, blur, parts["transformer"], dict(layers=[layer]), base_guiders("transformer_blocks")


def ernie_image_case():
    """ERNIE-Image takes no extra rows: SEG's perturbed prediction is a batch of its own after the base's."""
    from test_guider_image_families import modular_denoise

    family, run, read_grid = modular_denoise("ernie-image")
    offsets = {family.default_layer: family.image_offset}
    blur = lambda model: blur_norm_q(model, [family.default_layer], read_grid, SIGMA, offsets)  # noqa: E731
    return run, blur, family.model, {}, base_guiders("layers")


FAMILIES = {
    "sdxl": sdxl_case,
    "ltx-video": ltx_case,
    "qwen-image": qwen_image_case,
    "sd3": sd3_case,
    "ernie-image": ernie_image_case,
}
# Each base on SDXL (but magnitude-aware guidance, which diffusers fails on 4-d latents) and on a transformer
# family diffusers runs it on: frequency-decoupled guidance needs 4-d latents (SD3), PAG's attention-score skip
# a registered attention processor (Qwen-Image's)
CASES = [("sdxl", name) for name in BASES if name != "magnitude-aware"] + [
    *[("ltx-video", name) for name in BASES if name not in ("frequency-decoupled", "pag")],
    ("qwen-image", "pag"),
    ("sd3", "frequency-decoupled"),
    ("ernie-image", "apg"),
]


@pytest.mark.parametrize("family, base", CASES)
def test_seg_on_a_base_guider_matches_the_reference_and_is_the_base_alone_at_scale_zero(family, base):
    run, blur, denoiser, layer_args, bases = FAMILIES[family]()
    make_base = bases[base]
    alone = run(make_base())
    assert torch.equal(run(seg.SmoothedEnergyGuidance(scale=0.0, base_guider=make_base())), alone)
    ours = run(seg.SmoothedEnergyGuidance(scale=3.0, blur_sigma=SIGMA, base_guider=make_base(), **layer_args))
    reference = run(ReferenceStackedGuider(make_base(), 3.0, blur))
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (ours - alone).abs().max() > MIN_EFFECT
    assert no_hooks_left(denoiser)


def test_on_plain_cfg_it_is_the_built_in_cfg_bit_for_bit():
    run, *_ = sdxl_case()
    built_in = run(seg.SmoothedEnergyGuidance(guidance_scale=5.0, blur_sigma=SIGMA))
    stacked = run(seg.SmoothedEnergyGuidance(blur_sigma=SIGMA, base_guider=guiders.ClassifierFreeGuidance(5.0)))
    assert torch.equal(built_in, stacked)


def test_a_base_with_batches_of_its_own_keeps_them_and_seg_rows_join_the_cond_call():
    """PAG asks for cond, uncond and (from step 1 on, by diffusers' window rule) its own perturbed batch; SEG
    adds no batch, forking its rows inside the UNet's cond call: two rows there, one in each other call."""
    run, _, unet, _, bases = sdxl_case()
    rows: list[int] = []
    handle = unet.conv_out.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        run(bases["pag"]())
        alone, rows[:] = list(rows), []
        run(seg.SmoothedEnergyGuidance(blur_sigma=SIGMA, base_guider=bases["pag"]()))
    finally:
        handle.remove()
    assert alone == [1, 1] + [1, 1, 1] * 2
    assert rows == [2, 1] + [2, 1, 1] * 2


def test_the_base_guiders_state_lives_on_across_steps():
    """APG's momentum is the base's own: after a run it holds the running average the base alone would hold."""
    run, *_, bases = sdxl_case()
    alone, stacked = bases["apg"](), bases["apg"]()
    run(alone)
    run(seg.SmoothedEnergyGuidance(scale=0.0, base_guider=stacked))
    assert torch.equal(alone.momentum_buffer.running_average, stacked.momentum_buffer.running_average)


class _NoCond(guiders.ClassifierFreeGuidance):
    _input_predictions = ["pred_uncond", "pred_other"]


@pytest.mark.parametrize(
    "base, extra, error",
    [
        (object(), {}, "must be a diffusers guider"),
        (seg.SmoothedEnergyGuidance(), {}, "SEG stacks once"),
        (guiders.SmoothedEnergyGuidance(seg_guidance_layers=[0]), {}, "SEG stacks once"),
        (_NoCond(), {}, "no cond prediction"),
        (guiders.AdaptiveProjectedGuidance(), dict(guidance_rescale=0.5), "belong to the base guider"),
    ],
    ids=["not-a-guider", "ours", "diffusers-seg", "no-cond", "our-rescale"],
)
def test_unsupported_bases_are_refused_at_construction(base, extra, error):
    with pytest.raises((TypeError, ValueError), match=error):
        seg.SmoothedEnergyGuidance(base_guider=base, **extra)


def test_new_carries_a_fresh_copy_of_the_base_and_saving_a_stack_is_refused(tmp_path):
    stacked = seg.SmoothedEnergyGuidance(scale=2.0, base_guider=guiders.AdaptiveProjectedGuidance(guidance_scale=6.0))
    copy = stacked.new(blur_sigma=3.0)
    assert isinstance(copy.base_guider, guiders.AdaptiveProjectedGuidance)
    assert copy.base_guider is not stacked.base_guider and copy.base_guider.guidance_scale == 6.0
    assert (copy.seg_guidance_scale, copy.seg_blur_sigma) == (2.0, 3.0)
    with pytest.raises(ValueError, match="save the base guider"):
        stacked.save_pretrained(tmp_path)
    stacked.new(base_guider=None).save_pretrained(tmp_path)  # SEG's settings alone save as before
