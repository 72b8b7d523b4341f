"""``seg generate`` on a video model: an MP4 and an animated WebP that open in real decoders, with the
right frame count and size, carrying settings that ``seg info`` and ``--from`` read back."""

from __future__ import annotations

import json

import av
import torch
from PIL import Image
from test_cli_edges import seg
from test_video import wan_parts

from conftest import make_pipe
from smoothed_energy_guidance.testing import tiny_t5_encoder, tiny_t5_tokenizer


def test_seg_generate_writes_an_mp4_and_webp_with_settings(tmp_path):
    from diffusers import WanPipeline

    parts = wan_parts(text_dim=32)  # the tiny T5's width
    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(0)
    parts.update(tokenizer=tokenizer, text_encoder=tiny_t5_encoder(len(tokenizer)))
    model = tmp_path / "wan"
    make_pipe(WanPipeline, parts).save_pretrained(model)

    argv = ["--model", model, "--prompt", "a cube", "--steps", "2", "--width", "96", "--height", "64"]
    argv += ["--frames", "9", "--fps", "8", "--temporal-sigma", "1.5", "--blur-sigma", "2", "--seed", "5"]
    result = seg("generate", *argv, "--device", "cpu", "--quiet", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    mp4, webp = result.stdout.split()
    assert mp4.endswith(".mp4") and webp.endswith(".webp")

    with av.open(mp4) as container:
        decoded = [frame.to_image() for frame in container.decode(video=0)]
        record = json.loads(container.metadata["comment"])
    assert len(decoded) == 9 and decoded[0].size == (96, 64)
    with Image.open(webp) as preview:
        assert preview.n_frames == 9 and preview.size == (96, 64)
    settings = record["settings"]
    assert (settings["frames"], settings["fps"], settings["temporal_sigma"], settings["seed"]) == (9, 8, 1.5, 5)

    for path in (mp4, webp):
        info = seg("info", path)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["settings"]["temporal_sigma"] == 1.5
    again = seg("generate", "--from", mp4, "--device", "cpu", "--quiet", "--out", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    with av.open(again.stdout.split()[0]) as container:
        assert json.loads(container.metadata["comment"])["settings"] == settings

    sweep = seg(
        "sweep",
        *("--model", model, "--prompt", "a cube", "--steps", "1", "--width", "96", "--height", "64"),
        *("--frames", "5", "--x", "blur-sigma=1,inf", "--y", "temporal-sigma=0,inf"),
        *("--device", "cpu", "--quiet", "--out", tmp_path / "sweep"),
    )
    assert sweep.returncode == 0, sweep.stderr
    grid = sweep.stdout.split()[0]
    assert grid.endswith("grid.mp4")
    with av.open(grid) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        record = json.loads(container.metadata["comment"])
    assert record["sweep"] == {
        "x": "blur-sigma",
        "x_values": ["1", "inf"],
        "y": "temporal-sigma",
        "y_values": ["0", "inf"],
        "baselines": [],
    }
    assert len(frames) == 5
    label_band = frames[0][:20]
    assert (label_band > 200).mean() > 0.8 and (label_band < 80).any(), "a white band with dark label text"
    height, width = frames[0].shape[:2]
    assert height >= 22 + 2 * 64 and width >= 2 * 96  # labels on top and at left of a 2 × 2 grid
    with Image.open(grid.replace(".mp4", ".webp")) as preview:
        assert preview.n_frames == 5
    cells = sorted((tmp_path / "sweep" / "sweep" / "cells").glob("*.mp4"))
    assert len(cells) == 4 and len(list(cells[0].parent.glob("*.webp"))) == 4
    clips = []
    for cell in cells:
        with av.open(str(cell)) as container:
            clips.append([frame.to_ndarray(format="rgb24").astype(int) for frame in container.decode(video=0)])
            assert json.loads(container.metadata["comment"])["settings"]["frames"] == 5
    assert abs(clips[0][2] - clips[1][2]).mean() > 1, "the σ columns differ"


def test_the_record_holds_the_frames_made_and_the_command_says_it_rounded(tmp_path):
    from diffusers import WanPipeline

    parts = wan_parts(text_dim=32)
    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(0)
    parts.update(tokenizer=tokenizer, text_encoder=tiny_t5_encoder(len(tokenizer)))
    model = tmp_path / "wan"
    make_pipe(WanPipeline, parts).save_pretrained(model)
    argv = ["--model", model, "--prompt", "a cube", "--steps", "1", "--width", "32", "--height", "32", "--seed", "1"]
    result = seg("generate", *argv, "--frames", "8", "--device", "cpu", "--quiet", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "made 9 frames where 8 were asked for" in result.stderr
    mp4 = result.stdout.split()[0]
    with av.open(mp4) as container:
        made = sum(1 for _ in container.decode(video=0))
        record = json.loads(container.metadata["comment"])
    assert made == 9 and record["settings"]["frames"] == 9
    assert json.loads(seg("info", mp4).stdout)["settings"]["frames"] == 9
