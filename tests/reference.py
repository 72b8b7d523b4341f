"""An independent reference of SEG, written from DESIGN.md §2 without the package's code.

The blur is a dense N×N matrix built by index arithmetic (reflect padding spelled out), the
attention is computed from scratch in a processor, the grid of each layer is read from the
feature map entering its Transformer2DModel, and the perturbed rows are built by naming every
UNet input. Applied by replacing ``unet.forward`` on the instance for the duration of a call.
"""

from __future__ import annotations

import contextlib
import math

import torch


def reference_kernel(sigma: float, side: int) -> torch.Tensor:
    """1-D taps for one axis: size ceil(6σ)+1 made odd, clamped to the side, normalised."""
    span = math.ceil(6 * sigma)
    size = span + 1 - (span % 2)
    size = min(size, side + 1) if side % 2 == 0 else min(size, side)
    half = (size - 1) / 2
    x = torch.tensor([-half + i for i in range(size)], dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def reference_axis_matrix(sigma: float, side: int) -> torch.Tensor:
    """side×side matrix of a reflect-padded 1-D convolution: out = M @ in."""
    taps = reference_kernel(sigma, side)
    pad = len(taps) // 2
    matrix = torch.zeros(side, side, dtype=torch.float64)
    for out_index in range(side):
        for tap, weight in enumerate(taps):
            src = out_index + tap - pad
            while src < 0 or src >= side:  # reflect without repeating the edge
                src = -src if src < 0 else 2 * (side - 1) - src
            matrix[out_index, src] += weight
    return matrix


def reference_blur_matrix(sigma: float, height: int, width: int) -> torch.Tensor:
    """N×N matrix blurring row-major tokens n = i·w + j of an h×w grid."""
    tokens = height * width
    if sigma > 9999:
        return torch.full((tokens, tokens), 1.0 / tokens, dtype=torch.float64)
    return torch.kron(reference_axis_matrix(sigma, height), reference_axis_matrix(sigma, width))


def reference_video_blur_matrix(sigma: float, temporal_sigma: float, frames: int, height: int, width: int):
    """(t·h·w)² matrix for row-major tokens n = (f·h + i)·w + j: the spatial matrix within each frame, then
    the 1-D temporal one along frames (σ_t = 0: none; > 9999: the mean over frames)."""
    if temporal_sigma == 0:
        temporal = torch.eye(frames, dtype=torch.float64)
    elif temporal_sigma > 9999:
        temporal = torch.full((frames, frames), 1.0 / frames, dtype=torch.float64)
    else:
        temporal = reference_axis_matrix(temporal_sigma, frames)
    return torch.kron(temporal, reference_blur_matrix(sigma, height, width))


def reference_blur_queries(q: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """(B, N, C) queries blurred by the dense matrix, in float64, returned in q's dtype."""
    matrix = reference_blur_matrix(sigma, height, width)
    return torch.einsum("nm,bmc->bnc", matrix, q.double()).to(q.dtype)


class ReferenceSegProcessor:
    """Self-attention from scratch, blurring the queries of the perturbed rows."""

    def __init__(self, grid_cell: dict, sigma: float, perturbed: slice) -> None:
        self.grid_cell, self.sigma, self.perturbed = grid_cell, sigma, perturbed

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        batch, tokens, _ = hidden_states.shape
        q = attn.to_q(hidden_states)
        k = attn.to_k(hidden_states)
        v = attn.to_v(hidden_states)
        height, width = self.grid_cell["hw"]
        assert height * width == tokens
        q = torch.cat([q[: self.perturbed.start], self.blur(q[self.perturbed], height, width)])
        heads = attn.heads
        head_dim = q.shape[-1] // heads

        def split(x):
            return x.view(batch, -1, heads, head_dim).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(-1, -2) * (head_dim**-0.5), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out))

    def blur(self, q: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return reference_blur_queries(q, height, width, self.sigma)


def _with_cond_copy(x, rows: int, cond: slice):
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return type(x)(_with_cond_copy(item, rows, cond) for item in x)
    if isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] == rows:
        return torch.cat([x, x[cond]])
    return x


def reference_combine(noise: torch.Tensor, cfg: bool, guidance_scale: float, seg_scale: float, rescale: float):
    if not cfg:
        cond, perturbed = noise.chunk(2)
        return cond + seg_scale * (cond - perturbed)
    uncond, cond, perturbed = noise.chunk(3)
    pred = uncond + guidance_scale * (cond - uncond) + seg_scale * (cond - perturbed)
    if rescale > 0:
        dims = list(range(1, cond.ndim))
        factor = cond.std(dim=dims, keepdim=True) / pred.std(dim=dims, keepdim=True)
        pred = rescale * (pred * factor) + (1 - rescale) * pred
    return torch.cat([pred, pred])


def record_layer_grids(modules: dict, layer_names) -> tuple[dict, list]:
    """Pre-hooks on each layer's Transformer2DModel that note its input feature map's (h, w) per call."""
    cells, handles = {}, []
    for name in layer_names:
        parent = name.split(".transformer_blocks")[0]
        cell = cells.setdefault(parent, {})

        def record(module, args, kwargs, cell=cell):
            hidden = args[0] if args else kwargs["hidden_states"]
            cell["hw"] = tuple(hidden.shape[-2:])

        handles.append(modules[parent].register_forward_pre_hook(record, with_kwargs=True))
    return cells, handles


@contextlib.contextmanager
def reference_seg(
    unet,
    layer_names,
    sigma: float,
    seg_scale: float,
    guidance_scale: float,
    cfg: bool,
    rescale: float = 0.0,
    active_calls=None,
):
    """Patch ``unet.forward`` so the host pipeline computes SEG by the definition.

    ``active_calls``: indices of UNet calls on which SEG runs (None: all).
    """
    modules = dict(unet.named_modules())
    original_forward = unet.forward
    calls = {"n": 0}
    grid_cells, grid_hooks = record_layer_grids(modules, layer_names)

    def forward(sample, timestep, encoder_hidden_states=None, **kwargs):
        index = calls["n"]
        calls["n"] += 1
        if active_calls is not None and index not in active_calls:
            return original_forward(sample, timestep, encoder_hidden_states, **kwargs)
        rows = sample.shape[0]
        per = rows // 2 if cfg else rows
        cond = slice(rows - per, rows)
        added = dict(kwargs.get("added_cond_kwargs") or {})
        for key in ("text_embeds", "time_ids", "image_embeds"):
            if key in added:
                added[key] = _with_cond_copy(added[key], rows, cond)
        kwargs = dict(kwargs, added_cond_kwargs=added)
        for key in ("down_block_additional_residuals", "mid_block_additional_residual", "timestep_cond"):
            if kwargs.get(key) is not None:
                kwargs[key] = _with_cond_copy(kwargs[key], rows, cond)
        saved = {name: modules[name].processor for name in layer_names}
        for name in layer_names:
            parent = name.split(".transformer_blocks")[0]
            modules[name].processor = ReferenceSegProcessor(grid_cells[parent], sigma, slice(rows, rows + per))
        try:
            noise = original_forward(
                torch.cat([sample, sample[cond]]),
                _with_cond_copy(timestep, rows, cond),
                torch.cat([encoder_hidden_states, encoder_hidden_states[cond]]),
                **{**kwargs, "return_dict": False},
            )[0]
        finally:
            for name, processor in saved.items():
                modules[name].processor = processor
        pred = reference_combine(noise, cfg, guidance_scale, seg_scale, rescale)
        return (pred,)  # the SDXL pipelines call the UNet with return_dict=False

    unet.forward = forward
    try:
        yield calls
    finally:
        del unet.forward
        for handle in grid_hooks:
            handle.remove()


class ReferenceFramesSegProcessor(ReferenceSegProcessor):
    """Self-attention from scratch over frames-as-batch rows (AnimateDiff): each perturbed sample's frames
    are gathered and their queries blurred by the dense (t·h·w)² video matrix."""

    def __init__(self, grid_cell: dict, sigma: float, temporal_sigma: float, frames: int, first_perturbed_row: int):
        super().__init__(grid_cell, sigma, slice(first_perturbed_row, None))
        self.temporal_sigma, self.frames = temporal_sigma, frames

    def blur(self, q: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(clips·frames, h·w, C) → each clip's frames blurred together by the dense video matrix."""
        matrix = reference_video_blur_matrix(self.sigma, self.temporal_sigma, self.frames, height, width)
        clips = q.reshape(-1, self.frames * height * width, q.shape[-1]).double()
        return torch.einsum("nm,bmc->bnc", matrix, clips).to(q.dtype).reshape(q.shape)


@contextlib.contextmanager
def reference_seg_motion_unet(unet, layer_names, sigma, temporal_sigma, seg_scale, guidance_scale, cfg):
    """Patch a UNetMotionModel's forward so an AnimateDiff pipeline computes SEG by the definition.

    The perturbed samples are copies of the cond samples (their per-frame text rows included), run in one
    batch with the host's; the chosen spatial self-attentions use :class:`ReferenceFramesSegProcessor`.
    """
    from diffusers.models.unets.unet_motion_model import UNetMotionOutput

    modules = dict(unet.named_modules())
    original_forward = unet.forward
    cells, handles = record_layer_grids(modules, layer_names)

    def forward(sample, timestep, encoder_hidden_states=None, **kwargs):
        rows, frames = sample.shape[0], sample.shape[2]
        per = rows // 2 if cfg else rows
        cond = slice(rows - per, rows)
        text = torch.cat([encoder_hidden_states, encoder_hidden_states[cond.start * frames : cond.stop * frames]])
        saved = {name: modules[name].processor for name in layer_names}
        for name in layer_names:
            cell = cells[name.split(".transformer_blocks")[0]]
            modules[name].processor = ReferenceFramesSegProcessor(cell, sigma, temporal_sigma, frames, rows * frames)
        try:
            noise = original_forward(torch.cat([sample, sample[cond]]), timestep, text, **kwargs).sample
        finally:
            for name, processor in saved.items():
                modules[name].processor = processor
        return UNetMotionOutput(sample=reference_combine(noise, cfg, guidance_scale, seg_scale, 0.0))

    unet.forward = forward
    try:
        yield
    finally:
        del unet.forward
        for handle in handles:
            handle.remove()


def blur_unet_layers(unet, layer_names, sigma: float):
    """For the next calls of ``unet``: every row of the chosen self-attentions computed by
    :class:`ReferenceSegProcessor`, queries blurred. Returns the function that undoes it."""
    modules = dict(unet.named_modules())
    cells, handles = record_layer_grids(modules, layer_names)
    saved = {name: modules[name].processor for name in layer_names}
    for name in layer_names:
        cell = cells[name.split(".transformer_blocks")[0]]
        modules[name].processor = ReferenceSegProcessor(cell, sigma, slice(0, None))

    def undo():
        for name, processor in saved.items():
            modules[name].processor = processor
        for handle in handles:
            handle.remove()

    return undo
