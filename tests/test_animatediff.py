"""AnimateDiff (a UNet with motion modules, frames folded into its batch): SEG gathers each sample's frames and
blurs the spatial self-attention queries over the (frames, h, w) grid, against a dense (t·h·w)² reference."""

from __future__ import annotations

import math

import pytest
import torch

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, TOLERANCE, make_pipe, no_hooks_left
from reference import reference_seg_motion_unet
from smoothed_energy_guidance.testing import tiny_sd_components

# 3 frames of 32 × 24 pixels → 16 × 12 latents; the mid block sees 8 × 6
CALL = dict(prompt="a red circle", num_frames=3, height=32, width=24, num_inference_steps=2)
MID = ["mid_block.attentions.0.transformer_blocks.0.attn1"]


def animatediff_parts() -> dict:
    from diffusers import MotionAdapter

    parts = tiny_sd_components()
    for unused in ("safety_checker", "requires_safety_checker"):
        parts.pop(unused)
    torch.manual_seed(1)
    parts["motion_adapter"] = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=2,
        motion_norm_num_groups=32,
        motion_num_attention_heads=4,
        motion_max_seq_length=32,
    )
    return parts


@pytest.fixture(scope="module")
def pipes():
    from diffusers import AnimateDiffPipeline

    parts = animatediff_parts()
    host = make_pipe(AnimateDiffPipeline, parts)  # converts the UNet into a UNetMotionModel
    return make_pipe(seg.AnimateDiffSEGPipeline, dict(parts, unet=host.unet)), host


def fresh(cfg: bool) -> dict:
    return dict(CALL, guidance_scale=5.0 if cfg else 1.0, generator=torch.Generator().manual_seed(0), output_type="pt")


@pytest.mark.parametrize(
    "layers, sigma, temporal_sigma",
    [(None, 1.0, 0.0), (None, 2.0, 1.0), (None, math.inf, math.inf), (["down"], 1.0, math.inf)],
)
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_animatediff_matches_the_dense_video_reference(pipes, layers, sigma, temporal_sigma, cfg):
    ours, host = pipes
    seg_args = dict(seg_scale=3.0, seg_blur_sigma=sigma, seg_temporal_sigma=temporal_sigma)
    result = ours(**fresh(cfg), **seg_args, seg_applied_layers=layers).frames
    names = MID
    if layers == ["down"]:  # the spatial self-attentions of the down blocks, never the motion modules
        names = [n for n, _ in host.unet.named_modules() if n.startswith("down_blocks.") and n.endswith("attn1")]
        names = [n for n in names if ".motion_modules." not in n]
        assert len(names) == 4
    with reference_seg_motion_unet(host.unet, names, sigma, temporal_sigma, 3.0, 5.0, cfg):
        expected = host(**fresh(cfg)).frames
    plain = host(**fresh(cfg)).frames
    assert result.shape == plain.shape and result.shape[1] == 3
    assert (result - expected).abs().max() <= TOLERANCE
    assert (plain - expected).abs().max() > MIN_EFFECT
    assert torch.equal(ours(**fresh(cfg), seg_scale=0.0).frames, plain)
    assert no_hooks_left(ours.unet)


def test_animatediff_layers_exclude_motion_modules_and_hooks_go_after_an_exception(pipes):
    ours, _ = pipes
    with pytest.raises(ValueError, match="motion_modules|out of range|no self-attention"):
        ours(**fresh(False), seg_applied_layers=["mid_block.motion_modules.0.transformer_blocks.0.attn1"])

    def interrupt(*args, **kwargs):
        raise RuntimeError("interrupted by the user")

    with pytest.raises(RuntimeError, match="interrupted by the user"):
        ours(**fresh(True), callback_on_step_end=interrupt, seg_temporal_sigma=1.0)
    assert no_hooks_left(ours.unet)


def test_animatediff_from_pipe_and_enable_seg(pipes):
    ours, host = pipes
    assert type(seg.from_pipe(host)) is seg.AnimateDiffSEGPipeline
    with seg.enable_seg(host, scale=3.0, temporal_sigma=1.0):
        enabled = host(**fresh(True)).frames
    direct = ours(**fresh(True), seg_temporal_sigma=1.0).frames
    assert torch.allclose(enabled, direct, atol=TOLERANCE)
    assert no_hooks_left(host.unet)


def test_seg_generate_detects_an_animatediff_folder_and_writes_its_clip(pipes, tmp_path, capsys):
    import av

    from smoothed_energy_guidance.cli.main import main
    from smoothed_energy_guidance.pipelines import detect_family

    _, host = pipes
    model = tmp_path / "animatediff"
    host.save_pretrained(model)
    assert detect_family(str(model)) == "animatediff"
    argv = ["generate", "--model", model, "--prompt", "a cube", "--steps", "1", "--width", "24", "--height", "32"]
    argv += ["--frames", "3", "--temporal-sigma", "1", "--device", "cpu", "--quiet", "--out", tmp_path / "out"]
    assert main([str(a) for a in argv]) == 0
    mp4, webp = capsys.readouterr().out.split()
    with av.open(mp4) as container:
        decoded = [frame.to_image() for frame in container.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].size == (24, 32) and webp.endswith(".webp")


def test_freenoise_split_inference_is_refused_up_front_with_its_name():
    """Split inference runs each attention on slices of the frames; SEG says so before any step runs."""
    from diffusers import AnimateDiffPipeline

    parts = animatediff_parts()
    host = make_pipe(AnimateDiffPipeline, parts)
    ours = make_pipe(seg.AnimateDiffSEGPipeline, dict(parts, unet=host.unet))
    ours.enable_free_noise(context_length=8, context_stride=4)
    ours.enable_free_noise_split_inference(spatial_split_size=2, temporal_split_size=2)
    steps = []
    with pytest.raises(ValueError, match="enable_free_noise_split_inference"):
        ours(**fresh(True), seg_blur_sigma=1.0, callback_on_step_end=lambda *args: steps.append(1) or {})
    assert steps == [] and no_hooks_left(ours.unet)
