"""The guider as a true drop-in for diffusers' guiders: the same window rule, the same number of conditions
before the loop, every configured name live, ``new()`` overrides applied, threads kept apart, and no hook left
behind by any exception, Ctrl-C included."""

from __future__ import annotations

import threading

import pytest
import torch
from diffusers import ClassifierFreeGuidance, StableDiffusionXLPipeline

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, latents, make_pipe, no_hooks_left
from smoothed_energy_guidance.testing import tiny_sdxl_components

pytestmark = pytest.mark.filterwarnings("ignore:Guiders are currently an experimental feature")


@pytest.fixture(scope="module")
def parts():
    return tiny_sdxl_components(seed=1)


def modular(parts: dict, guider):
    from test_guider import modular as build

    return build("StableDiffusionXLAutoBlocks", parts, guider)


def run(pipe, steps: int = 3):
    return pipe(prompt="a cube", num_inference_steps=steps, latents=latents(1, 16, 16), output="latents")


def unet_calls(unet, job) -> list[int]:
    rows: list[int] = []
    handle = unet.conv_out.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        job()
    finally:
        handle.remove()
    return rows


@pytest.mark.parametrize(("start", "stop"), [(0.0, 0.5), (0.0, 0.7), (0.34, 1.0), (0.5, 1.0), (0.2, 0.9)])
def test_cfg_window_follows_diffusers_rule_bit_for_bit_at_seg_scale_zero(parts, start, stop):
    """int(start·n) <= i < int(stop·n), as every diffusers guider counts; also with start > 0 (no crash)."""

    def cfg_run():  # diffusers' guider keeps its last step's state, so its second run can crash: a fresh one
        return run(modular(parts, ClassifierFreeGuidance(guidance_scale=5.0, start=start, stop=stop)))

    expected_calls = unet_calls(parts["unet"], cfg_run)
    expected = cfg_run()
    ours = modular(parts, seg.SmoothedEnergyGuidance(guidance_scale=5.0, seg_guidance_scale=0, start=start, stop=stop))
    assert unet_calls(parts["unet"], lambda: run(ours)) == expected_calls
    assert torch.equal(run(ours), expected)  # the same pipeline again: ours starts each run afresh


def test_num_conditions_before_the_loop_matches_diffusers(parts):
    ours = seg.SmoothedEnergyGuidance(guidance_scale=5.0, start=0.5)
    theirs = ClassifierFreeGuidance(guidance_scale=5.0, start=0.5)
    assert ours.num_conditions == theirs.num_conditions == 2
    with_seg = modular(parts, seg.SmoothedEnergyGuidance(guidance_scale=5.0, start=0.5, blur_sigma=1.0))
    assert run(with_seg).isfinite().all()  # the negative embeddings reach the UNet


def test_seg_window_follows_diffusers_rule_and_includes_step_zero(parts):
    guider = seg.SmoothedEnergyGuidance(guidance_scale=5.0, seg_guidance_start=0.25, seg_guidance_stop=0.75)
    pipe = modular(parts, guider)
    # 4 steps: SEG on steps int(0.25·4) = 1 <= i < int(0.75·4) = 3: the cond call has 2 rows there
    assert unet_calls(parts["unet"], lambda: run(pipe, 4)) == [1, 1, 2, 1, 2, 1, 1, 1]
    whole = modular(parts, seg.SmoothedEnergyGuidance(guidance_scale=5.0, seg_guidance_start=0.0))
    assert unet_calls(parts["unet"], lambda: run(whole, 4))[:2] == [2, 1]  # step 0 included


def test_every_name_is_the_live_setting():
    guider = seg.SmoothedEnergyGuidance(scale=3, blur_sigma=4)
    copy = guider.new(seg_guidance_scale=0, seg_blur_sigma=1)
    assert (copy.seg_guidance_scale, copy.scale, copy.seg_blur_sigma, copy.blur_sigma) == (0, 0, 1, 1)
    assert copy.seg.scale == 0 and copy.seg.blur_sigma == 1
    again = copy.new(scale=2)
    assert again.seg.scale == 2 and again.seg_guidance_scale == 2 and again.seg.blur_sigma == 1
    guider.seg_guidance_scale = 0.0
    assert guider.seg.scale == 0 and guider.scale == 0 and guider.config.seg_guidance_scale == 0
    guider.blur_sigma = 2.0
    assert guider.seg.blur_sigma == 2.0 and guider.seg_blur_sigma == 2.0
    guider.seg_guidance_start, guider.seg_guidance_stop = 0.2, 0.6
    assert (guider.seg.start, guider.seg.end) == (0.2, 0.6)
    layered = seg.SmoothedEnergyGuidance(seg_guidance_layers=[1]).new(layers=["mid"])
    assert layered.seg.layers == ("mid",) and layered.seg_guidance_layers is None
    with pytest.raises(ValueError, match="must be >= 0"):
        guider.scale = -1.0


