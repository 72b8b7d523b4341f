"""Tiny random diffusers models, built offline in-process: the ``tiny-random`` models the CLI offers.

For tests, demos and benchmarks on machines without model downloads (SD 1.x, SDXL, SD3, Flux layouts).
The weights are random: images from these models show noise-like patterns, not pictures.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character table, used by CLIP's BPE vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def write_tiny_clip_tokenizer(folder: str | Path) -> Path:
    """Write a byte-level CLIP tokenizer (514 tokens, no merges) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(symbol, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}), encoding="utf-8")
    return folder


def tiny_clip_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as folder:
        return CLIPTokenizer.from_pretrained(write_tiny_clip_tokenizer(folder))


def _text_config(
    vocab_size: int, hidden_size: int, layers: int = 2, intermediate: int = 37, projection: int = 32
) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        projection_dim=projection,
        max_position_embeddings=77,
        eos_token_id=1,
        pad_token_id=1,
        bos_token_id=0,
    )


#: Stable Diffusion XL base's UNet configuration (for meta-device layer checks and benchmarks).
SDXL_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    transformer_layers_per_block=(1, 2, 10),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)

# The two encoders differ in width, as CLIP ViT-L and OpenCLIP ViT-bigG do in SDXL: single-file
# loaders tell them apart by that width.
TEXT_HIDDEN, TEXT_2_HIDDEN = 32, 48


def tiny_sdxl_unet(
    in_channels: int = 4,
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type: str = "UNetMidBlock2DCrossAttn",
) -> UNet2DConditionModel:
    """SDXL's UNet layout at toy size: text_time conditioning, attention at level 1 by default.

    ``mid_block_type="UNetMidBlock2D"`` gives the distilled layout of SSD-1B (no mid-block attention).
    """
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=down_block_types,
        up_block_types=up_block_types,
        mid_block_type=mid_block_type,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=TEXT_HIDDEN + TEXT_2_HIDDEN,
        norm_num_groups=1,
    )


def sharpen_self_attention(unet: torch.nn.Module, factor: float) -> None:
    """Scale self-attention query/key weights so random attention is peaked enough for blur to matter."""
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn1"):
                module.to_q.weight.mul_(factor)
                module.to_k.weight.mul_(factor)


def tiny_sdxl_components(
    seed: int = 0, unet_in_channels: int = 4, sharpen: float = 4.0, mid_block_type: str = "UNetMidBlock2DCrossAttn"
) -> dict[str, Any]:
    """Every component of a ``StableDiffusionXL*Pipeline``, random weights, seeded."""
    torch.manual_seed(seed)
    unet = tiny_sdxl_unet(unet_in_channels, mid_block_type=mid_block_type)
    sharpen_self_attention(unet, sharpen)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )
    tokenizer = tiny_clip_tokenizer()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": CLIPTextModel(_text_config(len(tokenizer), TEXT_HIDDEN)).eval(),
        "text_encoder_2": CLIPTextModelWithProjection(_text_config(len(tokenizer), TEXT_2_HIDDEN)).eval(),
        "tokenizer": tokenizer,
        "tokenizer_2": tiny_clip_tokenizer(),
        "scheduler": scheduler,
    }


def tiny_controlnet(unet: UNet2DConditionModel, seed: int = 0) -> ControlNetModel:
    """A ControlNet for the tiny UNet; its condition image has the pipeline's image size."""
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    with torch.no_grad():  # from_unet zero-initialises the outputs; give them weight so they matter
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            block.weight.normal_(std=0.1)
    return controlnet.eval()


def tiny_t5_tokenizer():
    """A character-level T5 tokenizer built with ``tokenizers`` (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [(chr(c), -2.0) for c in range(ord(" "), ord("~") + 1)] + [("▁", -1.0)]
    tokenizer = Tokenizer(models.Unigram(specials + pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=64,
    )


def tiny_t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    ).eval()


def _tiny_vae(latent_channels: int = 4, shift_factor: float | None = None) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=32,
        sample_size=32,
        shift_factor=shift_factor,
        scaling_factor=0.5,
    ).eval()


def sharpen_transformer(model: torch.nn.Module, factor: float) -> None:
    """Scale the image query/key projections of a transformer's attentions (those it has separately)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith((".attn", ".attn1", ".attn2", ".attention", ".self_attention")):
                for projection in ("to_q", "to_k"):
                    if getattr(module, projection, None) is not None:
                        getattr(module, projection).weight.mul_(factor)


def tiny_sd_components(seed: int = 0, sharpen: float = 4.0) -> dict[str, Any]:
    """Every component of a Stable Diffusion 1.x-layout pipeline, random weights."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    sharpen_self_attention(unet, sharpen)
    tokenizer = tiny_clip_tokenizer()
    return {
        "unet": unet.eval(),
        "vae": _tiny_vae(),
        "text_encoder": CLIPTextModel(_text_config(len(tokenizer), 32)).eval(),
        "tokenizer": tokenizer,
        "scheduler": EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
            steps_offset=1,
        ),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def tiny_sd3_components(seed: int = 0, sharpen: float = 4.0, qk_norm: str | None = "rms_norm") -> dict[str, Any]:
    """An SD3.5-layout pipeline: joint attention, per-head RMS query norm, a dual-attention block."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=32,
        qk_norm=qk_norm,
        dual_attention_layers=(0,) if qk_norm else (),
    )
    sharpen_transformer(transformer, sharpen)
    tokenizer_3 = tiny_t5_tokenizer()
    return {
        "transformer": transformer.eval(),
        "vae": _tiny_vae(shift_factor=0.1),
        "text_encoder": CLIPTextModelWithProjection(_text_config(514, 32)).eval(),
        "text_encoder_2": CLIPTextModelWithProjection(_text_config(514, 32)).eval(),
        "text_encoder_3": tiny_t5_encoder(len(tokenizer_3)),
        "tokenizer": tiny_clip_tokenizer(),
        "tokenizer_2": tiny_clip_tokenizer(),
        "tokenizer_3": tokenizer_3,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
    }


