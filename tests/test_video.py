"""SEG over space and time on video transformers (Wan 2.x), against a dense (t·h·w)² reference.

The reference (``reference.reference_video_blur_matrix``) is the Kronecker product of the 1-D temporal
matrix and the per-frame spatial matrix, each built from the 1-D kernels by explicit reflection; it is
patched over the chosen attentions' query norm by ``reference_dit``.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference_dit import reference_seg_transformer

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, TOLERANCE, make_pipe, no_hooks_left
from smoothed_energy_guidance.core.blur import blur_queries
from smoothed_energy_guidance.testing import sharpen_transformer

# 9 frames → 3 latent frames (4× temporal VAE); 64 × 96 pixels → 8 × 12 latents → 4 × 6 tokens (2 × 2 patches)
GRID = (3, 4, 6)
CALL = dict(height=64, width=96, num_frames=9, num_inference_steps=3)


def wan_parts(text_dim: int = 16):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=text_dim,
        freq_dim=16,
        ffn_dim=32,
        num_layers=3,
        rope_max_seq_len=32,
    )
    sharpen_transformer(transformer, 4.0)
    with torch.no_grad():
        transformer.proj_out.weight.normal_(0.0, 0.2)  # zero-initialised: the output must depend on the blocks
    return dict(
        tokenizer=None,
        text_encoder=None,
        vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        transformer=transformer.eval(),
    )


def embeddings() -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(
        prompt_embeds=torch.randn(1, 5, 16, generator=g), negative_prompt_embeds=torch.randn(1, 5, 16, generator=g)
    )


def check_video(ours, host, call, names, grid, sigma, temporal_sigma, cfg, **reference):
    """SEG equals the dense (t·h·w)² reference, moves the output, is plain at scale 0 and leaves no hooks.

    ``reference``: ``token_dim``, ``text_tokens``, ``true_cfg_scale`` for ``reference_seg_transformer``.
    """

    def fresh():
        return dict(call, generator=torch.Generator().manual_seed(0), output_type="latent")

    result = ours(**fresh(), seg_scale=3.0, seg_blur_sigma=sigma, seg_temporal_sigma=temporal_sigma).frames
    with reference_seg_transformer(
        host.transformer, names, grid, sigma, 3.0, cfg, 4.0, temporal_sigma=temporal_sigma, **reference
    ):
        expected = host(**fresh()).frames
    plain = host(**fresh()).frames
    assert (result - expected).abs().max() <= TOLERANCE
    assert (plain - expected).abs().max() > MIN_EFFECT
    assert torch.equal(ours(**fresh(), seg_scale=0.0).frames, plain)
    assert no_hooks_left(ours.transformer)
    return result


@pytest.mark.parametrize(
    "sigma, temporal_sigma",
    [(1.0, 0.0), (1.0, 1.0), (math.inf, 0.0), (2.0, math.inf), (math.inf, math.inf), (1.0, 0.7)],
)
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_wan_matches_the_dense_video_reference(sigma, temporal_sigma, cfg):
    from diffusers import WanPipeline

    parts = wan_parts()
    ours, host = make_pipe(seg.WanSEGPipeline, parts), make_pipe(WanPipeline, parts)
    call = dict(CALL, **embeddings(), guidance_scale=4.0 if cfg else 1.0)

    names = ["blocks.1.attn1"]  # the default: the middle of three blocks
    true_cfg = 4.0 if cfg else None
    result = check_video(
        ours, host, call, names, GRID, sigma, temporal_sigma, False, token_dim=1, true_cfg_scale=true_cfg
    )
    assert result.shape[2] == GRID[0]


@pytest.mark.parametrize("temporal_sigma, mixes", [(0.0, False), (1.0, True), (math.inf, True)])
def test_temporal_blur_mixes_frames_only_when_asked(temporal_sigma, mixes):
    """Changing frame 0's queries changes the other frames' blurred queries only when σ_t > 0."""
    q = torch.randn(2, math.prod(GRID), 8, generator=torch.Generator().manual_seed(3))
    changed = q.clone()
    changed[:, : GRID[1] * GRID[2]] += 1.0  # frame 0
    before = blur_queries(q, GRID, 1.0, temporal_sigma)
    after = blur_queries(changed, GRID, 1.0, temporal_sigma)
    other_frames = slice(GRID[1] * GRID[2], None)
    moved = (after[:, other_frames] - before[:, other_frames]).abs().max().item()
    assert (moved > 1e-3) is mixes


def test_both_infinite_make_every_query_the_clip_mean():
    q = torch.randn(1, math.prod(GRID), 4, generator=torch.Generator().manual_seed(4))
    blurred = blur_queries(q, GRID, math.inf, math.inf)
    assert torch.allclose(blurred, q.mean(dim=1, keepdim=True).expand_as(q), atol=1e-6)


def test_negative_temporal_sigma_is_refused():
    with pytest.raises(ValueError, match="seg_temporal_sigma must be >= 0"):
        seg.SegConfig(temporal_sigma=-1.0)


def test_hooks_are_gone_after_an_exception():
    ours = make_pipe(seg.WanSEGPipeline, wan_parts())

    def interrupt(*args, **kwargs):
        raise RuntimeError("interrupted by the user")

    with pytest.raises(RuntimeError, match="interrupted by the user"):
        ours(**CALL, **embeddings(), output_type="latent", callback_on_step_end=interrupt, seg_temporal_sigma=1.0)
    assert no_hooks_left(ours.transformer)


def cogvideox_parts():
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=16,
        num_layers=3,
        sample_width=12,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=5,
    )
    sharpen_transformer(transformer, 4.0)
    vae = AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8,) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    return dict(
        tokenizer=None,
        text_encoder=None,
        vae=vae.eval(),
        transformer=transformer.eval(),
        scheduler=CogVideoXDDIMScheduler(),
    )


@pytest.mark.parametrize("sigma, temporal_sigma", [(1.0, 0.0), (2.0, 1.0), (math.inf, math.inf)])
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_cogvideox_matches_the_dense_video_reference(sigma, temporal_sigma, cfg):
    """Joint attention over [text, video]: only the video tokens' queries are blurred, over (t, h, w)."""
    from diffusers import CogVideoXPipeline

    parts = cogvideox_parts()
    ours, host = make_pipe(seg.CogVideoXSEGPipeline, parts), make_pipe(CogVideoXPipeline, parts)
    call = dict(CALL, **embeddings(), guidance_scale=4.0 if cfg else 1.0, max_sequence_length=5)

    names = ["transformer_blocks.1.attn1"]
    check_video(ours, host, call, names, GRID, sigma, temporal_sigma, cfg, text_tokens={names[0]: 5}, token_dim=2)


def test_cogvideox_dynamic_cfg_is_refused_with_the_fix():
    ours = make_pipe(seg.CogVideoXSEGPipeline, cogvideox_parts())
    with pytest.raises(ValueError, match="use_dynamic_cfg=False"):
        ours(**CALL, **embeddings(), use_dynamic_cfg=True, output_type="latent")


def ltx_parts():
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=3,
        caption_channels=16,
    )
    sharpen_transformer(transformer, 4.0)
    vae = AutoencoderKLLTXVideo(  # 4× in space and time, no patching: one token per latent position
        latent_channels=8,
        block_out_channels=(8,) * 4,
        decoder_block_out_channels=(8,) * 4,
        layers_per_block=(1,) * 5,
        decoder_layers_per_block=(1,) * 5,
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        patch_size=1,
        patch_size_t=1,
    )
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae.eval(),
        text_encoder=None,
        tokenizer=None,
        transformer=transformer.eval(),
    )


@pytest.mark.parametrize("sigma, temporal_sigma", [(2.0, 1.0), (math.inf, 0.0)])
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_ltx_video_matches_the_dense_video_reference(sigma, temporal_sigma, cfg):
    """LTX-Video packs tokens itself and tells the transformer the latent grid: (3, 16, 24) here."""
    from diffusers import LTXPipeline

    parts = ltx_parts()
    ours, host = make_pipe(seg.LTXSEGPipeline, parts), make_pipe(LTXPipeline, parts)
    masks = dict(prompt_attention_mask=torch.ones(1, 5), negative_prompt_attention_mask=torch.ones(1, 5))
    call = dict(embeddings(), **masks, height=64, width=96, num_frames=9, num_inference_steps=2)
    call.update(guidance_scale=4.0 if cfg else 1.0, max_sequence_length=5)

    names = ["transformer_blocks.1.attn1"]
    check_video(ours, host, call, names, (3, 16, 24), sigma, temporal_sigma, cfg, token_dim=1)


