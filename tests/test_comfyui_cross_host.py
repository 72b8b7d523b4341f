"""One model, two hosts, one SEG: the same tiny SDXL weights in diffusers (through the SEG pipeline) and in
ComfyUI (weights converted with ComfyUI's own key map, SEG by the node's patch) give the same guided prediction
for one denoiser call; the same holds for Flux (weights through ComfyUI's Flux key map, fused QKV included) and
AuraFlow (through its AuraFlow key map, with batched CFG).
SDXL runs in float64 in both hosts, so the tolerance can be tight; ComfyUI's RoPE kernels keep Flux in float32."""

from __future__ import annotations

import contextlib

import pytest
import torch

from comfyui_host import SDXL_UNET, tiny_sdxl


@contextlib.contextmanager
def recording(denoiser, pipe):
    """The pipeline's first denoiser call as it made it (a pre-hook registered before SEG's own hooks, which
    attach when the call starts) and every prediction the pipeline stepped with (SEG's included)."""
    seen: dict = {"predictions": []}

    def record_inputs(module, args, kwargs):
        if "args" not in seen:
            seen["args"], seen["kwargs"] = args, dict(kwargs)

    step = pipe.scheduler.step

    def record_prediction(model_output, *args, **kwargs):
        seen["predictions"].append(model_output)
        return step(model_output, *args, **kwargs)

    handle = denoiser.register_forward_pre_hook(record_inputs, with_kwargs=True)
    pipe.scheduler.step = record_prediction
    try:
        yield seen
    finally:
        handle.remove()
        pipe.scheduler.step = step


def one_seg_step(pipe, denoiser, sigma: float, seed: int, **call) -> dict:
    """One denoising step of a SEG pipeline at scale 3 (latent output), recorded as ``recording`` records it."""
    with recording(denoiser, pipe) as seen:
        pipe(
            **call,
            num_inference_steps=1,
            seg_scale=3.0,
            seg_blur_sigma=sigma,
            output_type="latent",
            generator=torch.Generator().manual_seed(seed),
        )
    return seen


def comfy_cfg_with_seg(model, run, latent_shape, sigma: float, guidance: float, seg_scale: float = 3.0):
    """ComfyUI's side of a batched-CFG step: ``run(rows)`` calls its diffusion model on those rows of the
    recorded [uncond, cond] inputs; the perturbed cond row runs under the node's patch. Returns the SEG + CFG
    prediction combined as the SEG pipelines combine it, and CFG alone."""
    from smoothed_energy_guidance.comfyui.patch import SegPatch
    from smoothed_energy_guidance.core.guidance import SegConfig

    with torch.no_grad():
        uncond, cond = run(slice(None)).chunk(2)
        with SegPatch(SegConfig(scale=seg_scale, blur_sigma=sigma)).perturbing(model, latent_shape):
            perturbed = run(slice(1, None))
    plain = uncond + guidance * (cond - uncond)
    return plain + seg_scale * (cond - perturbed), plain


def assert_hosts_agree(diffusers_prediction, comfy_prediction, plain, tolerance: float, min_effect: float) -> None:
    """The two hosts' SEG predictions agree within ``tolerance`` (relative to the prediction without SEG), and
    SEG moved it by more than ``min_effect``, or the agreement would prove nothing."""
    scale = plain.abs().max()
    error = ((diffusers_prediction - comfy_prediction).abs().max() / scale).item()
    effect = ((comfy_prediction - plain).abs().max() / scale).item()
    assert error < tolerance, f"the two hosts differ by {error:.2e}"
    assert effect > min_effect, f"SEG moved the prediction by only {effect:.2e}"


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
    # latent 13 × 21: the mid level's grid is 7 × 11
    seen = one_seg_step(pipe, unet, sigma, 5, **text, height=104, width=168, guidance_scale=5.0)
    args, kwargs = seen["args"], seen["kwargs"]
    sample, timestep = args[0], args[1]
    added = kwargs["added_cond_kwargs"]
    with torch.no_grad():
        time_embeds = unet.add_time_proj(added["time_ids"].flatten()).reshape(sample.shape[0], -1)
    adm = torch.cat([added["text_embeds"], time_embeds], dim=-1)  # ComfyUI's SDXL `y`
    timesteps = torch.as_tensor(timestep, dtype=torch.float64).expand(sample.shape[0])
    context = kwargs["encoder_hidden_states"]
    comfy_prediction, plain_prediction = comfy_cfg_with_seg(
        patcher.model,
        lambda rows: comfy_unet(sample[rows], timesteps[rows], context=context[rows], y=adm[rows]),
        sample.shape,
        sigma,
        guidance=5.0,
    )
    (diffusers_prediction,) = seen["predictions"]
    assert_hosts_agree(diffusers_prediction, comfy_prediction, plain_prediction, tolerance=1e-9, min_effect=1e-3)


