"""Independent reference of SEG on diffusion transformers (DESIGN.md §2, transformers).

The queries of the chosen attentions are blurred right after their per-head norm (or ``to_q``
where there is none) by a dense N×N matrix over the image tokens, whose grid and text length the
test states from the call's sizes. The perturbed rows are built by naming the transformer's
inputs; the combination is written out.
"""

from __future__ import annotations

import contextlib

import torch

from reference import reference_blur_matrix, reference_video_blur_matrix


def _blur_rows(q, rows: slice, grid, sigma, token_dim: int, text_tokens: int, temporal_sigma: float = 0.0):
    if len(grid) == 3:
        matrix = reference_video_blur_matrix(sigma, temporal_sigma, *grid)
    else:
        matrix = reference_blur_matrix(sigma, *grid).to(torch.float64)
    image = slice(text_tokens, text_tokens + matrix.shape[0])  # reference-image tokens may follow
    out = q.clone()
    if token_dim == 2:  # (B, heads, N, D)
        part = q[rows][:, :, image].double()
        out[rows, :, image] = torch.einsum("nm,bhmd->bhnd", matrix, part).to(q.dtype)
    else:  # (B, N, …)
        part = q[rows][:, image].double()
        out[rows, image] = torch.einsum("nm,bm...->bn...", matrix, part).to(q.dtype)
    return out


# position ids and rotary tables: one per token, shared by the batch
UNBATCHED = {"img_ids", "txt_ids", "image_rotary_emb", "position_ids", "image_cond_ids"}


def _with_cond_rows(value, rows: int, cond: slice):
    """Append the cond rows to every per-sample tensor, also inside lists and dicts (ControlNet residuals,
    PixArt's added conditions)."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value, value[cond]]) if value.ndim >= 1 and value.shape[0] == rows else value
    if isinstance(value, (list, tuple)):
        return type(value)(_with_cond_rows(item, rows, cond) for item in value)
    if isinstance(value, dict):
        return {key: _with_cond_rows(item, rows, cond) for key, item in value.items()}
    return value


@contextlib.contextmanager
def reference_seg_transformer(
    model,
    attention_names,
    grid,
    sigma,
    seg_scale,
    cfg,
    guidance_scale=1.0,
    text_tokens=None,
    token_dim=2,
    true_cfg_scale=None,
    hand_true_cond=False,
    temporal_sigma=0.0,
):
    """Patch ``model.forward`` and each chosen attention's query source for the duration.

    ``text_tokens``: for each attention name, how many text tokens precede the image tokens in its
    query (Flux single-stream blocks); ``true_cfg_scale``: the pipeline alternates cond / uncond
    calls and SEG joins the cond ones. ``hand_true_cond``: under CFG, hand the host
    ``[u', cond]`` with ``u' + g·(cond − u') = pred`` instead of ``[pred, pred]``, so that host code
    reading its cond prediction back (SD3 skip-layer guidance) sees the real one. Calls with
    ``skip_layers`` (skip-layer guidance) run untouched.
    """
    modules = dict(model.named_modules())
    state = {"rows": None, "calls": 0}
    patched = []
    for name in attention_names:
        attention = modules[name]
        source = attention.norm_q if getattr(attention, "norm_q", None) is not None else attention.to_q
        dim = token_dim if source is getattr(attention, "norm_q", None) else 1
        original = source.forward

        def forward(x, original=original, dim=dim, name=name):
            y = original(x)
            if state["rows"] is None:
                return y
            return _blur_rows(y, state["rows"], grid, sigma, dim, (text_tokens or {}).get(name, 0), temporal_sigma)

        source.forward = forward
        patched.append(source)
    original_forward = model.forward

    def model_forward(*args, **kwargs):
        if kwargs.get("skip_layers") is not None:
            return original_forward(*args, **kwargs)
        index = state["calls"]
        state["calls"] += 1
        if true_cfg_scale is not None and index % 2 == 1:  # the uncond call of this step
            return original_forward(*args, **kwargs)
        rows = (args[0] if args else kwargs["hidden_states"]).shape[0]
        per = rows // 2 if cfg else rows
        cond = slice(rows - per, rows)
        args = tuple(_with_cond_rows(value, rows, cond) for value in args)
        for key, value in kwargs.items():
            if key == "img_shapes" and len(value) == rows:  # per-sample lists (Qwen-Image)
                kwargs[key] = value + value[cond]
            elif key not in UNBATCHED:
                kwargs[key] = _with_cond_rows(value, rows, cond)
        state["rows"] = slice(rows, rows + per)
        try:
            noise = original_forward(*args, **{**kwargs, "return_dict": False})[0]
        finally:
            state["rows"] = None
        scale = seg_scale / true_cfg_scale if true_cfg_scale else seg_scale
        if cfg:
            uncond, cond_pred, perturbed = noise.chunk(3)
            pred = uncond + guidance_scale * (cond_pred - uncond) + scale * (cond_pred - perturbed)
            if hand_true_cond:
                pred64, cond64 = pred.double(), cond_pred.double()
                uncond_prime = (pred64 - guidance_scale * cond64) / (1 - guidance_scale)
                return (torch.cat([uncond_prime.to(pred.dtype), cond_pred]),)
            return (torch.cat([pred, pred]),)
        cond_pred, perturbed = noise.chunk(2)
        return (cond_pred + scale * (cond_pred - perturbed),)

    model.forward = model_forward
    try:
        yield state
    finally:
        del model.forward
        for source in patched:
            del source.forward
