"""SEG inside a real ComfyUI: the node against an independent reference, sampled with ComfyUI's own sampler.

The reference is written here from DESIGN.md §2, never from the node's code: for UNets, ComfyUI's own
``attn1`` replace patch point with the attention computed from scratch on queries blurred by a dense blur
matrix; for Flux, the queries after the query norm (before RoPE) blurred by the dense matrix; in both, the
perturbed prediction is a separate cond pass combined as ``denoised + s·(cond − perturbed)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_host import (
    flux_conditioning,
    hunyuan_dit_conditioning,
    hunyuan_video_conditioning,
    masked_text_conditioning,
    sample,
    sd3_conditioning,
    sdxl_conditioning,
    text_conditioning,
    tiny_auraflow,
    tiny_chroma,
    tiny_flux,
    tiny_hunyuan_dit,
    tiny_hunyuan_video,
    tiny_ltx_video,
    tiny_mochi,
    tiny_pixart,
    tiny_qwen_image,
    tiny_sd3,
    tiny_sd15,
    tiny_sdxl,
    tiny_wan,
    wan_conditioning,
)
from reference import reference_blur_matrix, reference_video_blur_matrix

TOLERANCE = 1e-5  # relative to the output's scale
MIN_EFFECT = 100 * TOLERANCE


def apply_node(node, model, **inputs):
    settings = dict(scale=3.0, blur_sigma=10000.0, layers="", start_percent=0.0, end_percent=1.0, temporal_sigma=0.0)
    settings.update(inputs)
    return node.SmoothedEnergyGuidance.execute(model, **settings).result[0]


# the reference ----------------------------------------------------------------------------------------------
def dense_blur(q: torch.Tensor, grid: tuple[int, ...], sigma: float, start: int = 0, temporal: float = 0.0):
    """Blur tokens [start, start + h·w) — or (t·h·w) for a video grid — of (B, N, C) queries, densely."""
    if len(grid) == 3:
        matrix = reference_video_blur_matrix(sigma, temporal, *grid)
    else:
        matrix = reference_blur_matrix(sigma, *grid)
    tokens = slice(start, start + matrix.shape[0])
    out = q.clone()
    out[:, tokens] = torch.einsum("nm,bmc->bnc", matrix, q[:, tokens].double()).to(q.dtype)
    return out


def grid_with(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The UNet level whose feature map has ``tokens`` tokens: the latent halved (rounding up)."""
    h, w = latent_hw
    for _ in range(8):
        if h * w == tokens:
            return h, w
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    raise AssertionError(f"no level of {latent_hw} has {tokens} tokens")


def reference_unet_attention(sigma: float):
    """An attn1 replace patch: softmax((blurred q)·kᵀ/√d)·v computed from scratch, per head."""

    def attention(q, k, v, extra_options):
        heads, dim = extra_options["n_heads"], extra_options["dim_head"]
        grid = grid_with(q.shape[1], tuple(extra_options["original_shape"][2:]))
        q = dense_blur(q, grid, sigma)

        def split(x):
            return x.reshape(x.shape[0], x.shape[1], heads, dim).transpose(1, 2).double()

        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(dim), dim=-1)
        out = (weights @ split(v)).transpose(1, 2).reshape(q.shape[0], q.shape[1], heads * dim)
        return out.to(q.dtype)

    return attention


class ModelCond:
    """The cond prediction SEG's term uses: ``cond_denoised``, or (``kept``) the model's own, kept by a pre-CFG
    function placed first, for chains in which a pre-CFG patch (APG) rewrites ``cond_denoised``."""

    def __init__(self, kept: bool) -> None:
        self.kept, self.value = kept, None

    def keep(self, args):
        self.value = args["conds_out"][0]
        return args["conds_out"]

    def install(self, model) -> None:
        if self.kept:
            options = model.model_options
            options["sampler_pre_cfg_function"] = [self.keep, *options.get("sampler_pre_cfg_function", [])]

    def __call__(self, args) -> torch.Tensor:
        return self.value if self.kept else args["cond_denoised"]


def reference_post_cfg(comfy, scale: float, perturbed_options, active=lambda sigma: True, cond=None):
    cond = cond or ModelCond(kept=False)

    def post_cfg(args):
        if not active(float(args["sigma"].flatten()[0])):
            return args["denoised"]
        options = perturbed_options(args["model_options"].copy())
        (perturbed,) = comfy.samplers.calc_cond_batch(
            args["model"], [args["cond"]], args["input"], args["sigma"], options
        )
        return args["denoised"] + scale * (cond(args) - perturbed)

    return post_cfg


def reference_unet_model(comfy, model, scale, sigma, active=lambda sigma: True, model_cond=False):
    def perturbed_options(options):  # the tiny UNet's mid block: one transformer block
        return comfy.model_patcher.set_model_options_patch_replace(
            options, reference_unet_attention(sigma), "attn1", "middle", 0, 0
        )

    reference, cond = model.clone(), ModelCond(model_cond)
    reference.set_model_sampler_post_cfg_function(reference_post_cfg(comfy, scale, perturbed_options, active, cond))
    cond.install(reference)
    return reference


def reference_hooked_model(comfy, model, scale, targets, grid, sigma, temporal=0.0, model_cond=False):
    """A separate perturbed cond pass in which ``targets`` — (query module name, first image token, token
    axis) — have their image tokens blurred densely; combined as denoised + s·(cond − perturbed)."""

    def blur(start, token_dim):
        def hook(module, inputs, output):
            if token_dim == 2:  # (B, heads, N, D)
                b, heads, n, d = output.shape
                flat = output.transpose(1, 2).reshape(b, n, heads * d)
                return dense_blur(flat, grid, sigma, start, temporal).reshape(b, n, heads, d).transpose(1, 2)
            return dense_blur(
                output.reshape(output.shape[0], output.shape[1], -1), grid, sigma, start, temporal
            ).reshape(output.shape)

        return hook

    def post_cfg(args):
        diffusion_model = args["model"].diffusion_model
        handles = [
            diffusion_model.get_submodule(name).register_forward_hook(blur(start, token_dim))
            for name, start, token_dim in targets
        ]
        try:
            (perturbed,) = comfy.samplers.calc_cond_batch(
                args["model"], [args["cond"]], args["input"], args["sigma"], args["model_options"]
            )
        finally:
            for handle in handles:
                handle.remove()
        return args["denoised"] + scale * (cond(args) - perturbed)

    reference, cond = model.clone(), ModelCond(model_cond)
    reference.set_model_sampler_post_cfg_function(post_cfg)
    cond.install(reference)
    return reference


def flux_targets(blocks, text=7):
    return [
        (f"{block}.img_attn.norm.query_norm", 0, 2)
        if block.startswith("double")
        else (f"{block}.norm.query_norm", text, 2)
        for block in blocks
    ]


def assert_matches(ours, reference, plain):
    scale = plain.abs().max()
    error = ((ours - reference).abs().max() / scale).item()
    effect = ((ours - plain).abs().max() / scale).item()
    assert error < TOLERANCE, f"SEG differs from the reference by {error:.2e} (relative)"
    assert effect > MIN_EFFECT, f"SEG moved the output by only {effect:.2e}: the test would prove nothing"


# UNet (SDXL layout) -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [5.0, 1.0])
@pytest.mark.parametrize("sigma", [2.0, 10000.0])
def test_sdxl_node_matches_the_reference_on_a_wide_odd_grid(comfy, node, cfg, sigma):
    model = tiny_sdxl(comfy)
    latent = torch.zeros(1, 4, 13, 21)  # mid level 7 × 11
    positive, negative = sdxl_conditioning(1, 13, 21)
    plain = sample(comfy, model, positive, negative, latent, cfg)
    ours = sample(comfy, apply_node(node, model, scale=3.0, blur_sigma=sigma), positive, negative, latent, cfg)
    reference = sample(comfy, reference_unet_model(comfy, model, 3.0, sigma), positive, negative, latent, cfg)
    assert_matches(ours, reference, plain)


@pytest.mark.parametrize("cfg", [5.0, 1.0])
def test_sd15_node_matches_the_reference(comfy, node, cfg):
    model = tiny_sd15(comfy)
    latent = torch.zeros(1, 4, 13, 21)  # mid level 7 × 11
    positive, negative = text_conditioning(15)
    plain = sample(comfy, model, positive, negative, latent, cfg)
    ours = sample(comfy, apply_node(node, model, blur_sigma=2.0), positive, negative, latent, cfg)
    reference = sample(comfy, reference_unet_model(comfy, model, 3.0, 2.0), positive, negative, latent, cfg)
    assert_matches(ours, reference, plain)


def test_scale_zero_is_the_unpatched_model_bit_for_bit(comfy, node):
    model = tiny_sdxl(comfy)
    assert apply_node(node, model, scale=0.0) is model
    latent = torch.zeros(1, 4, 8, 8)
    positive, negative = sdxl_conditioning(2, 8, 8)
    assert torch.equal(
        sample(comfy, apply_node(node, model, scale=0.0), positive, negative, latent, 5.0),
        sample(comfy, model, positive, negative, latent, 5.0),
    )


def test_the_window_follows_comfyuis_percent_convention(comfy, node):
    model = tiny_sdxl(comfy)
    latent = torch.zeros(1, 4, 8, 10)
    positive, negative = sdxl_conditioning(3, 8, 10)
    sampling = model.get_model_object("model_sampling")
    sigma_start, sigma_end = sampling.percent_to_sigma(0.0), sampling.percent_to_sigma(0.6)
    plain = sample(comfy, model, positive, negative, latent, 5.0, steps=4)
    windowed = apply_node(node, model, blur_sigma=2.0, end_percent=0.6)
    ours = sample(comfy, windowed, positive, negative, latent, 5.0, steps=4)
    reference = reference_unet_model(comfy, model, 3.0, 2.0, active=lambda s: sigma_end <= s <= sigma_start)
    assert_matches(ours, sample(comfy, reference, positive, negative, latent, 5.0, steps=4), plain)
    # the perturbed pass runs on exactly the steps whose sigma lies in the window
    sigmas = comfy.samplers.KSampler(model, steps=4, device="cpu", sampler="euler", scheduler="normal").sigmas[:-1]
    expected = sum(sigma_end <= float(sigma) <= sigma_start for sigma in sigmas)
    assert 0 < expected < 4
    to_q = model.model.diffusion_model.get_submodule("middle_block.1.transformer_blocks.0.attn1.to_q")
    calls = []
    handle = to_q.register_forward_hook(lambda module, inputs, output: calls.append(output.shape[0]))
    try:
        sample(comfy, windowed, positive, negative, latent, 5.0, steps=4)
    finally:
        handle.remove()
    assert calls == [2, 1] * expected + [2] * (4 - expected)  # [cond, uncond] then the perturbed cond pass
    empty = apply_node(node, model, blur_sigma=2.0, start_percent=1.0, end_percent=1.0)
    assert torch.equal(sample(comfy, empty, positive, negative, latent, 5.0, steps=4), plain)


def calls_of(model, name: str, run) -> list[int]:
    """The batch sizes module ``name`` of the diffusion model ran with during ``run()``."""
    calls = []
    module = model.model.diffusion_model.get_submodule(name)
    handle = module.register_forward_hook(lambda module, inputs, output: calls.append(output.shape[0]))
    try:
        run()
    finally:
        handle.remove()
    return calls


@pytest.mark.parametrize(("cfg", "guided"), [(5.0, 2), (1.0, 1)])
def test_the_perturbed_pass_replays_the_layers_before_the_first_seg_layer(comfy, node, cfg, guided):
    """Before the mid block nothing depends on the blur: the perturbed pass takes those layers' outputs from
    the step's guided call instead of running them, and gives what running them gives."""
    model = tiny_sdxl(comfy)
    latent = torch.zeros(1, 4, 13, 21)
    positive, negative = sdxl_conditioning(4, 13, 21)
    patched = apply_node(node, model, blur_sigma=2.0)
    patch = patched.model_options["sampler_post_cfg_function"][-1]
    prefix_layer, seg_query = "input_blocks.5.0.in_layers", "middle_block.1.transformer_blocks.0.attn1.to_q"
    runs = {}

    def run():
        runs["ours"] = sample(comfy, patched, positive, negative, latent, cfg)

    assert calls_of(model, prefix_layer, run) == [guided] * 3  # never in the perturbed pass
    assert patch.prefix.replayed == 3
    assert (
        calls_of(model, seg_query, lambda: sample(comfy, patched, positive, negative, latent, cfg)) == [guided, 1] * 3
    )
    assert calls_of(model, "middle_block.0.in_layers", run) == [guided] * 3  # the mid block's first ResBlock too
    full = model.clone()  # the same SEG without the replay
    full.set_model_sampler_post_cfg_function(node.seg_patch(model, 3.0, 2.0))
    assert (
        calls_of(
            model, prefix_layer, lambda: runs.setdefault("full", sample(comfy, full, positive, negative, latent, cfg))
        )
        == [guided, 1] * 3
    )
    plain = sample(comfy, model, positive, negative, latent, cfg)
    assert_matches(runs["ours"], runs["full"], plain)


def test_the_perturbed_pass_runs_in_full_when_its_inputs_are_not_the_recorded_ones(comfy, node):
    """Two positive conds share one call (two cond chunks): nothing is recorded, every layer runs, and SEG is
    still the reference's."""
    model = tiny_sdxl(comfy)
    latent = torch.zeros(1, 4, 13, 21)
    positive, negative = sdxl_conditioning(5, 13, 21)
    second, _ = sdxl_conditioning(6, 13, 21)
    positive = positive + second
    patched = apply_node(node, model, blur_sigma=2.0)
    patch = patched.model_options["sampler_post_cfg_function"][-1]
    runs = {}
    calls = calls_of(
        model,
        "input_blocks.5.0.in_layers",
        lambda: runs.setdefault("ours", sample(comfy, patched, positive, negative, latent, 5.0)),
    )
    assert calls == [3, 2] * 3 and patch.prefix.replayed == 0  # [cond, cond, uncond], then two cond rows in full
    plain = sample(comfy, model, positive, negative, latent, 5.0)
    reference = sample(comfy, reference_unet_model(comfy, model, 3.0, 2.0), positive, negative, latent, 5.0)
    assert_matches(runs["ours"], reference, plain)


def test_layer_specs_use_the_projects_grammar_and_bad_ones_are_named(comfy, node):
    model = tiny_sdxl(comfy)
    patch = node.seg_patch(model, 3.0, 2.0, "d0 + u1")
    family, layers = patch.resolve(model.model.diffusion_model, "SDXL")
    assert [layer.name for layer in layers] == [
        "input_blocks.4.1.transformer_blocks.0.attn1",
        "output_blocks.1.1.transformer_blocks.0.attn1",
    ]
    with pytest.raises(ValueError, match="u7"):
        node.seg_patch(model, 3.0, 2.0, "u7")


# Flux -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("layers", "blocks"), [("", ["single_blocks.0"]), ("double.1", ["double_blocks.1"])], ids=["default", "double"]
)
@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_flux_node_matches_the_reference(comfy, node, layers, blocks, cfg):
    model = tiny_flux(comfy)
    latent = torch.zeros(1, 16, 10, 14)  # 5 × 7 image tokens
    positive, negative = flux_conditioning(4)
    plain = sample(comfy, model, positive, negative, latent, cfg)
    ours = sample(comfy, apply_node(node, model, blur_sigma=1.0, layers=layers), positive, negative, latent, cfg)
    reference = reference_hooked_model(comfy, model, 3.0, flux_targets(blocks), (5, 7), 1.0)
    assert_matches(ours, sample(comfy, reference, positive, negative, latent, cfg), plain)


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_chroma_node_matches_the_reference(comfy, node, cfg):
    model = tiny_chroma(comfy)
    latent = torch.zeros(1, 16, 10, 14)
    positive, negative = flux_conditioning(11)
    plain = sample(comfy, model, positive, negative, latent, cfg)
    ours = sample(comfy, apply_node(node, model, blur_sigma=2.0), positive, negative, latent, cfg)
    reference = reference_hooked_model(comfy, model, 3.0, flux_targets(["single_blocks.0"]), (5, 7), 2.0)
    assert_matches(ours, sample(comfy, reference, positive, negative, latent, cfg), plain)


@pytest.mark.parametrize("layers", ["", "double.0"])
def test_flux_kontext_blurs_only_the_generated_images_tokens(comfy, node, layers):
    """Kontext appends a reference image's tokens after the generated image's: they stay unblurred."""
    model = tiny_flux(comfy)
    latent = torch.zeros(1, 16, 10, 14)
    positive, negative = flux_conditioning(13)
    edit = torch.randn(1, 16, 8, 6, generator=torch.Generator().manual_seed(14))  # 12 more image tokens
    positive = [[text, {**extra, "reference_latents": [edit]}] for text, extra in positive]
    plain = sample(comfy, model, positive, negative, latent, 1.0)
    ours = sample(comfy, apply_node(node, model, blur_sigma=1.0, layers=layers), positive, negative, latent, 1.0)
    blocks = ["single_blocks.0"] if not layers else ["double_blocks.0"]
    reference = reference_hooked_model(comfy, model, 3.0, flux_targets(blocks), (5, 7), 1.0)
    assert_matches(ours, sample(comfy, reference, positive, negative, latent, 1.0), plain)


def test_flux_odd_latent_uses_comfyuis_padded_token_grid(comfy, node):
    model = tiny_flux(comfy)
    latent = torch.zeros(1, 16, 11, 13)  # padded to 12 × 14: 6 × 7 tokens
    positive, negative = flux_conditioning(5)
    plain = sample(comfy, model, positive, negative, latent, 1.0)
    ours = sample(comfy, apply_node(node, model, blur_sigma=1.0), positive, negative, latent, 1.0)
    reference = reference_hooked_model(comfy, model, 3.0, flux_targets(["single_blocks.0"]), (6, 7), 1.0)
    assert_matches(ours, sample(comfy, reference, positive, negative, latent, 1.0), plain)


def test_an_unserved_model_family_is_named_in_the_error(comfy, node):
    from smoothed_energy_guidance.comfyui.models import comfy_family

    class CosmosPredict2(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match=r"CosmosT2IPredict2 \(CosmosPredict2\).*Flux"):
        comfy_family(CosmosPredict2(), "CosmosT2IPredict2")


# SD3 / SD3.5 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("layers", "block"), [("", "joint_blocks.1"), ("blocks.0", "joint_blocks.0")])
@pytest.mark.parametrize(("cfg", "sigma"), [(5.0, 10000.0), (1.0, 10000.0), (5.0, 2.0)])
def test_sd3_node_matches_the_reference_on_both_image_attentions(comfy, node, layers, block, cfg, sigma):
    model = tiny_sd3(comfy)
    latent = torch.zeros(1, 16, 10, 13)  # 5 × 7 tokens (13 padded to 14)
    positive, negative = sd3_conditioning(8)
    plain = sample(comfy, model, positive, negative, latent, cfg)
    ours = sample(comfy, apply_node(node, model, blur_sigma=sigma, layers=layers), positive, negative, latent, cfg)
    targets = [(f"{block}.x_block.{attention}.ln_q", 0, 1) for attention in ("attn", "attn2")]
    reference = reference_hooked_model(comfy, model, 3.0, targets, (5, 7), sigma)
    assert_matches(ours, sample(comfy, reference, positive, negative, latent, cfg), plain)


# Qwen-Image (with a reference image, as its edit model gets) -------------------------------------------------
@pytest.mark.parametrize("reference_image", [False, True], ids=["text2img", "edit"])
@pytest.mark.parametrize("cfg", [4.0, 1.0])
def test_qwen_image_node_blurs_only_the_generated_images_tokens(comfy, node, reference_image, cfg):
    model = tiny_qwen_image(comfy)
    latent = torch.zeros(1, 16, 1, 10, 13)  # 5 × 7 tokens
    positive, negative = wan_conditioning(9)  # text (1, 16, 32)
    if reference_image:
        edit = torch.randn(1, 16, 1, 6, 8, generator=torch.Generator().manual_seed(10))  # 12 more image tokens
        positive = [[text, {**extra, "reference_latents": [edit]}] for text, extra in positive]
    plain = sample(comfy, model, positive, negative, latent, cfg)
    ours = sample(comfy, apply_node(node, model, blur_sigma=1.0), positive, negative, latent, cfg)
    targets = [("transformer_blocks.1.attn.norm_q", 0, 2)]
    reference = reference_hooked_model(comfy, model, 3.0, targets, (5, 7), 1.0)
    assert_matches(ours, sample(comfy, reference, positive, negative, latent, cfg), plain)


# PixArt and HunyuanDiT ------------------------------------------------------------------------------------------
IMAGE = {  # builder, conditioning, latent, layer spec, reference targets, token grid
    # ComfyUI's PixArt needs even latent sides and about 32 latent pixels (its position table's base size)
    "pixart": (tiny_pixart, text_conditioning, (1, 4, 32, 38), "", [("blocks.1.attn.q_norm", 0, 1)], (16, 19)),
    "hunyuandit": (
        tiny_hunyuan_dit,
        hunyuan_dit_conditioning,
        (1, 4, 10, 14),
        "",
        [("blocks.2.attn1.q_norm", 0, 2)],
        (5, 7),
    ),
    # ComfyUI's AuraFlow shares SD3's class name (MMDiT): it is told apart by its module and gets its own layers.
    # The default is the first single block, whose queries are [8 registers, 16 text tokens, image]; a joint
    # block's image stream has queries of its own.
    "auraflow": (
        tiny_auraflow,
        text_conditioning,
        (1, 4, 10, 14),
        "",
        [("single_layers.0.attn.q_norm1", 8 + 16, 1)],
        (5, 7),
    ),
    "auraflow-joint": (
        tiny_auraflow,
        text_conditioning,
        (1, 4, 10, 14),
        "joint.0",
        [("double_layers.0.attn.q_norm2", 0, 1)],
        (5, 7),
    ),
}


@pytest.mark.parametrize("cfg", [4.0, 1.0])
@pytest.mark.parametrize("family", list(IMAGE))
def test_image_dit_node_matches_the_reference(comfy, node, family, cfg):
    build, conditioning, shape, layers, targets, grid = IMAGE[family]
    model = build(comfy)
    latent = torch.zeros(shape)
    positive, negative = conditioning(12)
    plain = sample(comfy, model, positive, negative, latent, cfg)
    ours = sample(comfy, apply_node(node, model, blur_sigma=2.0, layers=layers), positive, negative, latent, cfg)
    reference = reference_hooked_model(comfy, model, 3.0, targets, grid, 2.0)
    assert_matches(ours, sample(comfy, reference, positive, negative, latent, cfg), plain)


