"""A real ComfyUI in the test process: found at $COMFYUI_PATH or ../shared/comfyui, or the tests are skipped.

Tiny models are built with ComfyUI's own model classes and random weights (ComfyUI's operations skip weight
initialisation, so every parameter is filled here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).resolve().parent / "comfyui_support"


def comfyui_path() -> Path | None:
    candidates = [os.environ.get("COMFYUI_PATH"), ROOT.parent / "shared" / "comfyui"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "comfy" / "sample.py").is_file():
            return Path(candidate).resolve()
    return None


@contextlib.contextmanager
def comfy_session():
    """ComfyUI imported for a test module; afterwards ComfyUI and the torchvision stand-in leave ``sys.path`` (and
    the stand-in ``sys.modules``), so later tests see the environment as it was (diffusers must not find it)."""
    saved_path = list(sys.path)
    try:
        yield import_comfy()
    finally:
        sys.path[:] = saved_path
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            if str(SUPPORT) in (getattr(sys.modules[name], "__file__", "") or ""):
                del sys.modules[name]


def import_comfy():
    """Put ComfyUI on sys.path (with the torchvision stand-in when no torchvision is installed) and import it."""
    path = comfyui_path()
    if path is None:
        pytest.skip("no ComfyUI here: set COMFYUI_PATH to a ComfyUI checkout to run the ComfyUI tests")
    needed = ("einops", "torchsde", "aiohttp", "comfy_kitchen")
    missing = [name for name in needed if not importlib.util.find_spec(name)]
    if missing:
        pytest.skip(f"ComfyUI's requirements are not installed here (missing: {', '.join(missing)})")
    if importlib.util.find_spec("torchvision") is None:
        # diffusers and transformers decide once, on import, whether torchvision exists: let them decide before
        # the stand-in appears, so their pipelines in the same process never take it for the real one
        import diffusers  # noqa: F401
        import transformers  # noqa: F401

        sys.path.insert(0, str(SUPPORT))
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sample
    import comfy.samplers
    import comfy.supported_models

    return comfy


SDXL_UNET = dict(
    model_channels=32,
    in_channels=4,
    out_channels=4,
    num_res_blocks=[2, 2],
    channel_mult=[1, 2],
    transformer_depth=[0, 0, 1, 1],
    transformer_depth_output=[0, 0, 0, 1, 1, 1],
    transformer_depth_middle=1,
    context_dim=64,
    num_head_channels=16,
    use_linear_in_transformer=True,
    adm_in_channels=32 + 6 * 256,  # pooled text (32) + SDXL's six size embeddings
    num_classes="sequential",
    use_spatial_transformer=True,
    legacy=False,
    use_temporal_attention=False,
    image_size=32,
)
SD15_UNET = dict(  # SD 1.x layout: attention at every level, no pooled conditioning, 8 heads
    model_channels=32,
    in_channels=4,
    out_channels=4,
    num_res_blocks=[1, 1],
    channel_mult=[1, 2],
    transformer_depth=[1, 1],
    transformer_depth_output=[1, 1, 1, 1],
    transformer_depth_middle=1,
    context_dim=32,
    use_linear_in_transformer=False,
    adm_in_channels=None,
    use_spatial_transformer=True,
    legacy=False,
    use_temporal_attention=False,
    image_size=32,
)
FLUX = dict(
    image_model="flux",
    guidance_embed=True,
    in_channels=16,
    out_channels=16,
    vec_in_dim=32,
    context_in_dim=32,
    hidden_size=64,
    mlp_ratio=2.0,
    num_heads=2,
    depth=2,
    depth_single_blocks=2,
    axes_dim=[8, 12, 12],
    theta=10000,
    patch_size=2,
    qkv_bias=True,
    txt_ids_dims=[],
)

CHROMA = dict(  # Flux's blocks without guidance or pooled text; its modulations come from an approximator
    {key: value for key, value in FLUX.items() if key != "guidance_embed"},
    image_model="chroma",
    in_channels=64,  # Chroma's config counts patchified channels
    out_channels=64,
    in_dim=64,
    out_dim=64,
    hidden_dim=32,
    n_layers=1,
)
SD3 = dict(  # an SD3.5-style MMDiT: RMS query norm, a second image-only attention in every block
    in_channels=16,
    out_channels=16,
    patch_size=2,
    depth=2,
    input_size=None,
    adm_in_channels=32,
    context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}},
    pos_embed_max_size=16,
    num_patches=256,
    pos_embed_scaling_factor=None,
    qk_norm="rms",
    x_block_self_attn=True,
)
QWEN_IMAGE = dict(
    image_model="qwen_image",
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=2,
    attention_head_dim=32,
    num_attention_heads=2,
    joint_attention_dim=32,
    axes_dims_rope=(8, 12, 12),
)
AURAFLOW = dict(  # 1 joint (MMDiT) block and 2 single blocks; 8 register tokens open the text
    in_channels=4,
    out_channels=4,
    patch_size=2,
    dim=64,
    n_layers=3,
    n_double_layers=1,
    n_heads=2,
    global_conddim=64,
    cond_seq_dim=32,
    max_seq=256,
)
PIXART = dict(
    image_model="pixart_sigma",
    input_size=16,
    patch_size=2,
    in_channels=4,
    hidden_size=64,
    depth=3,
    num_heads=2,
    mlp_ratio=2.0,
    pred_sigma=True,
    learn_sigma=True,
    caption_channels=32,
    model_max_length=16,
    micro_condition=False,
    pe_interpolation=1.0,
)
HUNYUAN_DIT = dict(
    image_model="hydit",
    input_size=16,
    patch_size=2,
    in_channels=4,
    hidden_size=64,
    depth=4,
    num_heads=2,
    mlp_ratio=2.0,
    text_states_dim=32,
    text_states_dim_t5=32,
    text_len=8,
    text_len_t5=8,
    qk_norm=True,
    size_cond=False,
    use_style_cond=False,
    learn_sigma=True,
)
WAN = dict(
    image_model="wan2.1",
    model_type="t2v",
    patch_size=(1, 2, 2),
    text_len=16,
    in_dim=16,
    dim=32,
    ffn_dim=64,
    freq_dim=32,
    text_dim=32,
    out_dim=16,
    num_heads=2,
    num_layers=3,
    qk_norm=True,
    cross_attn_norm=True,
    eps=1e-6,
)

HUNYUAN_VIDEO = dict(
    image_model="hunyuan_video",
    in_channels=16,
    out_channels=16,
    vec_in_dim=32,
    context_in_dim=32,
    hidden_size=64,
    mlp_ratio=2.0,
    num_heads=2,
    depth=2,
    depth_single_blocks=2,
    axes_dim=[8, 12, 12],
    theta=256,
    patch_size=[1, 2, 2],
    qkv_bias=True,
    guidance_embed=True,
    byt5=False,
    meanflow=False,
    use_cond_type_embedding=False,
    vision_in_dim=None,
    meanflow_sum=False,
)
LTX_VIDEO = dict(
    image_model="ltxv",
    in_channels=128,
    cross_attention_dim=64,
    attention_head_dim=32,
    num_attention_heads=2,
    caption_channels=32,
    num_layers=3,
)
MOCHI = dict(  # ComfyUI's Mochi asserts the real visual width (1536, MLP ratio 8); two blocks keep it small
    image_model="mochi_preview",
    patch_size=2,
    in_channels=12,
    hidden_size_x=1536,
    hidden_size_y=32,
    depth=2,
    num_heads=12,
    mlp_ratio_x=8.0,
    mlp_ratio_y=2.0,
    use_t5=True,
    t5_feat_dim=32,
    t5_token_length=16,
    learn_sigma=False,
    timestep_scale=1000.0,
    qk_norm=True,
    qkv_bias=False,
    out_bias=True,
)


def fill_random(model: torch.nn.Module, seed: int, query_key_gain: float = 8.0, value_gain: float = 2.0) -> None:
    """Random weights; norms near 1; attention weights scaled up so that blurring queries matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            values = torch.randn(parameter.shape, generator=generator) * 0.05
            if any(part in name for part in ("ln_q.", "ln_k.")):  # query / key norms: peaked attention
                values = 2.0 * (1.0 + values)
            elif "norm" in name and name.endswith(("weight", "scale")):
                values = 1.0 + values
            elif any(part in name for part in ("to_q.", "to_k.", "qkv.", "linear1.", "attn.q.", "attn.k.")):
                values = values * query_key_gain
            elif any(part in name for part in ("to_v.", "to_out.", "attn.proj.", "linear2.", "attn.v.", "attn.o.")):
                values = values * value_gain
            parameter.copy_(values.to(parameter.dtype))
        # persistent buffers come from checkpoints too (SD3's position table); ComfyUI leaves them empty
        persistent = set(model.state_dict())
        for name, buffer in model.named_buffers():
            if name in persistent and buffer.is_floating_point():
                buffer.copy_(torch.randn(buffer.shape, generator=generator).to(buffer.dtype) * 0.05)