def diffusers_twin_of_a_comfyui_flux():
    """diffusers' Flux transformer with the layout of comfyui_host.FLUX (MLP ratio 4, as diffusers' Flux fixes)."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed 2 × 2, as ComfyUI patchifies them
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    ).eval()


def weights_from_comfyui(comfy_weights: dict, key_map: dict, names) -> dict:
    """diffusers weights from ComfyUI's through its own key map (fused QKV slices, swapped scale / shift)."""
    weights = {}
    for name in names:
        source = key_map[name]
        if isinstance(source, str):
            weights[name] = comfy_weights[source]
        elif source[1] is None:  # (key, None, transform)
            weights[name] = source[2](comfy_weights[source[0]])
        else:  # (key, (dim, start, size))
            dim, start, size = source[1]
            weights[name] = comfy_weights[source[0]].narrow(dim, start, size)
    return weights


@pytest.mark.parametrize("sigma", [1.0, 10000.0])
def test_flux_in_diffusers_and_comfyui_gives_the_same_seg_prediction(comfy, sigma):
    from comfy.utils import flux_to_diffusers

    from comfyui_host import FLUX, patcher
    from smoothed_energy_guidance import FluxSEGPipeline
    from smoothed_energy_guidance.comfyui.patch import SegPatch
    from smoothed_energy_guidance.core.guidance import SegConfig
    from smoothed_energy_guidance.testing import tiny_flux_components

    config = dict(FLUX, mlp_ratio=4.0)
    model = patcher(comfy, comfy.supported_models.Flux, config, 6)
    comfy_flux = model.model.diffusion_model  # float32: ComfyUI's RoPE kernels take no float64
    transformer = diffusers_twin_of_a_comfyui_flux()
    names = list(transformer.state_dict())
    transformer.load_state_dict(weights_from_comfyui(comfy_flux.state_dict(), flux_to_diffusers(config), names))

    components = tiny_flux_components()
    components["transformer"] = transformer
    pipe = FluxSEGPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(7)
    text = torch.randn(1, 7, 32, generator=generator, dtype=torch.float32)
    pooled = torch.randn(1, 32, generator=generator, dtype=torch.float32)
    height, width = 20, 28  # the tiny VAE halves: latent 10 × 14, 5 × 7 image tokens
    seen = one_seg_step(
        pipe,
        transformer,
        sigma,
        8,
        prompt_embeds=text,
        pooled_prompt_embeds=pooled,
        height=height,
        width=width,
        guidance_scale=3.5,
    )
    inputs = seen["kwargs"]
    packed = inputs["hidden_states"]  # (1, 35, 64)
    latent = packed.reshape(1, 5, 7, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 10, 14)
    call = dict(
        timestep=inputs["timestep"],  # diffusers' t / 1000: ComfyUI's Flux also scales by 1000 inside
        context=inputs["encoder_hidden_states"],
        y=inputs["pooled_projections"],
        guidance=inputs["guidance"],
    )
    with torch.no_grad():
        cond = comfy_flux(latent, **call)
        seg = SegPatch(SegConfig(scale=3.0, blur_sigma=sigma))
        with seg.perturbing(model.model, latent.shape):
            perturbed = comfy_flux(latent, **call)
    comfy_prediction = cond + 3.0 * (cond - perturbed)

    def packed(prediction):  # as diffusers' Flux packs its latent: 2 × 2 patches of 16 channels per token
        return prediction.reshape(1, 16, 5, 2, 7, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 35, 64)

    (diffusers_prediction,) = seen["predictions"]
    # float32 here
    assert_hosts_agree(diffusers_prediction, packed(comfy_prediction), packed(cond), tolerance=1e-5, min_effect=1e-2)