def modular_ltx_denoise():
    """The modular LTX denoise blocks (embeddings given instead of the text encoder step) and a runner of them
    with a guider: ``run(guider)`` gives the latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.modular_pipelines import LTXAutoBlocks

    pipe = LTXAutoBlocks().sub_blocks["denoise"].init_pipeline()
    pipe.update_components(transformer=ltx_parts()["transformer"], scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    masks = dict(prompt_attention_mask=torch.ones(1, 5), negative_prompt_attention_mask=torch.ones(1, 5))

    def run(guider, steps: int = 2):
        pipe.update_components(guider=guider)
        seed = torch.Generator().manual_seed(0)
        call = dict(height=64, width=96, num_frames=9, num_inference_steps=steps)
        return pipe(**embeddings(), **masks, **call, generator=seed, output="latents")

    return pipe, run


def test_modular_ltx_denoise_matches_the_reference_guider():
    """The guider route uses the same LTX-Video descriptor: the modular LTX denoise (embeddings given
    instead of the text encoder step) with our guider against the independent reference guider."""
    from reference_guider import ReferenceSEGGuider

    _, run = modular_ltx_denoise()

    def read_grid(args, kwargs):
        return int(kwargs["num_frames"]), int(kwargs["height"]), int(kwargs["width"])

    ours = run(seg.SmoothedEnergyGuidance(guidance_scale=4.0, blur_sigma=2.0, temporal_sigma=1.0))
    reference = run(ReferenceSEGGuider(4.0, 3.0, 2.0, ["transformer_blocks.1.attn1"], read_grid, temporal_sigma=1.0))
    plain = run(seg.SmoothedEnergyGuidance(guidance_scale=4.0, scale=0.0))
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT


def hunyuan_video_parts():
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_single_layers=2,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4),
    )
    sharpen_transformer(transformer, 4.0)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8,) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        mid_block_add_attention=False,
    )
    return dict(
        text_encoder=None,
        tokenizer=None,
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder_2=None,
        tokenizer_2=None,
    )


def hunyuan_video_call(g: torch.Generator) -> dict:
    """The tiny HunyuanVideo call with its own prompt embeddings (the tiny pipeline has no text encoders)."""
    return dict(
        CALL,
        prompt_embeds=torch.randn(1, 5, 16, generator=g),
        pooled_prompt_embeds=torch.randn(1, 8, generator=g),
        prompt_attention_mask=torch.ones(1, 5),
    )


@pytest.mark.parametrize("sigma, temporal_sigma", [(1.0, 1.0), (math.inf, 0.0)])
@pytest.mark.parametrize("true_cfg", [True, False], ids=["true-cfg", "no-cfg"])
def test_hunyuan_video_matches_the_dense_video_reference(sigma, temporal_sigma, true_cfg):
    """Single-stream queries are [video, text]: only the video tokens are blurred, over (t, h, w)."""
    from diffusers import HunyuanVideoPipeline

    parts = hunyuan_video_parts()
    ours, host = make_pipe(seg.HunyuanVideoSEGPipeline, parts), make_pipe(HunyuanVideoPipeline, parts)
    g = torch.Generator().manual_seed(2)
    call = hunyuan_video_call(g)
    if true_cfg:
        call.update(
            negative_prompt_embeds=torch.randn(1, 5, 16, generator=g),
            negative_pooled_prompt_embeds=torch.randn(1, 8, generator=g),
            negative_prompt_attention_mask=torch.ones(1, 5),
            true_cfg_scale=4.0,
        )

    names = ["single_transformer_blocks.0.attn"]  # the middle of double.0, single.0, single.1
    true_cfg_scale = 4.0 if true_cfg else None
    check_video(ours, host, call, names, GRID, sigma, temporal_sigma, False, token_dim=1, true_cfg_scale=true_cfg_scale)


def test_hunyuan_video_lone_negative_embeddings_run_no_cfg_so_seg_keeps_its_full_scale():
    """HunyuanVideo runs its CFG call only with negative embeddings *and* their pooled ones: with the first
    alone there is no CFG (diffusers' output does not change), so SEG must not scale its term by 1/g."""
    from diffusers import HunyuanVideoPipeline

    parts = hunyuan_video_parts()
    ours, host = make_pipe(seg.HunyuanVideoSEGPipeline, parts), make_pipe(HunyuanVideoPipeline, parts)
    g = torch.Generator().manual_seed(2)
    call = hunyuan_video_call(g)
    lone = dict(negative_prompt_embeds=torch.randn(1, 5, 16, generator=g), true_cfg_scale=4.0)

    def seeded():
        return dict(generator=torch.Generator().manual_seed(0), output_type="latent")

    assert torch.equal(host(**call, **lone, **seeded()).frames, host(**call, **seeded()).frames)  # diffusers: no CFG
    names = ["single_transformer_blocks.0.attn"]
    check_video(ours, host, {**call, **lone}, names, GRID, 1.0, 1.0, False, token_dim=1, true_cfg_scale=None)


@pytest.mark.parametrize("sigma, temporal_sigma", [(1.0, 1.0), (math.inf, math.inf)])
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_mochi_matches_the_dense_video_reference(sigma, temporal_sigma, cfg):
    """Mochi's video queries come alone from ``norm_q`` (its text stream has its own projections)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    torch.manual_seed(0)
    transformer = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=3,
        pooled_projection_dim=16,
        in_channels=12,
        text_embed_dim=16,
        time_embed_dim=8,
        max_sequence_length=5,
    )
    sharpen_transformer(transformer, 4.0)
    parts = dict(  # latents only: no VAE is needed to make them
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        transformer=transformer.eval(),
    )
    ours, host = make_pipe(seg.MochiSEGPipeline, parts), make_pipe(MochiPipeline, parts)
    masks = dict(prompt_attention_mask=torch.ones(1, 5), negative_prompt_attention_mask=torch.ones(1, 5))
    # 13 frames → 3 latent frames (6× temporal); 64 × 96 pixels → 8 × 12 latents → 4 × 6 tokens
    call = dict(embeddings(), **masks, height=64, width=96, num_frames=13, num_inference_steps=3)
    call.update(guidance_scale=4.0 if cfg else 1.0, max_sequence_length=5)

    names = ["transformer_blocks.1.attn1"]
    check_video(ours, host, call, names, GRID, sigma, temporal_sigma, cfg, token_dim=1)


def modular_wan_denoise():
    """The modular Wan denoise blocks (embeddings given instead of the text encoder step) and a runner of them
    with a guider: ``run(guider)`` gives the latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.modular_pipelines import WanBlocks

    pipe = WanBlocks().sub_blocks["denoise"].init_pipeline()
    pipe.update_components(transformer=wan_parts()["transformer"], scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)

    def run(guider, steps: int = 2):
        pipe.update_components(guider=guider)
        seed = torch.Generator().manual_seed(0)
        latents = torch.randn(1, 4, *GRID[:1], 8, 12, generator=seed)  # 4 latent channels (the blocks assume 16)
        call = dict(CALL, num_inference_steps=steps)
        return pipe(**embeddings(), **call, latents=latents, generator=seed, output="latents")

    return pipe, run


def test_modular_wan_denoise_matches_the_reference_guider():
    """The modular Wan blocks take the same Wan descriptor through the guider route: the modular Wan
    denoise (embeddings given instead of the text encoder step) against the independent reference guider."""
    from reference_guider import ReferenceSEGGuider

    _, run = modular_wan_denoise()

    def read_grid(args, kwargs):
        latents = kwargs["hidden_states"]
        return latents.shape[2], latents.shape[3] // 2, latents.shape[4] // 2  # (1, 2, 2) patches

    ours = run(seg.SmoothedEnergyGuidance(guidance_scale=4.0, blur_sigma=1.0, temporal_sigma=math.inf))
    reference = run(ReferenceSEGGuider(4.0, 3.0, 1.0, ["blocks.1.attn1"], read_grid, temporal_sigma=math.inf))
    plain = run(seg.SmoothedEnergyGuidance(guidance_scale=4.0, scale=0.0))
    assert ours.shape[2] == GRID[0]
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT


def modular_hunyuan_video_15_denoise():
    """The modular HunyuanVideo 1.5 denoise blocks on a tiny transformer (embeddings given) and a runner of them
    with a guider: ``run(guider)`` gives the latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15Transformer3DModel
    from diffusers.modular_pipelines import HunyuanVideo15AutoBlocks

    torch.manual_seed(0)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9,  # latents, condition latents and mask
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=3,
        num_refiner_layers=1,
        text_embed_dim=16,
        text_embed_2_dim=16,
        image_embed_dim=16,
        rope_axes_dim=(2, 4, 2),
        target_size=64,
    )
    sharpen_transformer(transformer, 4.0)
    pipe = HunyuanVideo15AutoBlocks().sub_blocks["denoise"].init_pipeline()
    pipe.update_components(transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    text = {}
    for side in ("", "negative_"):
        text[f"{side}prompt_embeds"], text[f"{side}prompt_embeds_mask"] = (
            torch.randn(1, 5, 16, generator=g),
            torch.ones(1, 5),
        )
        text[f"{side}prompt_embeds_2"], text[f"{side}prompt_embeds_mask_2"] = (
            torch.randn(1, 3, 16, generator=g),
            torch.ones(1, 3),
        )

    def run(guider, steps: int = 2):
        pipe.update_components(guider=guider)
        latents = torch.randn(1, 4, *GRID, generator=torch.Generator().manual_seed(0))
        call = dict(height=64, width=96, num_frames=9, num_inference_steps=steps)
        return pipe(**text, **call, latents=latents, generator=torch.Generator().manual_seed(0), output="latents")

    return pipe, run


def test_modular_hunyuan_video_15_denoise_matches_the_reference_guider():
    """HunyuanVideo 1.5 is reached through its modular blocks only: one descriptor, the video queries from
    ``norm_q`` (before the text joins them), blurred over (t, h, w) = (3, 4, 6); true CFG on."""
    from reference_guider import ReferenceSEGGuider

    _, run = modular_hunyuan_video_15_denoise()

    def read_grid(args, kwargs):
        return tuple(kwargs["hidden_states"].shape[2:])  # patch size 1 in t, h and w

    ours = run(seg.SmoothedEnergyGuidance(guidance_scale=4.0, blur_sigma=1.0, temporal_sigma=1.0))
    reference = run(ReferenceSEGGuider(4.0, 3.0, 1.0, ["transformer_blocks.1.attn"], read_grid, temporal_sigma=1.0))
    plain = run(seg.SmoothedEnergyGuidance(guidance_scale=4.0, scale=0.0))
    assert ours.shape[2:] == GRID
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT


def _batches_seen(module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    seen: list[int] = []
    return seen, module.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(_rows_of(args, kwargs)), with_kwargs=True
    )


def _rows_of(args, kwargs) -> int:
    first = args[0] if args else next(value for value in kwargs.values() if isinstance(value, torch.Tensor))
    return first.shape[0]


def _replay_case(family: str, cfg: bool):
    """(SEG pipeline, call, prefix block, first SEG block, rows of the host's calls per step)."""
    if family == "wan":  # CFG as a second call: SEG follows the cond call
        parts, cls, call = wan_parts(), seg.WanSEGPipeline, dict(CALL, **embeddings())
        call.update(guidance_scale=4.0 if cfg else 1.0)
        blocks, prefix, first, host_calls = parts["transformer"].blocks, 0, 1, [1, 1] if cfg else [1]
    elif family == "cogvideox":
        parts, cls = cogvideox_parts(), seg.CogVideoXSEGPipeline
        call = dict(CALL, **embeddings(), guidance_scale=4.0 if cfg else 1.0, max_sequence_length=5)
        blocks, prefix, first, host_calls = parts["transformer"].transformer_blocks, 0, 1, [2 if cfg else 1]
    elif family == "ltx":
        parts, cls = ltx_parts(), seg.LTXSEGPipeline
        masks = dict(prompt_attention_mask=torch.ones(1, 5), negative_prompt_attention_mask=torch.ones(1, 5))
        call = dict(embeddings(), **masks, height=64, width=96, num_frames=9, num_inference_steps=3)
        call.update(guidance_scale=4.0 if cfg else 1.0, max_sequence_length=5)
        blocks, prefix, first, host_calls = parts["transformer"].transformer_blocks, 0, 1, [2 if cfg else 1]
    else:  # hunyuan-video: the whole double-stream list is the prefix of single.0
        parts, cls = hunyuan_video_parts(), seg.HunyuanVideoSEGPipeline
        g = torch.Generator().manual_seed(2)
        call = hunyuan_video_call(g)
        if cfg:
            call.update(
                negative_prompt_embeds=torch.randn(1, 5, 16, generator=g),
                negative_pooled_prompt_embeds=torch.randn(1, 8, generator=g),
                negative_prompt_attention_mask=torch.ones(1, 5),
                true_cfg_scale=4.0,
            )
        transformer = parts["transformer"]
        return (
            make_pipe(cls, parts),
            call,
            transformer.transformer_blocks[0],
            transformer.single_transformer_blocks[0],
            [1, 1] if cfg else [1],
        )
    return make_pipe(cls, parts), call, blocks[prefix], blocks[first], host_calls


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("family", ["wan", "cogvideox", "ltx", "hunyuan-video"])
def test_video_perturbed_call_replays_the_blocks_before_the_first_seg_block(family, cfg):
    """The perturbed prediction is a call of its own after the host's cond call, in which the blocks before
    the first SEG block never run (they replay the cond rows' outputs) and the rest runs on the cond rows; the
    results against the dense reference are the tests above."""
    ours, call, prefix_block, seg_block, host_calls = _replay_case(family, cfg)
    # a layer inside the block: a hook on the block itself runs even when the block's output is replayed
    inside = next(m for m in prefix_block.modules() if isinstance(m, torch.nn.Linear))
    prefix_seen, prefix_handle = _batches_seen(inside)
    seg_seen, seg_handle = _batches_seen(seg_block)
    try:
        seeded = dict(call, generator=torch.Generator().manual_seed(0), output_type="latent")
        ours(**seeded, seg_scale=3.0, seg_blur_sigma=2.0)
    finally:
        prefix_handle.remove()
        seg_handle.remove()
    steps = call["num_inference_steps"]
    assert prefix_seen == host_calls * steps  # never in the perturbed call
    # the SEG block: the host's cond call, then the perturbed call on one row (before any uncond call)
    assert seg_seen == [host_calls[0], 1, *host_calls[1:]] * steps
    assert no_hooks_left(ours.transformer)