# Video: Wan, HunyuanVideo, LTX-Video, Mochi ------------------------------------------------------------------
VIDEO = {  # builder, conditioning, latent (B, C, T, H, W), reference targets, token grid (t, h, w)
    "wan": (tiny_wan, wan_conditioning, (1, 16, 3, 10, 13), [("blocks.1.self_attn.norm_q", 0, 1)], (3, 5, 7)),
    "hunyuanvideo": (  # ComfyUI's HunyuanVideo needs even latent sides; its single blocks are [video, text]
        tiny_hunyuan_video,
        hunyuan_video_conditioning,
        (1, 16, 3, 10, 14),
        [("single_blocks.0.norm.query_norm", 0, 2)],
        (3, 5, 7),
    ),
    "ltx-video": (
        tiny_ltx_video,
        masked_text_conditioning,
        (1, 128, 3, 5, 7),
        [("transformer_blocks.1.attn1.q_norm", 0, 1)],
        (3, 5, 7),
    ),
    "mochi": (tiny_mochi, masked_text_conditioning, (1, 12, 3, 10, 14), [("blocks.1.attn.q_norm_x", 0, 1)], (3, 5, 7)),
}
VIDEO_CASES = [
    *[
        ("wan", sigma, temporal, cfg)
        for sigma, temporal in [(1.0, 1.0), (2.0, 0.0), (10000.0, 10000.0)]
        for cfg in (5, 1)
    ],
    *[(family, 1.0, 1.0, cfg) for family in ("hunyuanvideo", "ltx-video", "mochi") for cfg in (5, 1)],
]


@pytest.mark.parametrize(("family", "sigma", "temporal", "cfg"), VIDEO_CASES)
def test_video_node_matches_the_video_reference(comfy, node, family, sigma, temporal, cfg):
    build, conditioning, shape, targets, grid = VIDEO[family]
    model = build(comfy)
    latent = torch.zeros(shape)
    positive, negative = conditioning(6)
    plain = sample(comfy, model, positive, negative, latent, cfg)
    patched = apply_node(node, model, blur_sigma=sigma, temporal_sigma=temporal)
    ours = sample(comfy, patched, positive, negative, latent, cfg)
    reference = reference_hooked_model(comfy, model, 3.0, targets, grid, sigma, temporal)
    assert_matches(ours, sample(comfy, reference, positive, negative, latent, cfg), plain)


# Installing ---------------------------------------------------------------------------------------------------
def load_with_comfyuis_loader(path) -> bool:
    import asyncio

    import nodes as comfy_nodes  # ComfyUI's own node registry and loader

    comfy_nodes.NODE_CLASS_MAPPINGS.pop("SmoothedEnergyGuidance", None)
    loaded = asyncio.run(comfy_nodes.load_custom_node(str(path)))
    return loaded and "SmoothedEnergyGuidance" in comfy_nodes.NODE_CLASS_MAPPINGS


def test_comfyuis_loader_loads_a_clone_of_the_repository(comfy, tmp_path):
    import shutil

    from comfyui_host import ROOT

    clone = tmp_path / "custom_nodes" / "smoothed-energy-guidance"
    clone.mkdir(parents=True)
    shutil.copy(ROOT / "__init__.py", clone / "__init__.py")
    shutil.copy(ROOT / "pyproject.toml", clone / "pyproject.toml")
    (clone / "src").symlink_to(ROOT / "src")
    assert load_with_comfyuis_loader(clone)


def test_comfyuis_loader_loads_the_one_line_shim_of_a_pip_install(comfy, tmp_path):
    import shutil

    from comfyui_host import ROOT

    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    shim = custom_nodes / "smoothed_energy_guidance_nodes.py"
    shutil.copy(ROOT / "comfyui" / "smoothed_energy_guidance_nodes.py", shim)
    assert load_with_comfyuis_loader(shim)
    import nodes as comfy_nodes

    assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS["SmoothedEnergyGuidance"] == "Smoothed Energy Guidance (SEG)"


