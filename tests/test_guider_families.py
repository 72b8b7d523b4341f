"""The guider on the transformer families it reaches only through Modular Diffusers (Flux.2, Qwen-Image).

Driven one denoising step the way a modular denoise block drives any guider (set_state,
prepare_inputs, prepare_models / denoiser call / cleanup_models per batch, then the guider
itself), against the independent transformer reference: ``U + g·(C − U) + (R − C)`` with R the
reference's SEG-only prediction ``C + s·(C − perturbed)``.
"""

from __future__ import annotations

import pytest
import torch
from reference_dit import reference_seg_transformer

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, TOLERANCE, no_hooks_left
from smoothed_energy_guidance.testing import sharpen_transformer

pytestmark = pytest.mark.filterwarnings("ignore:Guiders are currently an experimental feature")
GRID = (6, 10)  # token grid of the generated image: non-square on purpose
TEXT = 5


def sharpen(model: torch.nn.Module) -> torch.nn.Module:
    """Peaked random attention, so blurring its queries visibly matters."""
    sharpen_transformer(model, 4.0)
    return model.eval()


def qwen_image_transformer():
    """A three-block Qwen-Image transformer over 2 × 2 patches of 4-channel latents, peaked attention."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    return sharpen(
        QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=3,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            axes_dims_rope=(2, 2, 4),
        )
    )


def qwen_image():
    model = qwen_image_transformer()
    g = torch.Generator().manual_seed(1)
    tokens = GRID[0] * GRID[1]

    def inputs(text, references: int = 0):
        return dict(
            hidden_states=torch.randn(1, tokens + references, 16, generator=torch.Generator().manual_seed(2)),
            encoder_hidden_states=text,
            encoder_hidden_states_mask=torch.ones(1, TEXT, dtype=torch.long),
            timestep=torch.tensor([0.5]),
            img_shapes=[[(1, *GRID)] + ([(1, 2, references // 2)] if references else [])],
        )

    texts = (torch.randn(1, TEXT, 16, generator=g), torch.randn(1, TEXT, 16, generator=g))
    return model, inputs, texts, ["transformer_blocks.1.attn"], {}


def flux2():
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(0)
    model = sharpen(
        Flux2Transformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            timestep_guidance_channels=16,
            axes_dims_rope=(2, 2, 2, 2),
            guidance_embeds=False,
        )
    )
    g = torch.Generator().manual_seed(1)
    ids = torch.cartesian_prod(torch.arange(1), torch.arange(GRID[0]), torch.arange(GRID[1]), torch.arange(1))

    def inputs(text, references: int = 0):
        return dict(
            hidden_states=torch.randn(1, GRID[0] * GRID[1], 16, generator=torch.Generator().manual_seed(2)),
            encoder_hidden_states=text,
            timestep=torch.tensor([0.5]),
            img_ids=ids.float(),
            txt_ids=torch.zeros(TEXT, 4),
        )

    texts = (torch.randn(1, TEXT, 16, generator=g), torch.randn(1, TEXT, 16, generator=g))
    names = ["single_transformer_blocks.0.attn"]  # the middle of double.0, single.0, single.1
    return model, inputs, texts, names, {"single_transformer_blocks.0.attn": TEXT}


def guided_step(guider, model, inputs, texts, references: int = 0):
    """One step of a modular denoise block: the guider's batches, one denoiser call each."""
    guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(500))
    batches = guider.prepare_inputs({"encoder_hidden_states": texts})
    for batch in batches:
        guider.prepare_models(model)
        call = inputs(batch.encoder_hidden_states, references)
        batch.noise_pred = model(**call, return_dict=False)[0]
        guider.cleanup_models(model)
    return guider(batches)[0]


@pytest.mark.parametrize("family", [qwen_image, flux2], ids=["qwen-image", "flux2"])
@pytest.mark.parametrize("cfg, sigma", [(4.0, 1.0), (1.0, float("inf")), (4.0, 2.0)])
def test_guider_matches_the_reference(family, cfg, sigma):
    model, inputs, (cond_text, uncond_text), names, text_tokens = family()
    guider = seg.SmoothedEnergyGuidance(guidance_scale=cfg, blur_sigma=sigma)
    with torch.no_grad():
        ours = guided_step(guider, model, inputs, (cond_text, uncond_text))
        cond = model(**inputs(cond_text), return_dict=False)[0]
        uncond = model(**inputs(uncond_text), return_dict=False)[0]
        with reference_seg_transformer(model, names, GRID, sigma, 3.0, False, text_tokens=text_tokens, token_dim=1):
            seg_only = model(**inputs(cond_text), return_dict=False)[0]
    reference = (uncond + cfg * (cond - uncond) if cfg > 1 else cond) + (seg_only - cond)
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (seg_only - cond).abs().max() > MIN_EFFECT
    assert no_hooks_left(model)


def test_qwen_image_reference_tokens_stay_unblurred():
    """Qwen-Image edit: reference-image tokens follow the generated image's; only the latter are blurred."""
    model, inputs, (cond_text, _), names, _ = qwen_image()
    guider = seg.SmoothedEnergyGuidance(guidance_scale=1.0, blur_sigma=1.0)
    references = 8
    with torch.no_grad():
        ours = guided_step(guider, model, inputs, (cond_text, cond_text), references)
        cond = model(**inputs(cond_text, references), return_dict=False)[0]
        with reference_seg_transformer(model, names, GRID, 1.0, 3.0, False, token_dim=1):
            seg_only = model(**inputs(cond_text, references), return_dict=False)[0]
    assert ours.shape[1] == GRID[0] * GRID[1] + references
    assert (ours - seg_only).abs().max() <= TOLERANCE
    assert (seg_only - cond).abs().max() > MIN_EFFECT


def test_enable_seg_points_guider_only_families_to_the_guider():
    model, *_ = flux2()

    class Flux2Pipeline:  # any pipeline holding this transformer
        transformer = model

    with pytest.raises(ValueError, match="supports Flux.2 through Modular Diffusers' guider"):
        seg.enable_seg(Flux2Pipeline())


def z_image():
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(0)
    model = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=3,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=16,
        axes_dims=[4, 6, 6],
        axes_lens=[64, 32, 32],
    )
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(".attention"):
                module.to_q.weight.mul_(4.0)
                module.to_k.weight.mul_(4.0)
    return model.eval()


def test_z_image_guider_runs_a_separate_perturbed_call_matching_the_reference():
    """Z-Image takes per-sample lists, so SEG gets its own cond batch, blurred as a whole call."""
    from reference_dit import _blur_rows

    model = z_image()
    latent = torch.randn(4, 1, 2 * GRID[0], 2 * GRID[1], generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(1)
    texts = (torch.randn(TEXT, 16, generator=g), torch.randn(TEXT, 16, generator=g))

    def predict(text):
        return torch.stack(model(x=[latent], t=torch.tensor([0.5]), cap_feats=[text], return_dict=False)[0])

    guider = seg.SmoothedEnergyGuidance(guidance_scale=4.0, blur_sigma=1.0)
    calls, prefix_calls = [], []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    inside = next(m for m in model.layers[0].modules() if isinstance(m, torch.nn.Linear))
    prefix_handle = inside.register_forward_hook(lambda *_: prefix_calls.append(1))
    with torch.no_grad():
        guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(500))
        batches = guider.prepare_inputs({"cap_feats": texts})
        # as a modular denoise block does: the guider learns the denoiser from its first prepare_models and
        # adds the perturbed batch to the list being iterated
        for batch in batches:
            guider.prepare_models(model)
            batch.noise_pred = predict(batch.cap_feats)
            guider.cleanup_models(model)
        ours = guider(batches)[0]
        handle.remove()
        prefix_handle.remove()
        cond, uncond = predict(texts[0]), predict(texts[1])
        norm = model.layers[1].attention.norm_q  # the default: the middle of three blocks
        original = norm.forward
        norm.forward = lambda q: _blur_rows(original(q), slice(None), GRID, 1.0, 1, 0)
        try:
            perturbed = predict(texts[0])
        finally:
            del norm.forward
    assert [b.__guidance_identifier__ for b in batches] == ["pred_cond", "pred_uncond", "pred_cond_seg"]
    assert len(calls) == 3
    assert prefix_calls == [1, 1]  # block 0 runs for cond and uncond; the perturbed call replays the cond's
    reference = uncond + 4.0 * (cond - uncond) + 3.0 * (cond - perturbed)
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (perturbed - cond).abs().max() > MIN_EFFECT
    assert no_hooks_left(model)


