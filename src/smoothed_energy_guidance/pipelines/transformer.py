"""Turning SEG on for diffusion transformers, one descriptor per family (``TRANSFORMER_FAMILIES``).

Only image-token queries are blurred, over the real token grid (latent size / patch size, or the
model's position ids), after the per-head query norm where the model has one; text-token and
reference-image-token queries, keys and values are untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..context import SegCall
from ..guidance import SegConfig
from ..hooks import DenoiserInputs, ForkPlan, HostStep, QueryTarget, SegHooks
from ..layers import BlockInventory, resolve_block_layers
from .progress import LoopProgress
from .queries import query_source

UNDO_HINT = "Enable SEG again after fusing QKV projections, loading LoRA or replacing the transformer."


@dataclass(frozen=True)
class TransformerFamily:
    """How one transformer family lays out blocks, queries and inputs."""

    name: str
    class_prefix: str  # the denoiser class name starts with this (e.g. "FluxTransformer")
    stacks: tuple[tuple[str, str], ...]  # (spec name, ModuleList attribute path, e.g. "mode_blocks.image")
    query_token_dim: int  # token axis of norm_q's output
    read_inputs: Callable[[Any, tuple, dict], DenoiserInputs]
    unbatched: frozenset[str]
    image_tail_stacks: frozenset[str] = frozenset()  # stacks whose queries are [text, image]
    image_head_stacks: frozenset[str] = frozenset()  # stacks whose queries are [image, reference images]
    timestep_scale: float = 1.0  # the pipeline passes timestep / 1000 (Flux)
    # whose classic pipelines enable_seg drives (others: through the Modular Diffusers guider only)
    pipelines: bool = True
    attention_names: tuple[str, ...] = ("attn", "attn2")  # a block's attentions over image tokens
    # whether perturbed rows can join a call; False (per-sample input lists, sequence-first blocks, or
    # modulation rows beyond the batch): the guider makes a separate perturbed call
    forks: bool = True
    # every block list in execution order, where it differs from ``stacks`` (blocks without SEG layers
    # that run after the fork still need widened inputs)
    fork_stacks: tuple[str, ...] = ()
    output_modules: tuple[str, ...] = ("norm_out",)  # run on the widened rows after the last block
    # False: the perturbed rows join at the denoiser's input (a full extra pass), for models that use
    # pre-block tensors outside any module after the blocks (PixArt's timestep modulation, Sana's unpatchify)
    shares_prefix: bool = True
    # the pipeline runs CFG as separate cond / uncond calls ("true CFG"); SEG joins the cond calls
    separate_cfg: bool = False


def _sd3_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    latents = args[0] if args else kwargs["hidden_states"]
    patch = model.config.patch_size
    return DenoiserInputs(
        latents.shape[0],
        (latents.shape[-2] // patch, latents.shape[-1] // patch),
        kwargs.get("timestep"),
        # skip-layer guidance: a cond-only call that the pipeline subtracts from its cond prediction
        cond_reference=kwargs.get("skip_layers") is not None,
        # ControlNet residuals are added between blocks in the model's own loop, from the first block on
        shares_prefix=kwargs.get("block_controlnet_hidden_states") is None,
    )


def _generated_image_grid(ids: torch.Tensor, family: str, tokens: int) -> tuple[int, int]:
    """The generated image's token grid from (t, h, w, …) position ids.

    Reference-image tokens (Flux Kontext, Flux.2 / Flux 3 editing) follow the generated image's and
    carry a different first coordinate; the generated image's ids are the rows sharing the first row's.
    """
    ids = ids[0] if ids.ndim == 3 else ids
    own = ids[ids[:, 0] == ids[0, 0]]
    # counted, not spanned: some families scale their ids (Flux 3's image_rope_scale)
    height, width = own[:, 1].unique().numel(), own[:, 2].unique().numel()
    if height * width != own.shape[0] or own.shape[0] > tokens:
        raise ValueError(
            f"{family} image ids describe a {height}x{width} grid over {own.shape[0]} ids and {tokens} image "
            "tokens; SEG needs the generated image's tokens laid out as a full grid ahead of any reference images."
        )
    return height, width


def _flux_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    tokens = args[0] if args else kwargs["hidden_states"]
    grid = _generated_image_grid(kwargs["img_ids"], type(model).__name__, tokens.shape[1])
    text = kwargs["encoder_hidden_states"].shape[1]
    return DenoiserInputs(tokens.shape[0], grid, kwargs.get("timestep"), text_tokens=text)


def _qwen_image_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    """Packed image tokens; ``img_shapes[sample][0]`` is the generated image's (frames, h, w) token grid.

    Reference images (Qwen-Image edit) follow the generated image's tokens and are left as they are.
    """
    tokens = args[0] if args else kwargs["hidden_states"]
    shapes = kwargs.get("img_shapes")
    if not shapes:
        raise ValueError("Qwen-Image transformer called without img_shapes; SEG needs the image token grid.")
    frames, height, width = shapes[0][0]
    if frames != 1:
        raise ValueError(f"Qwen-Image call with {frames} frames per image; SEG supports single images here.")
    return DenoiserInputs(tokens.shape[0], (int(height), int(width)), kwargs.get("timestep"))


SD3 = TransformerFamily(
    "Stable Diffusion 3", "SD3Transformer", (("blocks", "transformer_blocks"),), 2, _sd3_inputs, frozenset()
)
_FLUX_STACKS = (("double", "transformer_blocks"), ("single", "single_transformer_blocks"))
FLUX = TransformerFamily(
    "Flux.1",
    "FluxTransformer",
    _FLUX_STACKS,
    1,
    _flux_inputs,
    frozenset({"img_ids", "txt_ids", "image_rotary_emb"}),
    image_head_stacks=frozenset({"double"}),  # image queries, then any reference-image tokens (Kontext)
    image_tail_stacks=frozenset({"single"}),  # [text, image, reference images]
    timestep_scale=1000.0,
    separate_cfg=True,
)
# Chroma lays out blocks, queries and ids as Flux.1 does, and runs CFG as a second ("uncond") call.
CHROMA = dataclasses.replace(FLUX, name="Chroma", class_prefix="ChromaTransformer")
# Flux.2 lays out blocks, queries (norm_q on (B, N, heads, head_dim)) and ids as Flux.1 does.
FLUX2 = dataclasses.replace(FLUX, name="Flux.2", class_prefix="Flux2Transformer", pipelines=False)
QWEN_IMAGE = TransformerFamily(
    "Qwen-Image",
    "QwenImageTransformer",
    (("blocks", "transformer_blocks"),),
    1,  # norm_q sees (B, N, heads, head_dim)
    _qwen_image_inputs,
    frozenset({"image_rotary_emb"}),
    image_head_stacks=frozenset({"blocks"}),
    timestep_scale=1000.0,
    separate_cfg=True,
)


def _z_image_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    """Per-sample latents ``x[i]`` of shape (C, F, H, W), patchified by ``patch_size`` (default 2)."""
    samples = args[0] if args else kwargs["x"]
    channels, frames, height, width = samples[0].shape
    patch, frame_patch = kwargs.get("patch_size", 2), kwargs.get("f_patch_size", 1)
    if frames // frame_patch != 1:
        raise ValueError(f"Z-Image call with {frames} frames; SEG supports single images here.")
    return DenoiserInputs(len(samples), (height // patch, width // patch), kwargs.get("t"))


Z_IMAGE = TransformerFamily(
    "Z-Image",
    "ZImageTransformer",
    (("blocks", "layers"),),
    1,  # norm_q sees (B, N, heads, head_dim)
    _z_image_inputs,
    frozenset(),
    image_head_stacks=frozenset({"blocks"}),  # [image, padding, caption] in the unified sequence
    pipelines=False,
    attention_names=("attention",),
    forks=False,
)


def _krea2_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    """Queries are [text, image]; ``position_ids`` (text rows zero) holds the image rows' (t, h, w)."""
    tokens = args[0] if args else kwargs["hidden_states"]
    image_ids = kwargs["position_ids"][-tokens.shape[1] :]
    grid = _generated_image_grid(image_ids, "Krea 2", tokens.shape[1])
    return DenoiserInputs(tokens.shape[0], grid, kwargs.get("timestep"))


def _patch_sizes(model: Any) -> tuple[int, int, int]:
    """(frames, height, width) patch sizes from the config: a tuple, or one int plus ``patch_size_t``."""
    patch = model.config.patch_size
    if isinstance(patch, (tuple, list)):
        return tuple(patch)
    return (model.config.get("patch_size_t") or 1, patch, patch)


def _latent_inputs(frame_axis: int | None = None, image_only: str | None = None, text_first: bool = False):
    """Inputs of a denoiser that takes latents (B, C, H, W), or video latents with frames on
    ``frame_axis``, and patchifies them by its config (frames padded up to whole patches).

    ``image_only``: the family's name, for models whose video calls SEG refuses for now;
    ``text_first``: the text tokens open the joint queries, as many as ``encoder_hidden_states`` has.
    """

    def read(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
        latents = args[0] if args else kwargs["hidden_states"]
        frame_patch, height_patch, width_patch = _patch_sizes(model)
        grid = (latents.shape[-2] // height_patch, latents.shape[-1] // width_patch)
        if frame_axis is not None:
            frames = math.ceil(latents.shape[frame_axis] / frame_patch)
            if image_only and frames != 1:
                raise ValueError(
                    f"{image_only} call with {latents.shape[frame_axis]} latent frames; SEG supports single images "
                    "on this model for now (video SEG over t×h×w is planned)."
                )
            grid = grid if image_only else (frames, *grid)
        text = kwargs["encoder_hidden_states"].shape[1] if text_first else None
        return DenoiserInputs(latents.shape[0], grid, kwargs.get("timestep"), text_tokens=text)

    return read


def _qwen_image21_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    """The target image is the last entry of ``img_shapes`` and its tokens end the joint sequence."""
    tokens = args[0] if args else kwargs["hidden_states"]
    frames, height, width = kwargs["img_shapes"][0][-1]
    if frames != 1:
        raise ValueError(f"Qwen-Image 2.1 call with {frames} frames per image; SEG supports single images here.")
    return DenoiserInputs(tokens.shape[0], (int(height), int(width)), kwargs.get("timestep"))


# Flux 3: per-mode image blocks (image tokens only), then joint blocks over [text, image, reference images].
FLUX3 = TransformerFamily(
    "Flux 3",
    "Flux3Transformer",
    (("image", "mode_blocks.image"), ("single", "single_transformer_blocks")),
    1,  # norm_q sees (B, N, heads, head_dim)
    _flux_inputs,
    frozenset({"img_ids", "txt_ids", "image_cond_ids"}),
    image_tail_stacks=frozenset({"single"}),
    pipelines=False,
    fork_stacks=("mode_blocks.image", "mode_blocks.image_cond", "single_transformer_blocks"),
)
KREA2 = TransformerFamily(
    "Krea 2",
    "Krea2Transformer",
    (("blocks", "transformer_blocks"),),
    1,
    _krea2_inputs,
    frozenset({"position_ids"}),
    image_tail_stacks=frozenset({"blocks"}),
    pipelines=False,
    output_modules=("final_layer",),
)
ERNIE_IMAGE = TransformerFamily(
    "ERNIE-Image",
    "ErnieImageTransformer",
    (("blocks", "layers"),),
    1,
    _latent_inputs(),
    frozenset(),
    image_head_stacks=frozenset({"blocks"}),  # [image, text]
    pipelines=False,
    attention_names=("self_attention",),
    forks=False,  # its blocks run sequence-first ([tokens, batch, channels])
)
QWEN_IMAGE21 = TransformerFamily(
    "Qwen-Image 2.1",
    "QwenImage21Transformer",
    (("blocks", "transformer_blocks"),),
    1,
    _qwen_image21_inputs,
    frozenset(),
    image_tail_stacks=frozenset({"blocks"}),  # [text and condition images interleaved, target image]
    pipelines=False,
    forks=False,  # with causal conditioning its modulation has one row more than the batch
)
# Cosmos-Predict2 / Anima: self-attention ``attn1`` over the (t, h, w) tokens, all of them image tokens.
COSMOS = TransformerFamily(
    "Cosmos / Anima",
    "CosmosTransformer3D",
    (("blocks", "transformer_blocks"),),
    2,  # norm_q sees (B, heads, N, head_dim)
    _latent_inputs(frame_axis=2, image_only="Cosmos / Anima"),
    frozenset(),
    pipelines=False,
    attention_names=("attn1",),
)


# PixArt-α / -Σ: BasicTransformerBlock stacks, self-attention ``attn1`` without a query norm.
PIXART = TransformerFamily(
    "PixArt-α / PixArt-Σ",
    "PixArtTransformer",
    (("blocks", "transformer_blocks"),),
    1,
    _latent_inputs(),
    frozenset(),
    attention_names=("attn1",),
    shares_prefix=False,
)
# HunyuanDiT: long skip connections between its blocks; queries normed per head, (B, heads, N, head_dim).
HUNYUAN_DIT = TransformerFamily(
    "HunyuanDiT",
    "HunyuanDiT2DModel",
    (("blocks", "blocks"),),
    2,
    _latent_inputs(),
    frozenset({"image_rotary_emb"}),
    attention_names=("attn1",),
)
# Sana: linear (ReLU-kernel) self-attention; the queries are blurred before the kernel feature map.
SANA = TransformerFamily(
    "Sana",
    "SanaTransformer",
    (("blocks", "transformer_blocks"),),
    1,  # its norm_q (Sana 1.5) normalises (B, N, heads·head_dim)
    _latent_inputs(),
    frozenset(),
    attention_names=("attn1",),
    shares_prefix=False,
)


# Wan 2.x: self-attention ``attn1`` over the (t, h, w) tokens, its query norm across heads (B, N, C); the
# output modulation and unpatchify use pre-block tensors, so the perturbed rows join at the input.
WAN = TransformerFamily(
    "Wan",
    "WanTransformer3D",
    (("blocks", "blocks"),),
    1,
    _latent_inputs(frame_axis=2),
    frozenset(),
    attention_names=("attn1",),
    shares_prefix=False,
    separate_cfg=True,
)


# CogVideoX: joint attention ``attn1`` over [text, video] with per-head query norm (B, heads, N, head_dim);
# its unpatchify reshapes by the input batch size, so the perturbed rows join at the input.
COGVIDEOX = TransformerFamily(
    "CogVideoX",
    "CogVideoXTransformer3D",
    (("blocks", "transformer_blocks"),),
    2,
    _latent_inputs(frame_axis=1, text_first=True),  # latents (B, F, C, H, W)
    frozenset({"image_rotary_emb"}),
    image_tail_stacks=frozenset({"blocks"}),
    attention_names=("attn1",),
    shares_prefix=False,
)


def _ltx_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    """Packed video tokens; the pipeline passes the latent grid as ``num_frames``, ``height``, ``width``."""
    tokens = args[0] if args else kwargs["hidden_states"]
    grid = (int(kwargs["num_frames"]), int(kwargs["height"]), int(kwargs["width"]))
    if math.prod(grid) != tokens.shape[1]:
        raise ValueError(
            f"LTX-Video call with a {'x'.join(map(str, grid))} latent grid but {tokens.shape[1]} tokens; SEG needs "
            "one token per latent position (condition tokens are not supported yet)."
        )
    return DenoiserInputs(tokens.shape[0], grid, kwargs.get("timestep"))


# LTX-Video: self-attention ``attn1`` over packed (t, h, w) tokens, query norm across heads (B, N, C); the
# output modulation uses the pre-block timestep embedding, so the perturbed rows join at the input.
LTX_VIDEO = TransformerFamily(
    "LTX-Video",
    "LTXVideoTransformer3D",
    (("blocks", "transformer_blocks"),),
    1,
    _ltx_inputs,
    frozenset({"rope_interpolation_scale"}),
    attention_names=("attn1",),
    shares_prefix=False,
)


# HunyuanVideo: dual-stream blocks (video queries alone) then single-stream blocks over [video, text];
# true CFG as a second call; its unpatchify reshapes by the input batch size (rows join at the input).
HUNYUAN_VIDEO = TransformerFamily(
    "HunyuanVideo",
    "HunyuanVideoTransformer3D",
    (("double", "transformer_blocks"), ("single", "single_transformer_blocks")),
    1,  # norm_q sees (B, N, heads, head_dim)
    _latent_inputs(frame_axis=2),
    frozenset(),
    image_head_stacks=frozenset({"single"}),
    shares_prefix=False,
    separate_cfg=True,
)


# Mochi: asymmetric joint attention ``attn1`` whose video queries come alone from ``to_q`` / ``norm_q``
# (B, N, heads, head_dim); its unpatchify reshapes by the input batch size (rows join at the input).
MOCHI = TransformerFamily(
    "Mochi",
    "MochiTransformer3D",
    (("blocks", "transformer_blocks"),),
    1,
    _latent_inputs(frame_axis=2),
    frozenset(),
    attention_names=("attn1",),
    shares_prefix=False,
)
# HunyuanVideo 1.5: one stack of joint blocks; ``norm_q`` sees the video queries alone (B, N, heads, head_dim),
# before the text queries join them. Reached through the guider (the modular HunyuanVideo 1.5 blocks).
HUNYUAN_VIDEO_15 = TransformerFamily(
    "HunyuanVideo 1.5",
    "HunyuanVideo15Transformer3D",
    (("blocks", "transformer_blocks"),),
    1,
    _latent_inputs(frame_axis=2),
    frozenset(),
    pipelines=False,
    forks=False,  # the guider's perturbed pass is a call of its own (its image embeds are per prompt)
)
#: Every transformer family SEG knows, found by the denoiser's class name.
TRANSFORMER_FAMILIES = (
    SD3,
    FLUX,
    CHROMA,
    FLUX2,
    QWEN_IMAGE,
    Z_IMAGE,
    FLUX3,
    KREA2,
    ERNIE_IMAGE,
    QWEN_IMAGE21,
    COSMOS,
    PIXART,
    HUNYUAN_DIT,
    SANA,
    WAN,
    COGVIDEOX,
    LTX_VIDEO,
    HUNYUAN_VIDEO,
    MOCHI,
    HUNYUAN_VIDEO_15,
)


def transformer_family(model: nn.Module) -> TransformerFamily | None:
    kind = type(model).__name__
    return next((family for family in TRANSFORMER_FAMILIES if kind.startswith(family.class_prefix)), None)


def _block_list(model: nn.Module, path: str) -> Sequence[nn.Module]:
    """The blocks at a dotted attribute path; empty where the model lacks it (e.g. no reference-image mode)."""
    try:
        return functools.reduce(getattr, path.split("."), model)
    except AttributeError:
        return ()


def transformer_inventory(model: nn.Module, family: TransformerFamily) -> BlockInventory:
    stacks = {}
    for spec_name, attribute in family.stacks:
        blocks = []
        for index, block in enumerate(_block_list(model, attribute)):
            prefix = f"{attribute}.{index}"
            names = tuple(f"{prefix}.{a}" for a in family.attention_names if getattr(block, a, None) is not None)
            blocks.append((prefix, names))
        stacks[spec_name] = tuple(blocks)
    return BlockInventory(stacks)


def _stack_of(name: str, family: TransformerFamily) -> str:
    return next(spec for spec, attribute in family.stacks if name.startswith(attribute + "."))


def transformer_query_targets(model: nn.Module, names: Sequence[str], family: TransformerFamily) -> list[QueryTarget]:
    """Hook the queries where the processor really takes them: after ``norm_q`` where it applies one,
    else the output of ``to_q`` or the first third of a fused ``to_qkv``."""
    modules = dict(model.named_modules())
    targets = []
    for name in names:
        attention = modules[name]
        source = query_source(attention, family.query_token_dim)
        stack = _stack_of(name, family)
        targets.append(
            QueryTarget(
                name,
                attention,
                source.module,
                0,
                token_dim=source.token_dim,
                source=source.attribute,
                image_tail=stack in family.image_tail_stacks,
                image_head=stack in family.image_head_stacks,
                parts=source.parts,
            )
        )
    return targets


def transformer_fork_plan(model: nn.Module, names: Sequence[str], family: TransformerFamily) -> ForkPlan:
    """Fork at the first block holding a SEG layer; later blocks and the output modules get widened inputs."""
    paths = family.fork_stacks or tuple(attribute for _, attribute in family.stacks)
    ordered = [(f"{path}.{i}", block) for path in paths for i, block in enumerate(_block_list(model, path))]
    first = next(i for i, (prefix, _) in enumerate(ordered) if any(n.startswith(prefix + ".") for n in names))
    outputs = tuple(getattr(model, name) for name in family.output_modules)
    blocks = tuple(block for _, block in ordered[first:]) + outputs
    return ForkPlan(blocks, lambda args, kwargs, rows, cond: (args, kwargs))


class _TrueCfgContext:
    """Reads which denoising call the pipeline is making ("cond" / "uncond") from diffusers' cache context."""

    def __init__(self, model: nn.Module) -> None:
        from diffusers.hooks import HookRegistry, ModelHook
        from diffusers.hooks.hooks import StateManager

        class ContextReader(ModelHook):
            _is_stateful = True

            def __init__(self) -> None:
                super().__init__()
                self.state = StateManager(dict)

            def reset_state(self, module: nn.Module) -> nn.Module:
                return module

        self.registry = HookRegistry.check_if_exists_or_initialize(model)
        self.hook = ContextReader()
        self.name = f"smoothed-energy-guidance-context-{id(self)}"
        self.registry.register_hook(self.hook, self.name)

    def current(self) -> str | None:
        try:
            return self.hook.state.context.name
        except ValueError:  # diffusers' way of saying that no cache context is set
            return None

    def remove(self) -> None:
        if self.name in self.registry.hooks:
            self.registry.remove_hook(self.name, recurse=False)


def transformer_host_reader(pipe: Any, family: TransformerFamily, true_cfg_scale: float, context: Any):
    """Batched-CFG families read the pipeline like the UNet pipelines; separate-call ("true") CFG
    families get SEG on the cond call only."""
    from .unet import host_reader

    if not family.separate_cfg:
        return host_reader(pipe)
    loop_progress = LoopProgress(pipe)
    last_timestep = threading.local()

    def is_uncond_call(timestep: Any) -> bool:
        # diffusers' cache context names the call where the pipeline sets one (Flux, Qwen-Image); elsewhere
        # (Flux Kontext, Flux img2img, Chroma) the uncond call is the second call on the same timestep
        named = context.current() if context is not None else None
        if named is not None:
            return named == "uncond"
        if true_cfg_scale <= 1:
            return False  # no uncond call to tell apart (and no device sync to read the timestep)
        value = None if timestep is None else float(torch.as_tensor(timestep).flatten()[0])
        repeated = value is not None and getattr(last_timestep, "value", None) == value
        last_timestep.value = None if repeated else value
        return repeated

    def read(timestep: Any, call: SegCall) -> HostStep:
        def progress() -> float:
            return loop_progress(timestep * family.timestep_scale if timestep is not None else None)

        # SEG joins the cond call only, with s/g, so that
        # neg + g·(pos' − neg) = neg + g·(pos − neg) + s·(pos − perturbed)
        uncond = is_uncond_call(timestep)
        return HostStep(False, 1.0, 0.0, progress, seg_allowed=not uncond, seg_scale_factor=1.0 / true_cfg_scale)

    return read


class TransformerSegHooks(SegHooks):
    """SEG hooks plus, for Flux, the reader of diffusers' cond / uncond call context."""

    context: _TrueCfgContext | None = None

    def remove(self) -> None:
        super().remove()
        if self.context is not None:
            self.context.remove()
            self.context = None


def enable_seg_transformer(
    pipe: Any, config: SegConfig, share_prefix: bool = True, true_cfg_scale: float = 1.0
) -> SegHooks:
    """Attach SEG to ``pipe.transformer`` (SD3 / SD3.5 / Flux.1), acting on ``pipe``'s calls only."""
    model = getattr(pipe.transformer, "_orig_mod", pipe.transformer)
    family = transformer_family(model)
    if true_cfg_scale <= 0 or not math.isfinite(true_cfg_scale):
        raise ValueError(f"true_cfg_scale must be a positive number, got {true_cfg_scale!r}.")
    context = _TrueCfgContext(model) if family.separate_cfg and config.enabled else None
    try:
        return attach_seg_to_transformer(
            pipe.transformer,
            config,
            transformer_host_reader(pipe, family, true_cfg_scale, context),
            share_prefix,
            scope=pipe,
            context=context,
        )
    except BaseException:
        if context is not None:
            context.remove()
        raise


def attach_seg_to_transformer(
    transformer: nn.Module,
    config: SegConfig,
    read_host: Callable[[Any, SegCall], HostStep],
    share_prefix: bool = True,
    scope: Any = None,
    take_perturbed: Callable[[Any], None] | None = None,
    context: _TrueCfgContext | None = None,
    one_call: bool = False,
) -> SegHooks:
    """Attach SEG's hooks to a transformer driven by any loop; ``read_host(timestep, call)`` describes each call.

    Families that cannot take extra rows inside a call (``forks=False``) get their perturbed prediction
    from a call of its own (the guider's separate batch), every row of it blurred.
    """
    model = getattr(transformer, "_orig_mod", transformer)
    family = transformer_family(model)
    inventory = transformer_inventory(model, family)
    specs = config.layers if config.layers is not None else inventory.default_layers()
    names = resolve_block_layers(specs, inventory)
    hooks = TransformerSegHooks(
        transformer,
        transformer_query_targets(model, names, family),
        config,
        read_host,
        UNDO_HINT,
        transformer_fork_plan(model, names, family) if share_prefix and family.forks and family.shares_prefix else None,
        read_inputs=lambda args, kwargs: family.read_inputs(model, args, kwargs),
        unbatched=family.unbatched,
        scope=scope,
        query_source=lambda target: query_source(target.attention, family.query_token_dim).module,
        take_perturbed=take_perturbed,
        one_call=one_call,
    )
    hooks.context = context
    try:
        return hooks.attach()
    except BaseException:
        hooks.remove()
        raise
