"""The toy model's architecture: SDXL's pipeline format at a size two CPU cores can train."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from ..testing import _text_config, tiny_clip_tokenizer
from .testbeds import Testbed

SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def time_ids(size: int) -> tuple[float, ...]:
    """SDXL's size conditioning for ``size`` × ``size`` images, no crop."""
    return (float(size), float(size), 0.0, 0.0, float(size), float(size))


def toy_unet(bed: Testbed) -> UNet2DConditionModel:
    """SDXL's UNet layout: text_time conditioning, cross-attention at the half-resolution level and mid."""
    return UNet2DConditionModel(
        sample_size=bed.size // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **bed.unet,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + bed.text.projection,
        cross_attention_dim=sum(bed.text.hidden),
        norm_num_groups=16,
    )


def toy_vae(bed: Testbed) -> AutoencoderKL:
    """A VAE that halves each side (one downsampling), four latent channels."""
    return AutoencoderKL(
        block_out_channels=bed.vae_channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=bed.size,
    )


def toy_components(seed: int, bed: Testbed) -> dict[str, Any]:
    """Untrained components in the ``StableDiffusionXLPipeline`` layout."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    sizes = bed.text
    first, second = (
        _text_config(len(tokenizer), hidden, sizes.layers, sizes.intermediate, sizes.projection)
        for hidden in sizes.hidden
    )
    return {
        "unet": toy_unet(bed),
        "vae": toy_vae(bed),
        "text_encoder": CLIPTextModel(first),
        "text_encoder_2": CLIPTextModelWithProjection(second),
        "tokenizer": tokenizer,
        "tokenizer_2": tiny_clip_tokenizer(),
        "scheduler": EulerDiscreteScheduler(**SCHEDULE, timestep_spacing="leading", steps_offset=1),
    }


def training_noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def encode_captions(components: dict[str, Any], captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``StableDiffusionXLPipeline.encode_prompt`` computes: penultimate hidden states of both
    encoders side by side, and the second encoder's pooled projection."""
    states = []
    pooled = None
    for tokenizer, encoder in (
        (components["tokenizer"], components["text_encoder"]),
        (components["tokenizer_2"], components["text_encoder_2"]),
    ):
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        output = encoder(ids, output_hidden_states=True)
        pooled = output[0]
        states.append(output.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled
