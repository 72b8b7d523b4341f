"""The token-layout query blur every host shares: only the image's tokens move, over the right grid."""

from __future__ import annotations

import math

import pytest
import torch

from smoothed_energy_guidance.core.blur import blur_queries
from smoothed_energy_guidance.core.tokens import TokenLayout, blur_image_queries


def queries(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sigma", [1.0, math.inf])
def test_text_then_image_then_reference_tokens(sigma):
    q = queries(2, 5 + 12 + 3, 8)  # 5 text tokens, a 3 × 4 image, 3 reference-image tokens
    out = blur_image_queries(q, (3, 4), sigma, layout=TokenLayout.TEXT_FIRST, text_tokens=5)
    assert torch.equal(out[:, :5], q[:, :5]) and torch.equal(out[:, 17:], q[:, 17:])
    assert torch.allclose(out[:, 5:17], blur_queries(q[:, 5:17], (3, 4), sigma))
    assert (out[:, 5:17] - q[:, 5:17]).abs().max() > 0.1


def test_image_first_and_image_only():
    q = queries(1, 6 + 4, 4)
    out = blur_image_queries(q, (2, 3), 1.0, layout=TokenLayout.IMAGE_FIRST)
    assert torch.allclose(out[:, :6], blur_queries(q[:, :6], (2, 3), 1.0)) and torch.equal(out[:, 6:], q[:, 6:])
    with pytest.raises(ValueError, match="layer up.1 has 10 query tokens but its grid is 2x3 = 6"):
        blur_image_queries(q, (2, 3), 1.0, layer="up.1")


def test_per_head_queries_blur_as_their_flattened_channels():
    q = queries(2, 3, 6, 4)  # (B, heads, N, head_dim) over a 2 × 3 grid
    out = blur_image_queries(q, (2, 3), 2.0, token_dim=2)
    flat = q.transpose(1, 2).reshape(2, 6, 12)
    assert torch.allclose(out.transpose(1, 2).reshape(2, 6, 12), blur_queries(flat, (2, 3), 2.0))


def test_frames_folded_into_the_batch_blur_as_one_video_grid():
    q = queries(2 * 3, 4, 5)  # 2 samples × 3 frames, each frame a 2 × 2 grid
    out = blur_image_queries(q, (2, 2), 1.0, 1.0, frames=3)
    video = q.reshape(2, 3 * 4, 5)
    assert torch.allclose(out.reshape(2, 12, 5), blur_queries(video, (3, 2, 2), 1.0, 1.0))


def test_too_few_tokens_for_the_text_and_the_grid_is_an_error():
    with pytest.raises(ValueError, match="too few for 5 text tokens and a 2x2 image grid"):
        blur_image_queries(queries(1, 8, 2), (2, 2), 1.0, layout=TokenLayout.TEXT_FIRST, text_tokens=5)
