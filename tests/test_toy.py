"""The project's own model: scenes, the training script (smoke run), metrics, demo and eval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smoothed_energy_guidance.toy.evaluate import adherence, frechet_distance, precision_recall
from smoothed_energy_guidance.toy.scenes import ATTRIBUTES, SIZE, Scene, make_batch, random_scene, render


def test_scenes_are_deterministic_and_match_their_captions():
    a, scenes = make_batch(np.random.default_rng(3), 4)
    b, _ = make_batch(np.random.default_rng(3), 4)
    assert np.array_equal(a, b) and a.shape == (4, 3, SIZE, SIZE) and a.min() >= -1 and a.max() <= 1
    scene = Scene("blue", "green", "red", "square", "left", horizon=0.6, scale=0.2)
    image = render(scene)
    assert tuple(image[1, 16]) != tuple(image[30, 16]), "sky and ground must differ"
    assert tuple(image[int(0.6 * SIZE) - 3, int(0.25 * SIZE)]) == (220, 40, 40), "the red square sits on the left"
    assert scene.caption == "a red square on the left, green ground, blue sky"
    assert set(random_scene(np.random.default_rng(0)).labels()) == set(ATTRIBUTES)


def test_frechet_distance_and_precision_recall_behave():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=generator)
    same = torch.randn(300, 8, generator=generator)
    shifted = same + 3.0
    assert frechet_distance(real, same) < 0.5
    assert frechet_distance(real, shifted) == pytest.approx(9 * 8 + frechet_distance(real, same), rel=0.1)
    precision, recall = precision_recall(real, same)
    assert precision > 0.8 and recall > 0.8
    assert precision_recall(real, shifted)[0] < 0.05


def test_adherence_counts_attributes():
    scenes = [Scene("blue", "green", "red", "square", "left", 0.6, 0.2)] * 2
    heads = {name: torch.zeros(2, len(values)) for name, values in ATTRIBUTES.items()}
    for name in ATTRIBUTES:
        heads[name][0, scenes[0].labels()[name]] = 1.0  # first image right everywhere
    accuracy, all_right = adherence(heads, scenes)
    expected_second = sum(scenes[0].labels()[n] == 0 for n in ATTRIBUTES) / len(ATTRIBUTES)
    assert accuracy == pytest.approx((1 + expected_second) / 2)
    assert all_right == pytest.approx(0.5 if expected_second < 1 else 1.0)


def test_training_smoke_run_produces_a_loadable_pipeline(tmp_path):
    from smoothed_energy_guidance.toy.train import TrainConfig, train

    out = train(TrainConfig.smoke(tmp_path / "seg-toy"), progress=False)
    import smoothed_energy_guidance as seg

    pipe = seg.StableDiffusionXLSEGPipeline.from_pretrained(out, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a red circle on the left, green ground, blue sky", num_inference_steps=2, height=32, width=32, output_type="pt"
    ).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
    assert (tmp_path / "scene-features.safetensors").exists()
    assert pipe.config.force_zeros_for_empty_prompt is False  # unconditional = the empty caption it learned


def test_eval_reports_every_setting(tmp_path):
    from smoothed_energy_guidance.toy.evaluate import evaluate, quality_table
    from smoothed_energy_guidance.toy.train import TrainConfig, train

    out = train(TrainConfig.smoke(tmp_path / "seg-toy"), progress=False)
    results = evaluate(out, tmp_path / "scene-features.safetensors", samples=12, steps=2, batch=12, progress=False)
    assert [r["setting"] for r in results["unconditional"]] == [
        "vanilla",
        "PAG (scale 3)",
        "SEG σ=1",
        "SEG σ=4",
        "SEG σ=16",
        "SEG σ=∞",
    ]
    assert len(results["conditional"]) == 8 and "attribute_accuracy" in results["conditional"][0]
    assert all(math.isfinite(r["fd"]) for rows in results.values() for r in rows)
    # SEG changes the samples, so its row differs from vanilla's
    assert results["unconditional"][0]["fd"] != results["unconditional"][-1]["fd"]
    table = quality_table(results, 12, 2)
    assert "## Unconditional" in table and "CFG 5 + SEG σ=∞" in table
