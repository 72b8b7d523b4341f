"""FID and CLIP score on a real-model path, with tiny extractors injected (no downloads)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchmetrics")

from smoothed_energy_guidance.metrics import (  # noqa: E402
    DEFAULT_SETTINGS,
    evaluate_prompts,
    load_reference_images,
    metrics_table,
)


class TinyFeatures(torch.nn.Module):
    """Stands in for Inception: uint8 images → 8 features."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images.float() / 255).mean(dim=(2, 3))


def tiny_clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from smoothed_energy_guidance.testing import tiny_clip_tokenizer

    config = CLIPConfig(
        text_config=dict(
            vocab_size=514,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            eos_token_id=1,
            pad_token_id=1,
            bos_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tiny_clip_tokenizer(),
    )
    return CLIPModel(config).eval(), processor


def test_fid_and_clip_score_per_setting(tmp_path, seg_pipe):
    rng = np.random.default_rng(0)
    for index in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{index}.png")
    reference = load_reference_images(tmp_path, 32)
    assert reference.shape == (6, 3, 32, 32) and reference.dtype == torch.uint8
    prompts = ["a red cube", "a blue ball", "a green cone", "a white box"]
    rows = evaluate_prompts(
        seg_pipe,
        prompts,
        reference,
        fid_feature=TinyFeatures(),
        clip_model=tiny_clip,
        batch=2,
        call={"num_inference_steps": 2, "height": 32, "width": 32, "guidance_scale": 5.0},
        progress=False,
    )
    assert [r["setting"] for r in rows] == [s.name for s in DEFAULT_SETTINGS]
    assert all(math.isfinite(r["fid"]) and math.isfinite(r["clip_score"]) for r in rows)
    assert rows[0]["fid"] != rows[2]["fid"], "CFG + SEG must change the images"
    assert "| CFG + SEG σ=∞ |" in metrics_table(rows, "tiny-random", len(prompts))


def test_reference_folder_without_images_is_refused(tmp_path):
    with pytest.raises(ValueError, match="No reference images"):
        load_reference_images(tmp_path, 32)