def _z_image_grid(args, kwargs):
    channels, frames, height, width = kwargs["x"][0].shape
    return height // 2, width // 2


def test_z_image_modular_denoise_matches_the_reference_guider():
    """The whole modular Z-Image denoise (text encoding aside: embeddings are given) with our guider and with
    an independent reference guider."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.modular_pipelines import ZImageAutoBlocks
    from reference_guider import ReferenceSEGGuider

    g = torch.Generator().manual_seed(1)
    embeds = dict(
        prompt_embeds=[torch.randn(TEXT, 16, generator=g)], negative_prompt_embeds=[torch.randn(TEXT, 16, generator=g)]
    )
    pipe = ZImageAutoBlocks().sub_blocks["denoise"].init_pipeline()
    pipe.update_components(transformer=z_image(), scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)

    def run(guider):
        pipe.update_components(guider=guider)
        return pipe(
            **embeds,
            height=96,
            width=160,
            num_inference_steps=3,
            generator=torch.Generator().manual_seed(0),
            output="latents",
        )

    ours = run(seg.SmoothedEnergyGuidance(guidance_scale=4.0, blur_sigma=1.0))
    reference = run(ReferenceSEGGuider(4.0, 3.0, 1.0, ["layers.1.attention"], _z_image_grid))
    plain = run(seg.SmoothedEnergyGuidance(guidance_scale=4.0, scale=0.0))
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT


def _qwen_image_grid(args, kwargs):
    frames, height, width = kwargs["img_shapes"][0][0]
    return height, width


def _flux2_grid(args, kwargs):
    ids = kwargs["img_ids"]
    ids = ids[0] if ids.ndim == 3 else ids
    return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1


def modular_denoise(family: str):
    """The modular denoise of Qwen-Image or Flux.2 [klein] base on a tiny transformer (embeddings given instead of
    a text encoder): (pipeline, run(guider, steps) → latents, SEG layer names, grid reader, image offsets)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.modular_pipelines import Flux2KleinBaseAutoBlocks, QwenImageAutoBlocks

    g = torch.Generator().manual_seed(1)
    if family == "qwen-image":
        model, _, _, names, offsets = qwen_image()
        blocks, read_grid = QwenImageAutoBlocks(), _qwen_image_grid
        mask = torch.ones(1, TEXT, dtype=torch.long)
        embeds = dict(
            prompt_embeds=torch.randn(1, TEXT, 16, generator=g),
            prompt_embeds_mask=mask,
            negative_prompt_embeds=torch.randn(1, TEXT, 16, generator=g),
            negative_prompt_embeds_mask=mask,
        )
    else:
        model, _, _, names, offsets = flux2()  # Flux.2 [klein] base: the Flux.2 blocks that take a guider
        blocks, read_grid = Flux2KleinBaseAutoBlocks(), _flux2_grid
        embeds = dict(
            prompt_embeds=torch.randn(1, TEXT, 16, generator=g),
            negative_prompt_embeds=torch.randn(1, TEXT, 16, generator=g),
        )
    pipe = blocks.sub_blocks["denoise"].init_pipeline()
    pipe.update_components(transformer=model, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)

    def run(guider, steps: int = 3):
        pipe.update_components(guider=guider)
        seed = torch.Generator().manual_seed(0)
        return pipe(**embeds, height=96, width=160, num_inference_steps=steps, generator=seed, output="latents")

    return pipe, run, names, read_grid, offsets


@pytest.mark.parametrize("family", ["qwen-image", "flux2"])
def test_modular_denoise_matches_the_reference_guider(family):
    """The modular denoise of each family (embeddings given instead of a text encoder), our guider against
    the independent reference guider."""
    from reference_guider import ReferenceSEGGuider

    _, run, names, read_grid, offsets = modular_denoise(family)
    cfg, scale = 4.0, 8.0  # the tiny Flux.2 reacts weakly: a larger scale makes the check meaningful
    ours = run(seg.SmoothedEnergyGuidance(guidance_scale=cfg, scale=scale, blur_sigma=1.0))
    reference = run(ReferenceSEGGuider(cfg, scale, 1.0, names, read_grid, offsets))
    plain = run(seg.SmoothedEnergyGuidance(guidance_scale=cfg, scale=0.0))
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT
