"""Layer specs resolved against the real SDXL UNet config (built on the meta device)."""

from __future__ import annotations

import pytest
import torch

from smoothed_energy_guidance.core.grids import layer_grid
from smoothed_energy_guidance.core.layers import AttentionInventory, resolve_layers, unet_self_attention_inventory
from smoothed_energy_guidance.testing import SDXL_UNET_CONFIG


@pytest.fixture(scope="module")
def sdxl_unet():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_UNET_CONFIG)


@pytest.fixture(scope="module")
def sdxl_inventory(sdxl_unet):
    return unet_self_attention_inventory(name for name, _ in sdxl_unet.named_modules())


def test_sdxl_parts_have_24_10_36_self_attentions(sdxl_inventory):
    assert [len(sdxl_inventory.parts[p]) for p in ("down", "mid", "up")] == [24, 10, 36]
    assert not any("attn2" in name for name in sdxl_inventory.names)


def test_mid_means_all_ten_mid_block_attentions(sdxl_inventory):
    expected = tuple(f"mid_block.attentions.0.transformer_blocks.{i}.attn1" for i in range(10))
    assert resolve_layers(["mid"], sdxl_inventory) == expected
    assert tuple(resolve_layers([f"m{i}"], sdxl_inventory)[0] for i in range(10)) == expected


def test_index_names_and_ranges(sdxl_inventory):
    assert resolve_layers("d0", sdxl_inventory) == ("down_blocks.1.attentions.0.transformer_blocks.0.attn1",)
    assert resolve_layers("u30", sdxl_inventory) == ("up_blocks.1.attentions.0.transformer_blocks.0.attn1",)
    assert resolve_layers("u35", sdxl_inventory) == ("up_blocks.1.attentions.2.transformer_blocks.1.attn1",)
    assert resolve_layers("d4-d9", sdxl_inventory) == sdxl_inventory.parts["down"][4:10]
    assert resolve_layers("d4-9", sdxl_inventory) == sdxl_inventory.parts["down"][4:10]


def test_result_follows_model_order_without_duplicates(sdxl_inventory):
    names = resolve_layers(["u1", "m0", "mid", "d3", "d3"], sdxl_inventory)
    assert names == (sdxl_inventory.parts["down"][3], *sdxl_inventory.parts["mid"], sdxl_inventory.parts["up"][1])


def test_module_names_match_exactly_by_dotted_component():
    inventory = AttentionInventory({"blocks": ("blocks.1.attn", "blocks.10.attn", "blocks.11.attn")})
    assert resolve_layers("blocks.1", inventory) == ("blocks.1.attn",)
    assert resolve_layers("blocks.10.attn", inventory) == ("blocks.10.attn",)


def test_module_prefix_selects_the_attentions_inside(sdxl_inventory):
    names = resolve_layers("up_blocks.0.attentions.1", sdxl_inventory)
    assert len(names) == 10 and all(n.startswith("up_blocks.0.attentions.1.") for n in names)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("m10", r"out of range: 'mid' has 10 .*m0-m9"),
        ("u36", r"'up' has 36"),
        ("middle", r"Unknown layer 'middle'. Valid layers: 'down' \(d0-d23\), 'mid' \(m0-m9\), 'up' \(u0-u35\)"),
        ("blocks.1", r"Unknown layer 'blocks.1'"),
        ("d9-d4", r"out of range"),
        ("d4-u9", r"spans two parts"),
        (3, r"must be a string"),
    ],
)
def test_unknown_layers_list_what_exists(sdxl_inventory, spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_layers([spec], sdxl_inventory)


def test_empty_layer_list_is_refused(sdxl_inventory):
    with pytest.raises(ValueError, match="No SEG layers"):
        resolve_layers([], sdxl_inventory)


def test_sdxl_levels_and_real_non_square_grid(sdxl_unet, sdxl_inventory):
    from smoothed_energy_guidance.pipelines.unet import unet_downsample_levels

    levels = {p: {unet_downsample_levels(sdxl_unet, n) for n in sdxl_inventory.parts[p]} for p in ("down", "mid")}
    assert levels == {"down": {1, 2}, "mid": {2}}
    up = [unet_downsample_levels(sdxl_unet, n) for n in sdxl_inventory.parts["up"]]
    assert up == [2] * 30 + [1] * 6
    # 1216×832 SDXL: latent 104×152, halved with ceil twice → a 26×38 mid grid
    assert layer_grid((104, 152), 2) == (26, 38)
    assert layer_grid((125, 75), 2) == (32, 19)


def test_model_without_self_attention_is_refused():
    from smoothed_energy_guidance.pipelines.unet import unet_inventory

    with pytest.raises(ValueError, match="no self-attention over an image grid"):
        unet_inventory(torch.nn.Sequential(torch.nn.Linear(2, 2)))
