"""Where each family's denoiser call says its token grid: the grid readers the family records name.

Each reader takes ``(model, args, kwargs)`` of one denoiser call and returns the
:class:`~smoothed_energy_guidance.core.grids.DenoiserInputs` SEG needs (rows, grid, timestep, text tokens). A family
gets a reader of its own only where no shared one can say its grid. Pure torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core.grids import DenoiserInputs


def sd3_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
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


def generated_image_grid(ids: torch.Tensor, family: str, tokens: int) -> tuple[int, int]:
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


def flux_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    tokens = args[0] if args else kwargs["hidden_states"]
    grid = generated_image_grid(kwargs["img_ids"], type(model).__name__, tokens.shape[1])
    text = kwargs["encoder_hidden_states"].shape[1]
    return DenoiserInputs(tokens.shape[0], grid, kwargs.get("timestep"), text_tokens=text)


def qwen_image_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
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


def z_image_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    """Per-sample latents ``x[i]`` of shape (C, F, H, W), patchified by ``patch_size`` (default 2)."""
    samples = args[0] if args else kwargs["x"]
    channels, frames, height, width = samples[0].shape
    patch, frame_patch = kwargs.get("patch_size", 2), kwargs.get("f_patch_size", 1)
    if frames // frame_patch != 1:
        raise ValueError(f"Z-Image call with {frames} frames; SEG supports single images here.")
    return DenoiserInputs(len(samples), (height // patch, width // patch), kwargs.get("t"))


def krea2_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    """Queries are [text, image]; ``position_ids`` (text rows zero) holds the image rows' (t, h, w)."""
    tokens = args[0] if args else kwargs["hidden_states"]
    image_ids = kwargs["position_ids"][-tokens.shape[1] :]
    grid = generated_image_grid(image_ids, "Krea 2", tokens.shape[1])
    return DenoiserInputs(tokens.shape[0], grid, kwargs.get("timestep"))


def patch_sizes(model: Any) -> tuple[int, int, int]:
    """(frames, height, width) patch sizes from the config: a tuple, or one int plus ``patch_size_t``."""
    patch = model.config.patch_size
    if isinstance(patch, (tuple, list)):
        return tuple(patch)
    return (model.config.get("patch_size_t") or 1, patch, patch)


def latent_inputs(frame_axis: int | None = None, image_only: str | None = None, text_first: bool = False):
    """Inputs of a denoiser that takes latents (B, C, H, W), or video latents with frames on
    ``frame_axis``, and patchifies them by its config (frames padded up to whole patches).

    ``image_only``: the family's name, for models whose video calls SEG refuses for now;
    ``text_first``: the text tokens open the joint queries, as many as ``encoder_hidden_states`` has.
    """

    def read(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
        latents = args[0] if args else kwargs["hidden_states"]
        frame_patch, height_patch, width_patch = patch_sizes(model)
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


def qwen_image21_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    """The target image is the last entry of ``img_shapes`` and its tokens end the joint sequence."""
    tokens = args[0] if args else kwargs["hidden_states"]
    frames, height, width = kwargs["img_shapes"][0][-1]
    if frames != 1:
        raise ValueError(f"Qwen-Image 2.1 call with {frames} frames per image; SEG supports single images here.")
    return DenoiserInputs(tokens.shape[0], (int(height), int(width)), kwargs.get("timestep"))


def ltx_inputs(model: Any, args: tuple, kwargs: dict) -> DenoiserInputs:
    """Packed video tokens; the pipeline passes the latent grid as ``num_frames``, ``height``, ``width``."""
    tokens = args[0] if args else kwargs["hidden_states"]
    grid = (int(kwargs["num_frames"]), int(kwargs["height"]), int(kwargs["width"]))
    if math.prod(grid) != tokens.shape[1]:
        raise ValueError(
            f"LTX-Video call with a {'x'.join(map(str, grid))} latent grid but {tokens.shape[1]} tokens; SEG needs "
            "one token per latent position (condition tokens are not supported yet)."
        )
    return DenoiserInputs(tokens.shape[0], grid, kwargs.get("timestep"))