def tiny_flux_transformer(
    seed: int = 0, sharpen: float = 4.0, in_channels: int = 16, guidance_embeds: bool = False
) -> torch.nn.Module:
    """A Flux.1-layout transformer: one double-stream and two single-stream blocks (Fill: 48 input channels)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        out_channels=16,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 2, 2),
        guidance_embeds=guidance_embeds,
    )
    sharpen_transformer(transformer, sharpen)
    return transformer.eval()


def tiny_flux_components(seed: int = 0, sharpen: float = 4.0) -> dict[str, Any]:
    """A Flux.1-layout pipeline: one double-stream and two single-stream blocks."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer_2 = tiny_t5_tokenizer()
    return {
        "transformer": tiny_flux_transformer(seed, sharpen),
        "vae": _tiny_vae(shift_factor=0.1),
        "text_encoder": CLIPTextModel(_text_config(514, 32)).eval(),
        "text_encoder_2": tiny_t5_encoder(len(tokenizer_2)),
        "tokenizer": tiny_clip_tokenizer(),
        "tokenizer_2": tokenizer_2,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def diffusers_cache_configs(
    current_timestep: Any, steps: int, threshold: float, attention_timesteps: tuple[int, int] = (100, 800)
) -> dict[str, Any]:
    """One config per diffusers cache method, for tests and benchmarks of SEG with caches: ``threshold`` for First
    Block Cache and MagCache (MagCache with flat magnitude ratios over ``steps``), ``attention_timesteps`` the
    window in which Pyramid Attention Broadcast skips; ``current_timestep()`` reads the pipeline's timestep."""
    from diffusers import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    return {
        "first-block-cache": FirstBlockCacheConfig(threshold=threshold),
        "taylorseer": TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1),
        "pyramid-attention-broadcast": PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=attention_timesteps,
            current_timestep_callback=current_timestep,
        ),
        "magcache": MagCacheConfig(
            threshold=threshold, max_skip_steps=2, num_inference_steps=steps, mag_ratios=[1.0] * steps
        ),
        "fastercache": FasterCacheConfig(  # its default window: full attention on the first, noisiest steps
            spatial_attention_block_skip_range=2, is_guidance_distilled=True, current_timestep_callback=current_timestep
        ),
    }


def diffusers_base_guiders(layer_stack: str) -> dict[str, Any]:
    """A maker of each guider diffusers ships besides CFG and SEG (the bases SEG stacks on), for tests and
    benchmarks: each acts on every step, and the ones that skip layers in a batch of their own (PAG, skip-layer
    guidance, AutoGuidance) skip the first block of the stack named ``layer_stack``."""
    from diffusers import guiders

    def skip(**skips: Any) -> dict[str, Any]:
        return dict(indices=[0], fqn=layer_stack, **skips)

    return {
        "apg": lambda: guiders.AdaptiveProjectedGuidance(guidance_scale=5.0, adaptive_projected_guidance_momentum=-0.5),
        "apg-mix": lambda: guiders.AdaptiveProjectedMixGuidance(
            guidance_scale=5.0, adaptive_projected_guidance_start_step=1
        ),
        "cfg-zero-star": lambda: guiders.ClassifierFreeZeroStarGuidance(guidance_scale=5.0),
        "frequency-decoupled": lambda: guiders.FrequencyDecoupledGuidance(guidance_scales=[6.0, 3.0]),
        "tangential": lambda: guiders.TangentialClassifierFreeGuidance(guidance_scale=5.0),
        "magnitude-aware": lambda: guiders.MagnitudeAwareGuidance(guidance_scale=5.0),
        "pag": lambda: guiders.PerturbedAttentionGuidance(
            guidance_scale=5.0,
            perturbed_guidance_scale=2.0,
            perturbed_guidance_start=0.0,
            perturbed_guidance_stop=1.0,
            perturbed_guidance_config=skip(skip_attention=False, skip_attention_scores=True, skip_ff=False),
        ),
        "skip-layer": lambda: guiders.SkipLayerGuidance(
            guidance_scale=5.0,
            skip_layer_guidance_scale=2.0,
            skip_layer_guidance_start=0.0,
            skip_layer_guidance_stop=1.0,
            skip_layer_config=skip(skip_attention=True, skip_ff=True),  # the whole block, its default
        ),
        "auto-guidance": lambda: guiders.AutoGuidance(
            guidance_scale=5.0, auto_guidance_config=skip(skip_attention=True), dropout=1.0
        ),
    }
