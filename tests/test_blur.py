"""The blur against its definition: kernel rules, dense reference, infinite limit, logit identity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reference import reference_blur_matrix, reference_blur_queries
from smoothed_energy_guidance.core.blur import (
    axis_kernel_size,
    blur_feature_map,
    blur_queries,
    gaussian_kernel_1d,
    is_infinite_sigma,
    kernel_size,
)


@pytest.mark.parametrize("sigma, size", [(0.5, 3), (1.0, 7), (2.0, 13), (10.0, 61), (100.0, 601), (0.1, 1), (0.4, 3)])
def test_kernel_size_rule(sigma, size):
    assert kernel_size(sigma) == size


@pytest.mark.parametrize("size, side, clamped", [(61, 32, 33), (61, 33, 33), (7, 32, 7), (61, 2, 3), (61, 1, 1)])
def test_kernel_clamped_to_each_side(size, side, clamped):
    assert axis_kernel_size(size, side) == clamped


@pytest.mark.parametrize("sigma, size", [(0.5, 3), (1.0, 7), (100.0, 33)])
def test_kernel_sums_to_one_and_is_symmetric(sigma, size):
    kernel = gaussian_kernel_1d(sigma, size)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(kernel, kernel.flip(0))


def test_kernels_are_cached_per_sigma_size_dtype_device():
    assert gaussian_kernel_1d(2.0, 13) is gaussian_kernel_1d(2.0, 13)
    assert gaussian_kernel_1d(2.0, 13, torch.float64).dtype == torch.float64


def test_infinite_threshold_is_strict():
    assert not is_infinite_sigma(9999.0)
    assert is_infinite_sigma(9999.5) and is_infinite_sigma(math.inf)


@pytest.mark.parametrize(
    "grid", [(8, 8), (5, 7), (7, 5), (16, 24), (1, 6), (2, 3), (13, 13)], ids=lambda g: f"{g[0]}x{g[1]}"
)
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 10.0, 9999.0, 1e4, math.inf])
def test_blur_queries_matches_dense_reference(grid, sigma):
    height, width = grid
    q = torch.randn(3, height * width, 6, generator=torch.Generator().manual_seed(height * 31 + width))
    ours = blur_queries(q, grid, sigma)
    assert torch.allclose(ours, reference_blur_queries(q, height, width, sigma), atol=1e-5)


def test_official_two_dimensional_convolution_equals_separable_on_square_maps():
    """The official code: 2-D reflect pad + depthwise conv with the outer-product kernel."""
    x = torch.randn(2, 5, 32, 32)
    for sigma in (1.0, 3.0, 100.0):
        size = axis_kernel_size(kernel_size(sigma), 32)
        taps = gaussian_kernel_1d(sigma, size)
        kernel2d = (taps[:, None] @ taps[None, :]).expand(5, 1, size, size)
        pad = size // 2
        official = F.conv2d(F.pad(x, [pad] * 4, mode="reflect"), kernel2d, groups=5)
        assert torch.allclose(blur_feature_map(x, sigma), official, atol=1e-5)


def test_sigma_100_on_32_map_is_near_uniform_but_not_the_mean():
    q = torch.randn(1, 32 * 32, 4)
    blurred = blur_queries(q, (32, 32), 100.0)
    mean = blur_queries(q, (32, 32), math.inf)
    assert not torch.allclose(blurred, mean, atol=1e-4)
    assert torch.allclose(blurred, reference_blur_queries(q, 32, 32, 100.0), atol=1e-5)


def test_infinite_blur_is_the_token_mean():
    q = torch.randn(2, 20, 3)
    assert torch.allclose(blur_queries(q, (4, 5), math.inf), q.mean(dim=1, keepdim=True).expand_as(q))


def test_blurring_queries_equals_blurring_logits_along_query_axes():
    """SEG's identity (Hong 2024, Sec. 3.2): blur(Q)·Kᵀ equals the query-axis blur of Q·Kᵀ."""
    height, width, sigma = 6, 9, 1.5
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, height * width, 8, generator=generator, dtype=torch.float64)
    k = torch.randn(1, height * width, 8, generator=generator, dtype=torch.float64)
    logits = q @ k.transpose(1, 2)  # explicit N×N
    blurred_logits = reference_blur_matrix(sigma, height, width) @ logits[0]
    from_queries = blur_queries(q, (height, width), sigma) @ k.transpose(1, 2)
    assert torch.allclose(from_queries[0], blurred_logits, atol=1e-6)
    # and the logits' blur is exactly the package's blur applied to the logit columns
    assert torch.allclose(blur_queries(logits, (height, width), sigma), from_queries, atol=1e-6)


def test_wrong_grid_is_refused():
    with pytest.raises(ValueError, match="real feature-map size"):
        blur_queries(torch.zeros(1, 30, 2), (5, 5), 1.0)
