"""The guider on the newest Modular Diffusers image families: Flux 3, Krea 2, ERNIE-Image, Qwen-Image 2.1
and Cosmos / Anima.

One denoising step is driven through the guider protocol the way each family's modular denoise block
drives it (set_state, prepare_inputs, prepare_models / denoiser call / cleanup_models per batch, then
the guider). The reference is written out independently: cond and uncond predictions of the plain
model, and a perturbed prediction made by a separate call whose chosen attentions' ``norm_q`` outputs
are replaced by the dense-matrix blur over the generated image's tokens (``reference_dit``), at the
position in the query that the test states from the model's own layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from reference_dit import _blur_rows

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, TOLERANCE, no_hooks_left
from smoothed_energy_guidance.testing import sharpen_transformer

pytestmark = pytest.mark.filterwarnings("ignore:Guiders are currently an experimental feature")
GRID = (6, 10)  # the generated image's token grid: non-square on purpose
TOKENS = GRID[0] * GRID[1]
TEXT = 5
REFERENCE_TOKENS = 12  # a 3×4 reference image (Flux 3 editing)


@dataclass
class Family:
    model: torch.nn.Module
    call: Callable[[torch.Tensor, bool], dict]  # (text embedding, with reference image) → denoiser kwargs
    texts: tuple[torch.Tensor, torch.Tensor]  # cond, uncond
    default_layer: str  # the middle block's attention, stated by the test
    image_offset: int  # tokens ahead of the generated image's tokens in that attention's queries
    token_dim: int = 1  # token axis of that attention's norm_q output


def _texts(*shape):
    g = torch.Generator().manual_seed(1)
    return torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)


def _noise(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(2))


def _sharp(model):
    """Peaked attention, and random values for zero-initialised layers (ERNIE-Image's output projection)."""
    torch.manual_seed(3)
    sharpen_transformer(model, 4.0)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.2)
    return model.eval()


def flux3() -> Family:
    from diffusers import Flux3Transformer2DModel

    torch.manual_seed(0)
    model = _sharp(
        Flux3Transformer2DModel(
            in_channels=16,
            cond_in_channels=16,
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            timestep_channels=16,
            axes_dims_rope=(2, 2, 2, 2),
        )
    )
    ids = torch.cartesian_prod(torch.arange(1), torch.arange(GRID[0]), torch.arange(GRID[1]), torch.arange(1))
    reference_ids = torch.cartesian_prod(torch.arange(1, 2), torch.arange(3), torch.arange(4), torch.arange(1))

    def call(text, reference=False):
        kwargs = dict(
            hidden_states=_noise(1, TOKENS, 16),
            encoder_hidden_states=text,
            timestep=torch.tensor([0.5]),
            img_ids=ids.float(),
            txt_ids=torch.zeros(TEXT, 4),
        )
        if reference:
            kwargs.update(
                image_cond_hidden_states=_noise(1, REFERENCE_TOKENS, 16), image_cond_ids=reference_ids.float()
            )
        return kwargs

    # blocks: image.0, single.0, single.1 → the middle is single.0, whose queries are [text, image, reference]
    return Family(model, call, _texts(1, TEXT, 16), "single_transformer_blocks.0.attn", TEXT)


def krea2() -> Family:
    from diffusers import Krea2Transformer2DModel

    torch.manual_seed(0)
    model = _sharp(
        Krea2Transformer2DModel(
            in_channels=16,
            num_layers=3,
            attention_head_dim=8,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=32,
            timestep_embed_dim=16,
            text_hidden_dim=16,
            num_text_layers=2,
            text_num_attention_heads=2,
            text_num_key_value_heads=2,
            text_intermediate_size=32,
            num_layerwise_text_blocks=1,
            num_refiner_text_blocks=1,
            axes_dims_rope=(2, 2, 4),
        )
    )
    image_ids = torch.cartesian_prod(torch.arange(1), torch.arange(GRID[0]), torch.arange(GRID[1]))
    positions = torch.cat([torch.zeros(TEXT, 3, dtype=torch.long), image_ids])

    def call(text, reference=False):
        return dict(
            hidden_states=_noise(1, TOKENS, 16),
            encoder_hidden_states=text,
            timestep=torch.tensor([0.5]),
            position_ids=positions,
        )

    return Family(model, call, _texts(1, TEXT, 2, 16), "transformer_blocks.1.attn", TEXT)