def patcher(comfy, config_class, unet_config: dict, seed: int):
    config = config_class(dict(unet_config))
    model = config.get_model({})
    fill_random(model.diffusion_model, seed)
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


# each tiny model: ComfyUI's model class (comfy.supported_models) and the configuration it is built from
TINY_MODELS = {
    "tiny_sdxl": ("SDXL", SDXL_UNET),
    "tiny_sd15": ("SD15", SD15_UNET),
    "tiny_flux": ("Flux", FLUX),
    "tiny_sd3": ("SD3", SD3),
    "tiny_chroma": ("Chroma", CHROMA),
    "tiny_qwen_image": ("QwenImage", QWEN_IMAGE),
    "tiny_pixart": ("PixArtSigma", PIXART),
    "tiny_hunyuan_dit": ("HunyuanDiT", HUNYUAN_DIT),
    "tiny_wan": ("WAN21_T2V", WAN),
    "tiny_hunyuan_video": ("HunyuanVideo", HUNYUAN_VIDEO),
    "tiny_ltx_video": ("LTXV", LTX_VIDEO),
    "tiny_mochi": ("GenmoMochi", MOCHI),
    "tiny_auraflow": ("AuraFlow", AURAFLOW),
}


def tiny(comfy, name: str, seed: int = 0):
    """A tiny ComfyUI model of the family ``name`` (a key of TINY_MODELS), random weights from ``seed``."""
    model_class, config = TINY_MODELS[name]
    return patcher(comfy, getattr(comfy.supported_models, model_class), config, seed)