def diffusers_twin_of_the_comfyui_auraflow():
    """diffusers' AuraFlow transformer with the layout of comfyui_host.AURAFLOW."""
    from diffusers import AuraFlowTransformer2DModel

    from comfyui_host import AURAFLOW

    heads = AURAFLOW["n_heads"]
    return AuraFlowTransformer2DModel(
        sample_size=32,
        patch_size=AURAFLOW["patch_size"],
        in_channels=AURAFLOW["in_channels"],
        out_channels=AURAFLOW["out_channels"],
        num_mmdit_layers=AURAFLOW["n_double_layers"],
        num_single_dit_layers=AURAFLOW["n_layers"] - AURAFLOW["n_double_layers"],
        attention_head_dim=AURAFLOW["dim"] // heads,
        num_attention_heads=heads,
        joint_attention_dim=AURAFLOW["cond_seq_dim"],
        caption_projection_dim=AURAFLOW["dim"],
        pos_embed_max_size=AURAFLOW["max_seq"],
    ).eval()


@pytest.mark.parametrize("sigma", [2.0, 10000.0])
def test_auraflow_in_diffusers_and_comfyui_gives_the_same_seg_prediction(comfy, sigma):
    """The same AuraFlow weights (through ComfyUI's AuraFlow key map) in both hosts: diffusers' batched CFG step
    with SEG equals ComfyUI's uncond, cond and SEG-perturbed predictions combined the same way. An even token
    grid: the two hosts centre their position table differently on odd ones."""
    from comfy.utils import auraflow_to_diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    from comfyui_host import AURAFLOW, tiny_auraflow
    from smoothed_energy_guidance import AuraFlowSEGPipeline
    from smoothed_energy_guidance.testing import _tiny_vae

    model = tiny_auraflow(comfy, 6)
    comfy_aura = model.model.diffusion_model
    transformer = diffusers_twin_of_the_comfyui_auraflow()
    names = list(transformer.state_dict())
    transformer.load_state_dict(weights_from_comfyui(comfy_aura.state_dict(), auraflow_to_diffusers(AURAFLOW), names))
    parts = dict(tokenizer=None, text_encoder=None, vae=_tiny_vae(), transformer=transformer)
    pipe = AuraFlowSEGPipeline(**parts, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(7)
    text = {
        name: torch.randn(1, 6, AURAFLOW["cond_seq_dim"], generator=generator)
        for name in ("prompt_embeds", "negative_prompt_embeds")
    }
    masks = {
        name: torch.ones(1, 6, dtype=torch.long) for name in ("prompt_attention_mask", "negative_prompt_attention_mask")
    }
    # the tiny VAE halves: latent 8 × 12, 4 × 6 image tokens
    seen = one_seg_step(pipe, transformer, sigma, 8, **text, **masks, height=16, width=24, guidance_scale=4.0)
    latent, timestep = seen["args"][0], seen["kwargs"]["timestep"]  # [uncond, cond] rows; diffusers' t / 1000
    context = seen["kwargs"]["encoder_hidden_states"]
    comfy_prediction, plain = comfy_cfg_with_seg(
        model.model,
        lambda rows: comfy_aura(latent[rows], timestep[rows], context[rows]),
        latent.shape,
        sigma,
        guidance=4.0,
    )
    (diffusers_prediction,) = seen["predictions"]
    assert_hosts_agree(diffusers_prediction, comfy_prediction, plain, tolerance=1e-5, min_effect=1e-3)  # float32
