"""SEG chained with ComfyUI's own guidance nodes (APG, CFG-Zero*, PAG, skip-layer guidance), in either order.

What does not depend on the order: SEG's term ``s·(cond − perturbed)`` uses the model's own cond prediction
and a perturbed pass of the model alone, and every one of these nodes leaves the other's term as it is, so
both orders give the same image, and that image is the other node's result plus the reference's SEG term.
"""

from __future__ import annotations

import pytest
import torch
from test_comfyui import (
    TOLERANCE,
    apply_node,
    assert_matches,
    flux_targets,
    reference_hooked_model,
    reference_unet_model,
)

from comfyui_host import flux_conditioning, sample, sdxl_conditioning, tiny_flux, tiny_sdxl


def comfy_guidance(name: str):
    """ComfyUI's node ``name`` as MODEL → MODEL, with settings that act on every step."""
    from comfy_extras import nodes_apg, nodes_cfg, nodes_pag, nodes_slg

    nodes = {
        "apg": lambda model: nodes_apg.APG.execute(model, eta=0.0, norm_threshold=1.0, momentum=-0.5),
        "cfg-zero-star": lambda model: nodes_cfg.CFGZeroStar.execute(model),
        "pag": lambda model: nodes_pag.PerturbedAttentionGuidance.execute(model, scale=2.0),
        "skip-layer": lambda model: nodes_slg.SkipLayerGuidanceDiT.execute(
            model, scale=2.0, start_percent=0.0, end_percent=1.0, double_layers="0", single_layers=""
        ),
    }
    return lambda model: nodes[name](model).result[0]


def relative(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> float:
    return ((a - b).abs().max() / scale.abs().max()).item()


@pytest.mark.parametrize("name", ["apg", "cfg-zero-star", "pag", "skip-layer"])
def test_seg_chains_with_comfyuis_guidance_nodes_in_either_order(comfy, node, name):
    """(Skip-layer guidance skips Flux's double block 0, inside the blocks SEG's perturbed pass takes from the
    guided call: its own extra pass must not become theirs.)"""
    other = comfy_guidance(name)
    if name == "skip-layer":
        model, latent, (positive, negative) = tiny_flux(comfy), torch.zeros(1, 16, 10, 14), flux_conditioning(4)
        seg_args = dict(blur_sigma=1.0)
        reference = reference_hooked_model(
            comfy, other(model), 3.0, flux_targets(["single_blocks.0"]), (5, 7), 1.0, model_cond=True
        )
    else:
        model, latent, (positive, negative) = tiny_sdxl(comfy), torch.zeros(1, 4, 13, 21), sdxl_conditioning(1, 13, 21)
        seg_args = dict(blur_sigma=2.0)
        reference = reference_unet_model(comfy, other(model), 3.0, 2.0, model_cond=True)
    cfg = 4.0
    alone = sample(comfy, other(model), positive, negative, latent, cfg)
    seg_then_other = sample(comfy, other(apply_node(node, model, **seg_args)), positive, negative, latent, cfg)
    other_then_seg = sample(comfy, apply_node(node, other(model), **seg_args), positive, negative, latent, cfg)
    assert relative(seg_then_other, other_then_seg, alone) < TOLERANCE
    assert_matches(other_then_seg, sample(comfy, reference, positive, negative, latent, cfg), alone)
    assert relative(alone, sample(comfy, model, positive, negative, latent, cfg), alone) > 100 * TOLERANCE


def test_a_clone_of_the_patched_model_is_the_same_seg(comfy, node):
    """Every later node clones the model, and ComfyUI deep-copies its options then: the clone still blurs the
    model's own layers and still takes the prefix from the guided call."""
    model, latent, (positive, negative) = tiny_sdxl(comfy), torch.zeros(1, 4, 13, 21), sdxl_conditioning(1, 13, 21)
    patched = apply_node(node, model, blur_sigma=2.0)
    replay = patched.model_options["sampler_post_cfg_function"][-1].prefix
    before = replay.replayed
    ours = sample(comfy, patched.clone(), positive, negative, latent, 4.0)
    assert replay.replayed - before == 3  # one replayed perturbed pass per step
    assert torch.equal(ours, sample(comfy, patched, positive, negative, latent, 4.0))
