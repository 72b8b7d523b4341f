"""SEG settings validation and the combination rule."""

from __future__ import annotations

import math

import pytest
import torch

from smoothed_energy_guidance import SegConfig, apply_seg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(blur_sigma=0.0), r"seg_blur_sigma must be > 0"),
        (dict(blur_sigma=-1.0), r"seg_blur_sigma must be > 0"),
        (dict(blur_sigma=math.nan), r"seg_blur_sigma must be > 0"),
        (dict(scale=math.inf), r"seg_scale must be a finite number"),
        (dict(scale=math.nan), r"seg_scale must be a finite number"),
        (dict(start=0.5, end=0.5), r"must be below seg_guidance_end"),
        (dict(start=0.8, end=0.2), r"must be below seg_guidance_end"),
        (dict(start=-0.1), r"seg_guidance_start must be a fraction of the steps in \[0, 1\]"),
        (dict(end=1.5), r"seg_guidance_end must be a fraction"),
    ],
)
def test_bad_settings_name_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegConfig(**kwargs)


def test_config_is_frozen_and_normalises_layers():
    config = SegConfig(layers="mid")
    assert config.layers == ("mid",)
    with pytest.raises(AttributeError):
        config.scale = 1.0  # type: ignore[misc]


def test_window_is_half_open():
    config = SegConfig(start=0.25, end=0.75)
    assert [config.active_at(p) for p in (0.0, 0.25, 0.5, 0.75)] == [False, True, True, False]
    assert not SegConfig(scale=0.0).active_at(0.5)


def test_combination_rule_from_the_paper():
    uncond, cond, perturbed = (torch.full((1, 1, 2, 2), v) for v in (1.0, 2.0, 1.5))
    assert apply_seg(cond, perturbed, 3.0).flatten()[0].item() == pytest.approx(2.0 + 3.0 * 0.5)
    pred = apply_seg(cond, perturbed, 3.0, uncond, guidance_scale=5.0)
    assert pred.flatten()[0].item() == pytest.approx(1.0 + 5.0 * 1.0 + 1.5)


def test_rescale_matches_std_ratio_formula():
    generator = torch.Generator().manual_seed(0)
    uncond, cond, perturbed = (torch.randn(2, 4, 3, 3, generator=generator) for _ in range(3))
    pred = apply_seg(cond, perturbed, 2.0, uncond, 6.0, guidance_rescale=0.7)
    raw = uncond + 6.0 * (cond - uncond) + 2.0 * (cond - perturbed)
    for row in range(2):
        ratio = cond[row].std() / raw[row].std()
        expected = 0.7 * raw[row] * ratio + 0.3 * raw[row]
        assert torch.allclose(pred[row], expected, atol=1e-6)
