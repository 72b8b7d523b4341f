"""One model, two hosts, one SEG: the same tiny SDXL weights in diffusers (through the SEG pipeline) and in
ComfyUI (weights converted with ComfyUI's own key map, SEG by the node's patch) give the same guided prediction
for one denoiser call (float64 in both, so the tolerance can be tight)."""

from __future__ import annotations

import pytest
import torch

from comfyui_host import SDXL_UNET, comfy_session, tiny_sdxl


@pytest.fixture(scope="module")
def comfy():
    with comfy_session() as comfy:
        yield comfy


def diffusers_twin_of_the_comfyui_unet():
    """diffusers' UNet with exactly the layout of comfyui_host.SDXL_UNET (same heads, depths, norms, embeddings)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(1, 1),  # diffusers' name for the heads: ComfyUI's SDXL has 64 channels per head
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=SDXL_UNET["adm_in_channels"],
        cross_attention_dim=SDXL_UNET["context_dim"],
        norm_num_groups=32,
    ).eval()


@pytest.mark.parametrize("sigma", [2.0, 10000.0])
def test_diffusers_and_comfyui_give_the_same_seg_prediction(comfy, sigma):
    from comfy.utils import unet_to_diffusers

    from smoothed_energy_guidance import StableDiffusionXLSEGPipeline
    from smoothed_energy_guidance.comfyui.patch import SegPatch
    from smoothed_energy_guidance.core.guidance import SegConfig
    from smoothed_energy_guidance.testing import tiny_sdxl_components

    # the ComfyUI model with the tests' random weights (attention sharpened so blur matters); the diffusers twin
    # gets the very same weights through ComfyUI's own key map
    patcher = tiny_sdxl(comfy, seed=3)
    comfy_unet = patcher.model.diffusion_model
    unet = diffusers_twin_of_the_comfyui_unet()
    comfy_weights = comfy_unet.state_dict()
    key_map = unet_to_diffusers(dict(SDXL_UNET))
    unet.load_state_dict({name: comfy_weights[key_map[name]] for name in unet.state_dict()}, strict=True)

    comfy_unet.double()  # both hosts in float64, so that only a real difference could exceed the tolerance
    components = tiny_sdxl_components()
    components["unet"] = unet
    pipe = StableDiffusionXLSEGPipeline(**components).to(dtype=torch.float64)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(4)
    text = {
        "prompt_embeds": torch.randn(1, 12, 64, generator=generator, dtype=torch.float64),
        "negative_prompt_embeds": torch.randn(1, 12, 64, generator=generator, dtype=torch.float64),
        "pooled_prompt_embeds": torch.randn(1, 32, generator=generator, dtype=torch.float64),
        "negative_pooled_prompt_embeds": torch.randn(1, 32, generator=generator, dtype=torch.float64),
    }
    seen, predictions = {}, []

    def record_inputs(module, args, kwargs):  # registered before SEG's hooks: sees the pipeline's own rows
        seen.setdefault("inputs", (args, kwargs))

    handle = unet.register_forward_pre_hook(record_inputs, with_kwargs=True)
    step = pipe.scheduler.step

    def record_prediction(model_output, *args, **kwargs):  # the prediction the pipeline steps with
        predictions.append(model_output)
        return step(model_output, *args, **kwargs)

    pipe.scheduler.step = record_prediction
    try:
        pipe(
            **text,
            height=104,
            width=168,  # latent 13 × 21: the mid level's grid is 7 × 11
            num_inference_steps=1,
            guidance_scale=5.0,
            seg_scale=3.0,
            seg_blur_sigma=sigma,
            output_type="latent",
            generator=torch.Generator().manual_seed(5),
        )
    finally:
        handle.remove()
    args, kwargs = seen["inputs"]
    sample, timestep = args[0], args[1]
    added = kwargs["added_cond_kwargs"]
    with torch.no_grad():
        time_embeds = unet.add_time_proj(added["time_ids"].flatten()).reshape(sample.shape[0], -1)
        adm = torch.cat([added["text_embeds"], time_embeds], dim=-1)  # ComfyUI's SDXL `y`
        timesteps = torch.as_tensor(timestep, dtype=torch.float64).expand(sample.shape[0])
        context = kwargs["encoder_hidden_states"]
        uncond, cond = comfy_unet(sample, timesteps, context=context, y=adm).chunk(2)
        seg = SegPatch(SegConfig(scale=3.0, blur_sigma=sigma), None)
        with seg.perturbing(patcher.model, sample.shape):
            perturbed = comfy_unet(sample[1:], timesteps[1:], context=context[1:], y=adm[1:])
    comfy_prediction = uncond + 5.0 * (cond - uncond) + 3.0 * (cond - perturbed)
    plain_prediction = uncond + 5.0 * (cond - uncond)
    (diffusers_prediction,) = predictions
    scale = plain_prediction.abs().max()
    error = ((diffusers_prediction - comfy_prediction).abs().max() / scale).item()
    effect = ((comfy_prediction - plain_prediction).abs().max() / scale).item()
    assert error < 1e-9, f"the two hosts differ by {error:.2e}"
    assert effect > 1e-3, f"SEG moved the prediction by only {effect:.2e}"