def test_the_node_schema_takes_the_inputs_users_expect(comfy, node):
    schema = node.SmoothedEnergyGuidance.define_schema()
    inputs = {item.id: item for item in schema.inputs}
    assert list(inputs) == ["model", "scale", "blur_sigma", "layers", "start_percent", "end_percent", "temporal_sigma"]
    assert inputs["scale"].default == 3.0
    assert inputs["blur_sigma"].default > 9999 and inputs["blur_sigma"].max > 9999  # ∞, as the official SEG
    assert (inputs["start_percent"].default, inputs["end_percent"].default) == (0.0, 1.0)
    assert inputs["layers"].default == ""


# The replayed prefix in DiTs ----------------------------------------------------------------------------------
DIT_PREFIX = {  # builder, conditioning, latent, a prefix block and the first SEG block (the default layer)
    "flux": (tiny_flux, flux_conditioning, (1, 16, 10, 14), "double_blocks.1", "single_blocks.0"),
    "sd3": (tiny_sd3, sd3_conditioning, (1, 16, 10, 13), "joint_blocks.0", "joint_blocks.1"),
    "wan": (tiny_wan, wan_conditioning, (1, 16, 3, 10, 13), "blocks.0", "blocks.1"),
    "auraflow": (tiny_auraflow, text_conditioning, (1, 4, 10, 14), "double_layers.0", "single_layers.0"),
    "hunyuanvideo": (
        tiny_hunyuan_video,
        hunyuan_video_conditioning,
        (1, 16, 3, 10, 14),
        "double_blocks.0",
        "single_blocks.0",
    ),
}


@pytest.mark.parametrize("cfg", [4.0, 1.0])
@pytest.mark.parametrize("family", list(DIT_PREFIX))
def test_dit_perturbed_pass_replays_the_blocks_before_the_first_seg_block(comfy, node, family, cfg):
    """Each block before the first SEG block only feeds the next, so the perturbed pass returns the last such
    block's recorded cond-row output from all of them and none runs (the reference tests above hold with it)."""
    build, conditioning, shape, prefix_block, seg_block = DIT_PREFIX[family]
    model = build(comfy)
    latent = torch.zeros(shape)
    positive, negative = conditioning(9)
    patched = apply_node(node, model, blur_sigma=2.0)
    patch = patched.model_options["sampler_post_cfg_function"][-1]
    block = model.model.diffusion_model.get_submodule(prefix_block)
    inside = next(name for name, module in block.named_modules() if isinstance(module, torch.nn.Linear))
    runs = {}
    prefix_calls = calls_of(
        model,
        f"{prefix_block}.{inside}",
        lambda: runs.setdefault("ours", sample(comfy, patched, positive, negative, latent, cfg)),
    )
    guided = 2 if cfg > 1 else 1
    assert len(prefix_calls) == 3 and patch.prefix.replayed == 3  # once per step, never in the perturbed pass
    seg_inside = next(
        name
        for name, module in model.model.diffusion_model.get_submodule(seg_block).named_modules()
        if isinstance(module, torch.nn.Linear)
    )
    seg_calls = calls_of(
        model, f"{seg_block}.{seg_inside}", lambda: sample(comfy, patched, positive, negative, latent, cfg)
    )
    assert len(seg_calls) == 6 and guided in seg_calls  # the guided call and the perturbed pass, every step
    full = model.clone()  # the same SEG, every block run again
    full.set_model_sampler_post_cfg_function(node.seg_patch(model, 3.0, 2.0))
    plain = sample(comfy, model, positive, negative, latent, cfg)
    assert_matches(runs["ours"], sample(comfy, full, positive, negative, latent, cfg), plain)