def test_assigning_scale_zero_turns_seg_off_in_a_run(parts):
    cfg = modular(parts, ClassifierFreeGuidance(guidance_scale=5.0))
    guider = seg.SmoothedEnergyGuidance(guidance_scale=5.0, blur_sigma=1.0)
    pipe = modular(parts, guider)
    with_seg = run(pipe)
    guider.seg_guidance_scale = 0.0
    assert torch.equal(run(pipe), run(cfg))
    assert (with_seg - run(cfg)).abs().max() > MIN_EFFECT


def test_two_modular_pipelines_sharing_a_unet_in_two_threads(parts):
    """Our guider in one thread, diffusers' CFG guider in another, one UNet: each gets its own result."""
    seg_pipe = modular(parts, seg.SmoothedEnergyGuidance(guidance_scale=5.0, blur_sigma=1.0))
    cfg_parts = dict(parts, scheduler=type(parts["scheduler"]).from_config(parts["scheduler"].config))
    cfg_pipe = modular(cfg_parts, ClassifierFreeGuidance(guidance_scale=5.0))
    expected_seg, expected_cfg = run(seg_pipe), run(cfg_pipe)
    results: dict[str, list] = {"seg": [], "cfg": []}
    errors: list[BaseException] = []

    def loop(name, pipe):
        try:
            for _ in range(4):
                results[name].append(run(pipe))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [
        threading.Thread(target=loop, args=("seg", seg_pipe)),
        threading.Thread(target=loop, args=("cfg", cfg_pipe)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert all(torch.equal(result, expected_seg) for result in results["seg"])
    assert all(torch.equal(result, expected_cfg) for result in results["cfg"])
    assert no_hooks_left(parts["unet"])


def test_no_hook_survives_ctrl_c_in_a_modular_run(parts):
    unet = parts["unet"]
    pipe = modular(parts, seg.SmoothedEnergyGuidance(guidance_scale=5.0, blur_sigma=1.0))

    def interrupt(module, args):
        raise KeyboardInterrupt

    handle = unet.mid_block.register_forward_pre_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            run(pipe)
    finally:
        handle.remove()
    # a plain call from this thread right after: exactly the plain UNet, and nothing of SEG left on it
    sample = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(2, pooled), "time_ids": torch.randn(2, 6)}
    with torch.no_grad():
        after = unet(sample, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample
    assert no_hooks_left(unet)
    with torch.no_grad():
        assert torch.equal(after, unet(sample, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample)
    # and the classic SEG pipeline on that UNet runs
    classic = make_pipe(seg.StableDiffusionXLSEGPipeline, parts)
    plain = make_pipe(StableDiffusionXLPipeline, parts)
    call = dict(prompt="a cube", num_inference_steps=2, latents=latents(1, 16, 16), output_type="latent")
    assert (classic(**call, seg_blur_sigma=1.0).images - plain(**call).images).abs().max() > MIN_EFFECT
    assert no_hooks_left(unet)


def test_saving_the_pipeline_writes_no_guider_and_two_lines_restore_ours(parts, tmp_path):
    """diffusers' modular save_pretrained writes no guider of any kind; the README's two lines restore ours."""
    from diffusers.modular_pipelines import ModularPipeline

    guider = seg.SmoothedEnergyGuidance(guidance_scale=5.0, scale=2.0, blur_sigma=1.0, layers=["mid"])
    pipe = modular(parts, guider)
    expected = run(pipe)
    pipe.save_pretrained(str(tmp_path))
    guider.save_pretrained(tmp_path / "guider")
    assert not (tmp_path / "guider_config.json").exists()  # nothing of the guider in the pipeline's own files

    restored = ModularPipeline.from_pretrained(str(tmp_path))
    restored.load_components(torch_dtype=torch.float32)
    restored.update_components(guider=seg.SmoothedEnergyGuidance.from_pretrained(str(tmp_path), subfolder="guider"))
    restored.set_progress_bar_config(disable=True)
    assert (restored.guider.seg.scale, restored.guider.seg.blur_sigma, restored.guider.seg.layers) == (
        2.0,
        1.0,
        ("mid",),
    )
    assert torch.equal(run(restored), expected)
