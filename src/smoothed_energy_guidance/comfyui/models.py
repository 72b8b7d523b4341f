"""Which queries SEG blurs in each ComfyUI model family, and over which token grid. torch and the core only.

ComfyUI builds its own model classes (``comfy.ldm``); this module reads them by their module names, the way
:mod:`...families` reads diffusers' classes, and gives the same layers the same spec names as the diffusers
side (``"mid"``, ``"d4"``, ``"u30"`` for UNets; ``"double.9"``, ``"single.18"`` for Flux and Chroma), so one
model gets the same SEG in both hosts. For DiTs the queries are taken where the diffusers side takes them:
after the query norm, before RoPE.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..core.layers import AttentionInventory, BlockInventory, resolve_block_layers, resolve_layers
from ..core.tokens import TokenLayout

# ComfyUI's UNet parts, as the diffusers side names them
UNET_PARTS = {"input_blocks": "down", "middle_block": "mid", "output_blocks": "up"}


@dataclass(frozen=True)
class QueryLayer:
    """One selected self-attention: the module whose output holds its queries, and how they are laid out."""

    name: str
    module: nn.Module
    tokens: TokenLayout = TokenLayout.IMAGE_ONLY
    token_dim: int = 1  # 1: (B, N, C); 2: per head (B, heads, N, head_dim)


@dataclass(frozen=True)
class ComfyFamily:
    """A ComfyUI model family SEG serves: how to find its layers and its image-token grid."""

    name: str
    # class names of ``model.diffusion_model``, qualified by their module where two families share a name
    # (``comfy.ldm.aura.mmdit.MMDiT`` is AuraFlow, ``comfy.ldm.modules.diffusionmodules.mmdit.MMDiT`` SD3)
    diffusion_model_classes: tuple[str, ...]
    layers: Callable[[nn.Module, Sequence[str] | None], tuple[QueryLayer, ...]]
    # latent cells per token along each latent axis after the channels ((t,) h, w); None: a UNet, whose
    # levels halve the latent instead
    patch_size: Callable[[nn.Module], tuple[int, ...]] | None = None
    text_first: bool = False  # some layers' queries open with the text tokens (Flux's single blocks)
    # the layers that run before the first SEG layer, in call order, each with the layer whose recorded output
    # it returns in the perturbed pass (.prefix); None: the family's perturbed pass runs in full
    prefix: Callable[[nn.Module, Sequence[QueryLayer]], tuple[tuple[str, str], ...]] | None = None


def unet_inventory(model: nn.Module) -> AttentionInventory:
    """The UNet's self-attentions (``*.attn1``) grouped as down / mid / up, in module order."""
    parts: dict[str, list[str]] = {"down": [], "mid": [], "up": []}
    for name, _ in model.named_modules():
        part = UNET_PARTS.get(name.split(".", 1)[0])
        if part is not None and name.endswith(".attn1") and ".time_stack." not in name:
            parts[part].append(name)
    return AttentionInventory({part: tuple(names) for part, names in parts.items()})


def unet_layers(model: nn.Module, specs: Sequence[str] | None) -> tuple[QueryLayer, ...]:
    """Default ``["mid"]``, or every attention of the deepest level when the mid block has none."""
    inventory = unet_inventory(model)
    if not inventory.names:
        raise ValueError("This UNet has no self-attention layers, so SEG has nothing to blur.")
    if specs is None:
        specs = ["mid"] if inventory.parts["mid"] else [_deepest_level(model, inventory)]
    modules = dict(model.named_modules())
    return tuple(QueryLayer(name, modules[f"{name}.to_q"]) for name in resolve_layers(specs, inventory))


def unet_prefix(model: nn.Module, layers: Sequence[QueryLayer]) -> tuple[tuple[str, str], ...]:
    """The UNet's block layers (``input_blocks.i.j``, then ``middle_block.j``) before the first one holding a SEG
    query, each replaying its own output: the skip connections read every one of them."""
    queries = {id(layer.module) for layer in layers}
    prefix = []
    for part in ("input_blocks", "middle_block"):
        blocks = getattr(model, part, None)
        if blocks is None:
            continue
        for index, block in enumerate(blocks if part == "input_blocks" else [blocks]):
            for position, layer in enumerate(block):
                if any(id(module) in queries for module in layer.modules()):
                    return tuple(prefix)
                name = f"{part}.{index}.{position}" if part == "input_blocks" else f"{part}.{position}"
                prefix.append((name, name))
    return tuple(prefix)


def block_prefix(*paths: str):
    """Block stacks run one after another (``paths``, in call order) where each block only feeds the next: the
    blocks before the first SEG block, each returning in the perturbed pass the recorded output of the last of
    them in its stack (so one output per stack is kept, not one per block)."""

    def prefix(model: nn.Module, layers: Sequence[QueryLayer]) -> tuple[tuple[str, str], ...]:
        names = [layer.name for layer in layers]
        pairs: list[tuple[str, str]] = []
        for path in paths:
            stack = [f"{path}.{i}" for i in range(len(getattr(model, path, ())))]
            first = next((i for i, b in enumerate(stack) if any(n == b or n.startswith(b + ".") for n in names)), None)
            run = stack if first is None else stack[:first]
            pairs += [(block, run[-1]) for block in run]
            if first is not None:
                break
        return tuple(pairs)

    return prefix


def _deepest_level(model: nn.Module, inventory: AttentionInventory) -> str:
    """The last input block holding self-attention (the lowest resolution with attention)."""
    return ".".join(inventory.parts["down"][-1].split(".")[:2]) if inventory.parts["down"] else "up"


def flux_inventory(model: nn.Module) -> BlockInventory:
    """Flux / Chroma: double-stream blocks then single-stream blocks, each block one SEG layer."""
    return BlockInventory(
        {
            "double": tuple((f"double_blocks.{i}", (f"double_blocks.{i}",)) for i in range(len(model.double_blocks))),
            "single": tuple((f"single_blocks.{i}", (f"single_blocks.{i}",)) for i in range(len(model.single_blocks))),
        }
    )


def double_single_layers(single_layout: TokenLayout):
    """Flux-style stacks: double blocks' image-stream query norm (image tokens first, then any reference
    images); single blocks' joint query norm, laid out as ``single_layout``. Default: the middle block of both
    stacks together."""

    def layers(model: nn.Module, specs: Sequence[str] | None) -> tuple[QueryLayer, ...]:
        inventory = flux_inventory(model)
        names = resolve_block_layers(specs if specs is not None else inventory.default_layers(), inventory)
        modules = dict(model.named_modules())
        found = []
        for name in names:
            if name.startswith("double_blocks."):
                query = modules[f"{name}.img_attn.norm.query_norm"]
                found.append(QueryLayer(name, query, TokenLayout.IMAGE_FIRST, 2))
            else:
                found.append(QueryLayer(name, modules[f"{name}.norm.query_norm"], single_layout, 2))
        return tuple(found)

    return layers


flux_layers = double_single_layers(TokenLayout.TEXT_FIRST)  # single blocks: [text, image, reference images]
hunyuan_video_layers = double_single_layers(TokenLayout.IMAGE_FIRST)  # single blocks: [video, text]


def auraflow_layers(model: nn.Module, specs: Sequence[str] | None) -> tuple[QueryLayer, ...]:
    """AuraFlow: the joint (MMDiT) blocks' image-stream query norm, then the single blocks' query norm over
    [8 register tokens, text, image], whose image tokens end it. Specs ``joint.N`` / ``single.N`` as on the
    diffusers side; default: the middle block of both stacks together."""
    inventory = BlockInventory(
        {
            "joint": tuple((f"double_layers.{i}", (f"double_layers.{i}",)) for i in range(len(model.double_layers))),
            "single": tuple((f"single_layers.{i}", (f"single_layers.{i}",)) for i in range(len(model.single_layers))),
        }
    )
    names = resolve_block_layers(specs if specs is not None else inventory.default_layers(), inventory)
    return tuple(
        QueryLayer(name, model.get_submodule(f"{name}.attn.q_norm2"))
        if name.startswith("double_layers.")
        else QueryLayer(name, model.get_submodule(f"{name}.attn.q_norm1"), TokenLayout.TEXT_FIRST)
        for name in names
    )


def stack_inventory(model: nn.Module, path: str = "blocks", spec: str = "blocks") -> BlockInventory:
    """One stack of transformer blocks, each block one SEG layer."""
    return BlockInventory({spec: tuple((f"{path}.{i}", (f"{path}.{i}",)) for i in range(len(getattr(model, path))))})


def sd3_layers(model: nn.Module, specs: Sequence[str] | None) -> tuple[QueryLayer, ...]:
    """SD3 / SD3.5: each joint block's image-stream attention (and SD3.5's second one) after ``ln_q``."""
    blocks = model.joint_blocks
    inventory = BlockInventory(
        {
            "blocks": tuple(
                (
                    f"joint_blocks.{i}",
                    tuple(
                        f"joint_blocks.{i}.x_block.{attention}"
                        for attention in ("attn", "attn2")
                        if hasattr(block.x_block, attention)
                    ),
                )
                for i, block in enumerate(blocks)
            )
        }
    )
    names = resolve_block_layers(specs if specs is not None else inventory.default_layers(), inventory)
    return tuple(QueryLayer(name, model.get_submodule(f"{name}.ln_q")) for name in names)


def stack_layers(path: str, query: str, layout: TokenLayout = TokenLayout.IMAGE_ONLY, token_dim: int = 1):
    """One block stack at ``path``; each block's queries come out of its submodule ``query``. Default: the middle
    block."""

    def layers(model: nn.Module, specs: Sequence[str] | None) -> tuple[QueryLayer, ...]:
        inventory = stack_inventory(model, path)
        names = resolve_block_layers(specs if specs is not None else inventory.default_layers(), inventory)
        return tuple(QueryLayer(name, model.get_submodule(f"{name}.{query}"), layout, token_dim) for name in names)

    return layers


# Wan, LTX-Video and Mochi: each block's video queries after the query norm (before RoPE). Qwen-Image: the image
# stream's queries; an edit's reference-image tokens follow the generated image's and stay unblurred.
wan_layers = stack_layers("blocks", "self_attn.norm_q")
ltx_video_layers = stack_layers("transformer_blocks", "attn1.q_norm")
mochi_layers = stack_layers("blocks", "attn.q_norm_x")
qwen_image_layers = stack_layers("transformer_blocks", "attn.norm_q", TokenLayout.IMAGE_FIRST, 2)