def ernie_image() -> Family:
    from diffusers import ErnieImageTransformer2DModel

    torch.manual_seed(0)
    model = _sharp(
        ErnieImageTransformer2DModel(
            hidden_size=32,
            num_attention_heads=2,
            num_layers=3,
            ffn_hidden_size=64,
            in_channels=4,
            out_channels=4,
            patch_size=2,
            text_in_dim=16,
            rope_axes_dim=(4, 6, 6),
        )
    )

    def call(text, reference=False):
        latents = _noise(1, 4, 2 * GRID[0], 2 * GRID[1])
        return dict(
            hidden_states=latents, timestep=torch.tensor([500.0]), text_bth=text, text_lens=torch.tensor([TEXT])
        )

    return Family(model, call, _texts(1, TEXT, 16), "layers.1.self_attention", 0)  # queries: [image, text]


def qwen_image21() -> Family:
    from diffusers import QwenImage21Transformer2DModel

    torch.manual_seed(0)
    model = _sharp(
        QwenImage21Transformer2DModel(
            patch_size=1,
            in_channels=16,
            out_channels=16,
            num_layers=3,
            attention_head_dim=8,
            num_attention_heads=2,
            context_in_dim=16,
            axes_dims_rope=(2, 2, 4),
        )
    )
    slots = torch.tensor([[False] * TEXT + [True] * (TOKENS // 4)])  # each image slot holds 2×2 latent tokens

    def call(text, reference=False):
        return dict(
            hidden_states=_noise(1, TOKENS, 16),
            encoder_hidden_states=text,
            timestep=torch.tensor([0.5]),
            img_shapes=[[(1, *GRID)]],
            img_mask=slots,
        )

    # the joint sequence is [text, target image]; the target image's tokens end it
    return Family(model, call, _texts(1, TEXT, 16), "transformer_blocks.1.attn", TEXT)


def cosmos() -> Family:
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    model = _sharp(
        CosmosTransformer3DModel(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=3,
            text_embed_dim=32,
            adaln_lora_dim=8,
            max_size=(4, 32, 32),
            concat_padding_mask=False,  # the padding-mask channel needs torchvision, which the tests do not install
            extra_pos_embed_type=None,
            encoder_hidden_states_channels=32,
        )
    )

    def call(text, reference=False):
        latents = _noise(1, 4, 1, 2 * GRID[0], 2 * GRID[1])
        padding = torch.zeros(1, 1, 2 * GRID[0], 2 * GRID[1])
        return dict(
            hidden_states=latents, timestep=torch.tensor([0.5]), encoder_hidden_states=text, padding_mask=padding
        )

    return Family(model, call, _texts(1, TEXT, 32), "transformer_blocks.1.attn1", 0, token_dim=2)


FAMILIES = [flux3, krea2, ernie_image, qwen_image21, cosmos]
IDS = ["flux3", "krea2", "ernie-image", "qwen-image-2.1", "cosmos"]


def guided_step(guider, family: Family, reference: bool = False) -> torch.Tensor:
    """One step of a modular denoise block: the guider's batches, one denoiser call each."""
    components = SimpleNamespace(transformer=family.model)  # what a modular denoise block holds
    guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(500))
    batches = guider.prepare_inputs({"text": family.texts})
    for batch in batches:
        guider.prepare_models(components.transformer)
        batch.noise_pred = components.transformer(**family.call(batch.text, reference), return_dict=False)[0]
        guider.cleanup_models(components.transformer)
    return guider(batches)[0]


@contextlib.contextmanager
def reference_blur(family: Family, sigma: float):
    """Replace the default layer's query-norm output by the dense blur of the generated image's tokens."""
    norm = dict(family.model.named_modules())[family.default_layer].norm_q
    original = norm.forward
    norm.forward = lambda q: _blur_rows(original(q), slice(None), GRID, sigma, family.token_dim, family.image_offset)
    try:
        yield
    finally:
        del norm.forward


def predict(family: Family, text: torch.Tensor, reference: bool = False) -> torch.Tensor:
    return family.model(**family.call(text, reference), return_dict=False)[0]


@pytest.mark.parametrize("build", FAMILIES, ids=IDS)
@pytest.mark.parametrize("cfg, sigma", [(4.0, 1.0), (1.0, float("inf")), (4.0, 10000.0)])
def test_guider_matches_the_reference(build, cfg, sigma):
    family = build()
    guider = seg.SmoothedEnergyGuidance(guidance_scale=cfg, blur_sigma=sigma)
    with torch.no_grad():
        ours = guided_step(guider, family)
        cond, uncond = predict(family, family.texts[0]), predict(family, family.texts[1])
        with reference_blur(family, sigma):
            perturbed = predict(family, family.texts[0])
    reference = (uncond + cfg * (cond - uncond) if cfg > 1 else cond) + 3.0 * (cond - perturbed)
    assert (ours - reference).abs().max() <= TOLERANCE
    assert 3.0 * (cond - perturbed).abs().max() > MIN_EFFECT
    assert no_hooks_left(family.model)


@pytest.mark.parametrize("build", FAMILIES, ids=IDS)
def test_scale_zero_is_plain_cfg_bit_for_bit(build):
    from diffusers.guiders import ClassifierFreeGuidance

    family = build()
    with torch.no_grad():
        ours = guided_step(seg.SmoothedEnergyGuidance(guidance_scale=4.0, scale=0.0), family)
        plain = guided_step(ClassifierFreeGuidance(guidance_scale=4.0), family)
    assert torch.equal(ours, plain)


def test_flux3_reference_image_tokens_stay_unblurred():
    """Flux 3 editing: the joint queries are [text, image, reference image]; only the image's are blurred."""
    family = flux3()
    guider = seg.SmoothedEnergyGuidance(guidance_scale=1.0, blur_sigma=1.0)
    with torch.no_grad():
        ours = guided_step(guider, family, reference=True)
        cond = predict(family, family.texts[0], reference=True)
        with reference_blur(family, 1.0):
            perturbed = predict(family, family.texts[0], reference=True)
    assert ours.shape[1] == TOKENS
    assert (ours - (cond + 3.0 * (cond - perturbed))).abs().max() <= TOLERANCE
    assert (cond - perturbed).abs().max() > MIN_EFFECT / 3


def test_flux3_layers_name_its_image_and_joint_stacks():
    family = flux3()
    guider = seg.SmoothedEnergyGuidance(guidance_scale=1.0, layers=["image.0"], blur_sigma=1.0)
    with torch.no_grad():
        ours = guided_step(guider, family)
        cond = predict(family, family.texts[0])
        norm = family.model.mode_blocks.image[0].attn.norm_q
        original = norm.forward
        norm.forward = lambda q: _blur_rows(original(q), slice(None), GRID, 1.0, 1, 0)  # image tokens only
        try:
            perturbed = predict(family, family.texts[0])
        finally:
            del norm.forward
    assert (ours - (cond + 3.0 * (cond - perturbed))).abs().max() <= TOLERANCE
    with pytest.raises(ValueError, match="'image'.*'single'"):
        guided_step(seg.SmoothedEnergyGuidance(layers=["double.0"]), family)


def test_cosmos_video_calls_are_refused_clearly():
    family = cosmos()
    kwargs = family.call(family.texts[0])
    kwargs["hidden_states"] = _noise(1, 4, 3, 2 * GRID[0], 2 * GRID[1])
    guider = seg.SmoothedEnergyGuidance(guidance_scale=1.0)
    guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(500))
    guider.prepare_inputs({"text": family.texts})
    guider.prepare_models(family.model)
    with pytest.raises(ValueError, match="3 latent frames"):
        family.model(**kwargs)
    guider.cleanup_models(family.model)
    assert no_hooks_left(family.model)


def _ids_grid(ids):
    return ids[:, 1].unique().numel(), ids[:, 2].unique().numel()


def _modular_case(name: str):
    """(family, modular blocks, embeddings the text-encoder step would make, grid reader of a denoiser call)."""
    import diffusers.modular_pipelines as modular

    g = torch.Generator().manual_seed(1)
    mask = dict(
        prompt_embeds_mask=torch.ones(1, TEXT, dtype=torch.bool),
        negative_prompt_embeds_mask=torch.ones(1, TEXT, dtype=torch.bool),
    )
    cases = {
        "flux3": (
            flux3,
            "Flux3AutoBlocks",
            dict(
                prompt_embeds=torch.randn(1, TEXT, 16, generator=g),
                negative_prompt_embeds=torch.randn(1, TEXT, 16, generator=g),
            ),
            lambda args, kwargs: _ids_grid(kwargs["img_ids"]),
        ),
        "krea2": (
            krea2,
            "Krea2AutoBlocks",
            dict(
                prompt_embeds=torch.randn(1, TEXT, 2, 16, generator=g),
                negative_prompt_embeds=torch.randn(1, TEXT, 2, 16, generator=g),
                **mask,
            ),
            lambda args, kwargs: _ids_grid(kwargs["position_ids"][TEXT:]),
        ),
        "ernie-image": (
            ernie_image,
            "ErnieImageAutoBlocks",
            dict(
                prompt_embeds=[torch.randn(TEXT, 16, generator=g)],
                negative_prompt_embeds=[torch.randn(TEXT, 16, generator=g)],
            ),
            lambda args, kwargs: (kwargs["hidden_states"].shape[-2] // 2, kwargs["hidden_states"].shape[-1] // 2),
        ),
        "qwen-image-2.1": (
            qwen_image21,
            "QwenImage21AutoBlocks",
            dict(
                prompt_embeds=torch.randn(1, TEXT, 16, generator=g),
                negative_prompt_embeds=torch.randn(1, TEXT, 16, generator=g),
                image_pad_mask=torch.zeros(1, TEXT, dtype=torch.bool),
                negative_image_pad_mask=torch.zeros(1, TEXT, dtype=torch.bool),
                **mask,
            ),
            lambda args, kwargs: tuple(kwargs["img_shapes"][0][-1][1:]),
        ),
    }
    build, blocks, embeds, read_grid = cases[name]
    return build(), getattr(modular, blocks)(), embeds, read_grid


def modular_denoise(name: str):
    """(family, run(guider) → the latents of its whole modular denoise in 3 steps, grid reader)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    family, blocks, embeds, read_grid = _modular_case(name)
    pipe = blocks.sub_blocks["denoise"].init_pipeline()
    pipe.update_components(transformer=family.model, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)

    def run(guider):
        pipe.update_components(guider=guider)
        seed = torch.Generator().manual_seed(0)
        return pipe(**embeds, height=96, width=160, num_inference_steps=3, generator=seed, output="latents")

    return family, run, read_grid


@pytest.mark.parametrize("name", ["flux3", "krea2", "ernie-image", "qwen-image-2.1"])
def test_modular_denoise_matches_the_reference_guider(name):
    """Each family's whole modular denoise (embeddings given instead of the text encoder step), our guider
    against the independent reference guider; Qwen-Image 2.1 with its prefix KV cache on."""
    from reference_guider import ReferenceSEGGuider

    family, run, read_grid = modular_denoise(name)
    # Qwen-Image 2.1 decodes later steps from its KV cache: the queries are then the target image's alone
    offsets = {family.default_layer: "end" if name == "qwen-image-2.1" else family.image_offset}
    ours = run(seg.SmoothedEnergyGuidance(guidance_scale=4.0, blur_sigma=1.0))
    reference = run(ReferenceSEGGuider(4.0, 3.0, 1.0, [family.default_layer], read_grid, offsets))
    plain = run(seg.SmoothedEnergyGuidance(guidance_scale=4.0, scale=0.0))
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT
    assert no_hooks_left(family.model)


@pytest.mark.parametrize("build", [ernie_image, qwen_image21], ids=["ernie-image", "qwen-image-2.1"])
def test_the_separate_perturbed_call_replays_the_cond_calls_prefix(build):
    """These denoisers take no extra rows, so the guider asks for a perturbed call of its own; the blocks before
    the first SEG block return what they computed in the cond call instead of running again (the result is the
    reference's: test_guider_matches_the_reference)."""
    family = build()
    seg_block = family.default_layer.rsplit(".", 1)[0]  # e.g. layers.1
    path, index = seg_block.rsplit(".", 1)
    prefix_block = family.model.get_submodule(f"{path}.{int(index) - 1}")
    inside = next(module for module in prefix_block.modules() if isinstance(module, torch.nn.Linear))
    seg_inside = next(
        module for module in family.model.get_submodule(seg_block).modules() if isinstance(module, torch.nn.Linear)
    )
    counts = {"prefix": 0, "seg": 0}
    handles = [
        inside.register_forward_hook(lambda *_: counts.__setitem__("prefix", counts["prefix"] + 1)),
        seg_inside.register_forward_hook(lambda *_: counts.__setitem__("seg", counts["seg"] + 1)),
    ]
    try:
        with torch.no_grad():
            guided_step(seg.SmoothedEnergyGuidance(guidance_scale=4.0, blur_sigma=1.0), family)
    finally:
        for handle in handles:
            handle.remove()
    assert counts == {"prefix": 2, "seg": 3}  # cond and uncond; the perturbed call skips the prefix
    assert no_hooks_left(family.model)