def _builder(name: str):
    def build(comfy, seed: int = 0):
        return tiny(comfy, name, seed)

    build.__name__ = name
    return build


(
    tiny_sdxl,
    tiny_sd15,
    tiny_flux,
    tiny_sd3,
    tiny_chroma,
    tiny_qwen_image,
    tiny_pixart,
    tiny_hunyuan_dit,
    tiny_wan,
    tiny_hunyuan_video,
    tiny_ltx_video,
    tiny_mochi,
    _tiny_auraflow_weights,
) = (_builder(name) for name in TINY_MODELS)


def tiny_auraflow(comfy, seed: int = 0):
    """ComfyUI's AuraFlow with weights under which blurred queries reach the output: its query norms have no
    weights (fill_random's query gain cannot sharpen them), and with small random gates a block's attention
    barely moves the residual; the gates and the attention's values and outputs grow instead."""
    model = _tiny_auraflow_weights(comfy, seed)
    with torch.no_grad():
        for name, parameter in model.model.diffusion_model.named_parameters():
            if any(part in name for part in (".modC.", ".modX.", ".modCX.", "v.weight", "o.weight")):
                parameter.mul_(8.0)
    return model


def sd3_conditioning(seed: int):
    generator = torch.Generator().manual_seed(seed)

    def one():
        return [
            [torch.randn(1, 9, 32, generator=generator), {"pooled_output": torch.randn(1, 32, generator=generator)}]
        ]

    return one(), one()


def text_conditioning(seed: int, tokens: int = 16, extra=lambda generator: {}):
    """(positive, negative) of random text embeddings (1, tokens, 32) and ``extra(generator)`` entries."""
    generator = torch.Generator().manual_seed(seed)

    def one():
        return [[torch.randn(1, tokens, 32, generator=generator), extra(generator)]]

    return one(), one()


def wan_conditioning(seed: int):
    return text_conditioning(seed)


def masked_text_conditioning(seed: int):  # LTX-Video and Mochi take the text's attention mask
    return text_conditioning(seed, extra=lambda generator: {"attention_mask": torch.ones(1, 16, dtype=torch.long)})


def hunyuan_dit_conditioning(seed: int):  # a CLIP-like and an mT5 text, each with its mask
    def extra(generator):
        mask = torch.ones(1, 8, dtype=torch.long)
        t5 = torch.randn(1, 8, 32, generator=generator)
        return {"conditioning_mt5xl": t5, "attention_mask": mask, "attention_mask_mt5xl": mask}

    return text_conditioning(seed, 8, extra)


def hunyuan_video_conditioning(seed: int):
    return text_conditioning(seed, 7, lambda generator: {"pooled_output": torch.randn(1, 32, generator=generator)})


def sdxl_conditioning(seed: int, height: int, width: int):
    generator = torch.Generator().manual_seed(seed)

    def one():
        text = torch.randn(1, 12, 64, generator=generator)
        pooled = torch.randn(1, 32, generator=generator)
        return [[text, {"pooled_output": pooled, "width": width * 8, "height": height * 8}]]

    return one(), one()


def flux_conditioning(seed: int):
    generator = torch.Generator().manual_seed(seed)

    def one():
        text = torch.randn(1, 7, 32, generator=generator)
        pooled = torch.randn(1, 32, generator=generator)
        return [[text, {"pooled_output": pooled, "guidance": 3.5}]]

    return one(), one()


def sample(comfy, model, positive, negative, latent: torch.Tensor, cfg: float, steps: int = 3, seed: int = 7):
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(
        model, noise, steps, cfg, "euler", "normal", positive, negative, latent, disable_pbar=True, seed=seed
    )