FAMILIES = (
    ComfyFamily(
        name="Stable Diffusion 1.x/2.x/XL (UNet)",
        diffusion_model_classes=("UNetModel",),
        layers=unet_layers,
        prefix=unet_prefix,
    ),
    ComfyFamily(
        name="Flux.1 / Chroma",
        diffusion_model_classes=("Flux", "Chroma"),
        layers=flux_layers,
        patch_size=lambda model: (int(model.patch_size),) * 2,
        text_first=True,
        prefix=block_prefix("double_blocks", "single_blocks"),
    ),
    ComfyFamily(
        name="Stable Diffusion 3/3.5",
        diffusion_model_classes=("comfy.ldm.modules.diffusionmodules.mmdit.MMDiT",),
        layers=sd3_layers,
        patch_size=lambda model: (int(model.patch_size),) * 2,
        prefix=block_prefix("joint_blocks"),
    ),
    ComfyFamily(
        name="AuraFlow",
        diffusion_model_classes=("comfy.ldm.aura.mmdit.MMDiT",),
        layers=auraflow_layers,
        patch_size=lambda model: (int(model.patch_size),) * 2,
        # not text_first: the single blocks' text is preceded by 8 register tokens the context does not count,
        # and nothing follows the image, so the image tokens are found as the last ones
        prefix=block_prefix("double_layers", "single_layers"),
    ),
    ComfyFamily(
        name="Qwen-Image",
        diffusion_model_classes=("QwenImageTransformer2DModel",),
        layers=qwen_image_layers,
        patch_size=lambda model: (1, int(model.patch_size), int(model.patch_size)),  # latents (B, C, 1, H, W)
        prefix=block_prefix("transformer_blocks"),
    ),
    ComfyFamily(
        name="PixArt-α/Σ",
        diffusion_model_classes=("PixArtMS",),
        layers=stack_layers("blocks", "attn.q_norm"),  # an identity unless the model norms its queries
        patch_size=lambda model: (int(model.patch_size),) * 2,
        prefix=block_prefix("blocks"),
    ),
    ComfyFamily(
        name="HunyuanDiT",
        diffusion_model_classes=("HunYuanDiT",),
        layers=stack_layers("blocks", "attn1.q_norm", token_dim=2),  # after the query norm, before RoPE
        patch_size=lambda model: (int(model.patch_size),) * 2,
    ),
    ComfyFamily(
        name="Wan 2.x",
        diffusion_model_classes=("WanModel",),
        layers=wan_layers,
        patch_size=lambda model: tuple(int(side) for side in model.patch_size),
        prefix=block_prefix("blocks"),
    ),
    ComfyFamily(
        name="HunyuanVideo",
        diffusion_model_classes=("HunyuanVideo",),
        layers=hunyuan_video_layers,
        patch_size=lambda model: tuple(int(side) for side in model.patch_size),
        prefix=block_prefix("double_blocks", "single_blocks"),
    ),
    ComfyFamily(
        name="LTX-Video",
        diffusion_model_classes=("LTXVModel",),
        layers=ltx_video_layers,
        patch_size=lambda model: tuple(int(side) for side in model.patchifier.patch_size),
        prefix=block_prefix("transformer_blocks"),
    ),
    ComfyFamily(
        name="Mochi",
        diffusion_model_classes=("AsymmDiTJoint",),
        layers=mochi_layers,
        patch_size=lambda model: (1, int(model.patch_size), int(model.patch_size)),
        prefix=block_prefix("blocks"),
    ),
)


def comfy_family(diffusion_model: nn.Module, model_name: str) -> ComfyFamily:
    """The family of a ComfyUI diffusion model, or a clear error naming the model SEG does not serve here."""
    names = {
        name for cls in type(diffusion_model).__mro__ for name in (cls.__name__, f"{cls.__module__}.{cls.__name__}")
    }
    for family in FAMILIES:
        if names & set(family.diffusion_model_classes):
            return family
    served = ", ".join(family.name for family in FAMILIES)
    raise ValueError(
        f"SEG's ComfyUI node does not serve {model_name} ({type(diffusion_model).__name__}) yet; it serves {served}."
    )


def image_grid(
    latent_size: tuple[int, ...], tokens: int, patch_size: tuple[int, ...] | None, layer: str
) -> tuple[int, ...]:
    """The layer's image-token grid. DiTs: the latent patchified (ComfyUI pads it to whole patches). UNets: the
    latent halved (rounding up) until it holds ``tokens`` tokens."""
    if patch_size is not None:
        return tuple(math.ceil(side / patch) for side, patch in zip(latent_size, patch_size, strict=True))
    grid = latent_size
    while math.prod(grid) > tokens:
        grid = tuple(math.ceil(side / 2) for side in grid)
    if math.prod(grid) != tokens:
        raise ValueError(
            f"SEG layer {layer} has {tokens} query tokens, which no level of the {latent_size} latent has."
        )
    return grid
