"""The ``seg`` command on the tiny offline model: metadata round trips, sweeps, batches, errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smoothed_energy_guidance.cli import main
from smoothed_energy_guidance.cli.metadata import read_png_settings

TINY = ["--model", "tiny-random", "--steps", "2", "--width", "32", "--height", "32", "--device", "cpu", "--quiet"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def picture(path: Path, size=(32, 32), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_generate_embeds_settings_and_from_reproduces(tmp_path, capsys):
    code, out, _ = run(
        capsys,
        "generate",
        *TINY,
        "--prompt",
        "a red, shiny cube",
        "--negative-prompt",
        "blur",
        "--seed",
        5,
        "--num-images",
        2,
        "--blur-sigma",
        "inf",
        "--layers",
        "mid+up",
        "--scheduler",
        "dpm++2m-karras",
        "--out",
        tmp_path,
    )
    assert code == 0
    paths = [Path(line) for line in out.split()]
    assert [p.name for p in paths] == ["seg-5.png", "seg-6.png"]
    text, record = read_png_settings(paths[1])
    assert text.splitlines()[0] == "a red, shiny cube"
    assert text.splitlines()[1] == "Negative prompt: blur"
    params = text.splitlines()[2]
    for piece in (
        "Steps: 2",
        "Sampler: DPM++ 2M",
        "Schedule type: Karras",
        "CFG scale: 5.0",
        "Seed: 6",
        "Size: 32x32",
        "SEG scale: 3.0",
        "SEG blur sigma: inf",
        "SEG layers: mid up",
    ):
        assert piece in params
    assert record["settings"]["seed"] == 6 and record["settings"]["layers"] == ["mid", "up"]
    code, info, _ = run(capsys, "info", paths[1])
    assert code == 0 and "Seed: 6" in info and '"blur_sigma": "inf"' in info
    code, out, _ = run(capsys, "generate", "--from", paths[1], "--device", "cpu", "--quiet", "--out", tmp_path)
    again = Path(out.strip())
    assert again.name == "seg-6-1.png", "an existing file must never be overwritten"
    assert np.array_equal(pixels(again), pixels(paths[1]))
    assert not np.array_equal(pixels(paths[0]), pixels(paths[1]))


def test_command_line_options_override_from(tmp_path, capsys):
    run(capsys, "generate", *TINY, "--seed", 1, "--out", tmp_path)
    code, out, _ = run(
        capsys,
        "generate",
        "--from",
        tmp_path / "seg-1.png",
        "--seg-scale",
        0,
        "--device",
        "cpu",
        "--quiet",
        "--out",
        tmp_path / "b",
    )
    assert code == 0
    _, record = read_png_settings(out.strip())
    assert record["settings"]["seg_scale"] == 0 and record["settings"]["seed"] == 1


def test_seg_changes_the_image(tmp_path, capsys):
    run(capsys, "generate", *TINY, "--seed", 3, "--out", tmp_path / "on")
    run(capsys, "generate", *TINY, "--seed", 3, "--seg-scale", 0, "--out", tmp_path / "off")
    assert not np.array_equal(pixels(tmp_path / "on/seg-3.png"), pixels(tmp_path / "off/seg-3.png"))


def test_local_folder_img2img_inpaint_and_controlnet(tmp_path, capsys):
    from smoothed_energy_guidance.pipelines.loading import load_base_pipeline

    load_base_pipeline("tiny-random").save_pretrained(tmp_path / "model")
    init, mask = picture(tmp_path / "init.png"), picture(tmp_path / "mask.png", seed=1)
    model = ["--model", tmp_path / "model", "--steps", "4", "--device", "cpu", "--quiet", "--seed", 2]
    for extra in (["--init-image", init, "--strength", 0.5], ["--init-image", init, "--mask", mask]):
        code, out, err = run(capsys, "generate", *model, *extra, "--out", tmp_path / "o")
        assert code == 0, err
        assert Image.open(out.strip()).size == (32, 32)
    code, out, err = run(
        capsys, "generate", *model, "--controlnet", "tiny-random", "--control-image", init, "--out", tmp_path / "o"
    )
    assert code == 0, err
    _, record = read_png_settings(out.strip())
    assert record["settings"]["control_image"] == str(init)


def test_lora_option_loads_weights(tmp_path, capsys):
    import torch
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from smoothed_energy_guidance.testing import tiny_sdxl_components

    unet = tiny_sdxl_components(seed=0)["unet"]
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k"], init_lora_weights=False))
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(unet))
    lora_file = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    run(capsys, "generate", *TINY, "--seed", 4, "--out", tmp_path / "plain")
    code, out, err = run(capsys, "generate", *TINY, "--seed", 4, "--lora", f"{lora_file}:0.8", "--out", tmp_path)
    assert code == 0, err
    assert not np.array_equal(pixels(out.strip()), pixels(tmp_path / "plain/seg-4.png"))
    text, record = read_png_settings(out.strip())
    assert 'Lora: "pytorch_lora_weights:0.8"' in text and record["settings"]["loras"] == [[str(lora_file), 0.8]]


def test_sweep_writes_labelled_grid_and_cells_with_one_model_load(tmp_path, capsys, monkeypatch):
    from smoothed_energy_guidance.cli import generate as generate_module

    loads = []
    original = generate_module.load_base_pipeline
    monkeypatch.setattr(generate_module, "load_base_pipeline", lambda *a, **k: loads.append(a) or original(*a, **k))
    code, out, err = run(
        capsys,
        "sweep",
        *TINY,
        "--seed",
        0,
        "--x",
        "blur-sigma=1,inf",
        "--y",
        "seg-scale=0,3",
        "--baselines",
        "vanilla,pag",
        "--out",
        tmp_path,
    )
    assert code == 0, err
    assert len(loads) == 1
    grid = Path(out.splitlines()[0])
    cells = sorted((grid.parent / "cells").glob("*.png"))
    assert len(cells) == 8
    assert Image.open(grid).size[0] > 4 * 32 and Image.open(grid).size[1] > 2 * 32
    _, grid_record = read_png_settings(grid)
    assert grid_record["sweep"] == {
        "x": "blur-sigma",
        "x_values": ["1", "inf"],
        "baselines": ["vanilla", "pag"],
        "y": "seg-scale",
        "y_values": ["0", "3"],
    }
    records = [read_png_settings(c)[1] for c in cells]
    assert [r.get("baseline") for r in records[:2]] == ["vanilla", "pag"]
    assert [r["settings"]["blur_sigma"] for r in records[6:]] == [1.0, "inf"]
    assert [r["settings"]["seg_scale"] for r in records[6:]] == [3.0, 3.0]
    # the SEG cells at scale 3 differ from the vanilla cell of the same row
    assert not np.array_equal(pixels(cells[4]), pixels(cells[6]))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sweep", "--x", "sigma:1,2"], r"Bad axis 'sigma:1,2': write NAME=V1,V2"),
        (["sweep", "--x", "blur-sigma=1,abc"], r"blur sigma must be a number or 'inf'"),
        (["sweep", "--x", "blur-sigma=1", "--baselines", "sag"], r"Unknown baseline\(s\) sag"),
        (["generate", "--blur-sigma", "0"], None),  # argparse rejects it: exit 2 with usage
        (["generate", "--layers", "m9"], r"out of range: 'mid' has 2"),
        (["generate", "--mask", "m.png"], r"--mask needs --init-image"),
        (["generate", "--model", "./missing.safetensors"], r"was not found: no such file or folder"),
        (
            ["generate", "--model", "someone/missing-model"],
            r"no download was attempted because HF_HUB_OFFLINE=1 is set.*set HF_HUB_OFFLINE=1",
        ),
        (["generate", "--model", "not a model"], r"neither a local folder, a .safetensors file nor a hub id"),
        (["info", "nothing.png"], r"Cannot read image nothing.png: no such file"),
    ],
)
def test_errors_say_what_to_do(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = [a for a in TINY if a not in ("tiny-random", "--model")] if "--model" in argv else TINY
    if argv[0] == "info":
        base = []
    if message is None:
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, *base])
        assert exit_info.value.code == 2
        return
    code, _, err = run(capsys, *argv, *base)
    assert code == 2
    assert err.startswith(f"seg {argv[0]}: error: ")
    import re

    assert re.search(message, err), err


def test_unreadable_and_wrong_size_images(tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not a picture")
    code, _, err = run(capsys, "generate", *TINY, "--init-image", tmp_path / "notes.png", "--out", tmp_path)
    assert code == 2 and "Cannot read image" in err and "notes.png" in err
    control = picture(tmp_path / "control.png", size=(48, 40))
    code, _, err = run(
        capsys, "generate", *TINY, "--controlnet", "tiny-random", "--control-image", control, "--out", tmp_path
    )
    assert code == 2
    assert "control image" in err and "is 48x40 but the output is 32x32" in err and "--width 48 --height 40" in err
    code, _, err = run(capsys, "info", control)
    assert code == 2 and "carries no generation settings" in err


def test_pickle_checkpoints_are_refused_without_the_flag(tmp_path, capsys):
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04K\x01.")
    code, _, err = run(capsys, "generate", "--model", tmp_path / "model.ckpt", "--device", "cpu", "--out", tmp_path)
    assert code == 2 and "can run arbitrary code" in err and "--allow-pickle" in err


def _batch_items(manifest: Path) -> list[str]:
    return [json.loads(line)["item"] for line in manifest.read_text().splitlines()]


def test_batch_txt_jsonl_csv_with_a_malformed_line(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text(
        '{"prompt": "a cube", "seed": 3}\n'
        "{not json\n"
        '{"prompt": "a ball", "blur-sigma": "4", "seg_scale": 2}\n'
        '{"prompt": "x", "colour": "red"}\n'
    )
    code, out, err = run(capsys, "batch", tmp_path / "p.jsonl", *TINY, "--seed", 0, "--out", tmp_path / "j")
    assert code == 1
    assert "p.jsonl:2: skipped: not valid JSON" in err and "p.jsonl:4: skipped: Unknown setting 'colour'" in err
    records = [json.loads(line) for line in (tmp_path / "j/manifest.jsonl").read_text().splitlines()]
    assert [r["item"] for r in records] == ["item-00001", "item-00003"]
    assert records[0]["settings"]["seed"] == 3 and records[1]["settings"]["blur_sigma"] == 4.0
    assert records[1]["settings"]["seg_scale"] == 2.0
    (tmp_path / "p.csv").write_text("prompt,seed,layers\na cube,7,mid\na ball,,mid+up\n")
    code, _, err = run(capsys, "batch", tmp_path / "p.csv", *TINY, "--seed", 0, "--out", tmp_path / "c")
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "c/manifest.jsonl").read_text().splitlines()]
    assert [r["settings"]["seed"] for r in records] == [7, 0]
    assert records[1]["settings"]["layers"] == ["mid", "up"]
    (tmp_path / "p.txt").write_text("# a comment\na cube\n\na ball\n")
    code, out, _ = run(capsys, "batch", tmp_path / "p.txt", *TINY, "--out", tmp_path / "t")
    assert code == 0 and out.startswith("2 image(s) written")
    assert _batch_items(tmp_path / "t/manifest.jsonl") == ["item-00002", "item-00004"]
    code, out, _ = run(capsys, "batch", tmp_path / "p.txt", *TINY, "--out", tmp_path / "t")
    assert out.startswith("0 image(s) written"), "a rerun must skip finished items"


def _cli(*argv) -> list[str]:
    return [sys.executable, "-m", "smoothed_energy_guidance.cli", *map(str, argv)]


def test_batch_killed_mid_way_resumes_to_a_complete_unique_set(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(8)))
    out = tmp_path / "out"
    argv = _cli("batch", prompts, *[a for a in TINY if a != "2"][:2], "--steps", "12", *TINY[4:], "--out", out)
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("item-*.png"))) < 2:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = sorted(out.glob("item-*.png"))
    assert 2 <= len(finished) < 8, "the run was not killed mid-way"
    for path in finished:  # every file with a final name is a complete image with its settings
        Image.open(path).load()
        assert read_png_settings(path)[1]["item"] == path.name.split("_")[0]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _batch_items(out / "manifest.jsonl") == [f"item-{i:05d}" for i in range(1, 9)]
    assert len(list(out.glob("item-*.png"))) == 8
    assert not list(out.glob(".*.partial"))


def test_batch_shards_over_two_processes(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(5)))
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "smoothed_energy_guidance.cli",
    ]
    argv = [*launcher, "batch", str(prompts), *TINY, "--out", str(tmp_path / "out")]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MASTER_PORT": "29533", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out/manifest.jsonl").read_text().splitlines()]
    assert [r["item"] for r in records] == [f"item-{i:05d}" for i in range(1, 6)]
    assert sorted({r["process"] for r in records}) == [0, 1]
    assert result.stdout.count("image(s) written") == 2


def test_demo_writes_a_grid_at_the_measured_settings_and_explains_it(tmp_path, capsys):
    from smoothed_energy_guidance.toy.testbeds import testbed

    code, out, _ = run(capsys, "demo", "--out", tmp_path, "--quiet")
    assert code == 0
    assert "'seg-toy' model" in out and "lowest unconditional Fréchet distance" in out and "empty prompt" in out
    path = Path(out.split("Wrote ")[1].split(":")[0])
    record = read_png_settings(path)[1]
    measured = testbed("seg-toy").measured
    scale, sigma = measured.seg
    cfg, combined, combined_sigma = measured.cfg_seg
    label = "inf" if math.isinf(sigma) else f"{sigma:g}"
    combined_label = "inf" if math.isinf(combined_sigma) else f"{combined_sigma:g}"
    words = {"better": "better than", "worse": "worse than", "no difference detected": "not better than"}
    assert record["demo"] == [
        "vanilla",
        f"CFG {cfg:g}",
        f"SEG {scale:g} sigma={label} (best found; {words[measured.seg_vs_vanilla]} vanilla on fresh seeds)",
        f"SEG 3 sigma=inf (paper default; {words[measured.paper_vs_vanilla]} vanilla on fresh seeds)",
        f"CFG {cfg:g} + SEG {combined:g} sigma={combined_label} "
        f"(best found; {words[measured.cfg_seg_vs_cfg]} CFG {cfg:g} on fresh seeds)",
    ]
    assert f"scale {scale:g}" in out
    width, height = Image.open(path).size
    assert width >= 5 * 32 and height >= 4 * 32


def test_single_file_checkpoint_with_local_config(tmp_path, capsys):
    from ldm_checkpoint import sdxl_to_ldm
    from safetensors.torch import save_file

    from smoothed_energy_guidance.pipelines import load_base_pipeline

    pipe = load_base_pipeline("tiny-random")
    pipe.save_pretrained(tmp_path / "config")
    save_file(sdxl_to_ldm(pipe), tmp_path / "model.safetensors")
    run(capsys, "generate", *TINY, "--seed", 9, "--out", tmp_path / "a")
    single = ["--model", tmp_path / "model.safetensors", "--config", tmp_path / "config", *TINY[2:]]
    code, out, err = run(capsys, "generate", *single, "--seed", 9, "--out", tmp_path / "b")
    assert code == 0, err
    assert np.array_equal(pixels(out.strip()), pixels(tmp_path / "a/seg-9.png"))


@pytest.mark.parametrize("model", ["tiny-random-sd", "tiny-random-sd3", "tiny-random-flux"])
def test_generate_with_every_family(tmp_path, capsys, model):
    argv = [
        "generate",
        "--model",
        model,
        "--steps",
        "2",
        "--width",
        "32",
        "--height",
        "32",
        "--device",
        "cpu",
        "--quiet",
        "--seed",
        1,
        "--blur-sigma",
        2,
        "--out",
        tmp_path,
    ]
    if model == "tiny-random-flux":
        argv += ["--negative-prompt", "blurry", "--cfg", "3"]  # Flux: true CFG as a second pass
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    again = run(capsys, *argv[:-2], "--seg-scale", 0, "--out", tmp_path / "off")[1]
    assert not np.array_equal(pixels(out.strip()), pixels(again.strip()))


def test_family_is_read_from_folders_and_single_files(tmp_path):
    from safetensors.torch import save_file

    from smoothed_energy_guidance.pipelines import detect_family, load_base_pipeline

    load_base_pipeline("tiny-random-sd3").save_pretrained(tmp_path / "sd3")
    assert detect_family(str(tmp_path / "sd3")) == "sd3"
    assert type(load_base_pipeline(str(tmp_path / "sd3"))).__name__ == "StableDiffusion3SEGPipeline"
    markers = {
        "sd": "model.diffusion_model.input_blocks.0.0.weight",
        "sdxl": "conditioner.embedders.1.model.x",
        "sd3": "model.diffusion_model.joint_blocks.0.x",
        "flux": "double_blocks.0.img_attn.qkv.weight",
    }
    for family, key in markers.items():
        save_file({key: torch.zeros(1)}, tmp_path / f"{family}.safetensors")
        assert detect_family(str(tmp_path / f"{family}.safetensors")) == family
    save_file({"something.else": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a checkpoint of a family SEG supports"):
        detect_family(str(tmp_path / "other.safetensors"))


def test_inpaint_is_refused_for_transformer_families(tmp_path, capsys):
    init = picture(tmp_path / "i.png")
    code, _, err = run(
        capsys,
        "generate",
        "--model",
        "tiny-random-sd3",
        "--init-image",
        init,
        "--mask",
        init,
        "--device",
        "cpu",
        "--quiet",
        "--out",
        tmp_path,
    )
    assert code == 2 and "Task 'inpaint' is not available for sd3 models; available: text2img, img2img" in err


def test_offload_needs_a_gpu(tmp_path, capsys):
    code, _, err = run(capsys, "generate", *TINY, "--offload", "model", "--out", tmp_path)
    assert code == 2 and "--offload model moves weights between CPU and GPU; it needs --device cuda" in err


def test_grid_row_labels_span_lines_so_long_prompts_are_shown_whole():
    from smoothed_energy_guidance.cli.grid import LABEL_HEIGHT, labelled_grid

    cells = [[Image.new("RGB", (64, 64), "gray")] * 2] * 2
    one_line = labelled_grid(cells, ["a", "b"], ["3 shapes, front striped red square right, sand ground", "x"])
    wrapped = labelled_grid(cells, ["a", "b"], ["3 shapes\nfront striped red square right\nsand ground", "x"])
    assert wrapped.size[0] < one_line.size[0]  # the label column is as wide as the longest line
    label = np.asarray(wrapped.convert("L"))[:, : wrapped.size[0] - 2 * 64]
    inked_rows = np.flatnonzero((label < 128).any(axis=1))
    first_cell = inked_rows[inked_rows < LABEL_HEIGHT + 64]
    assert np.count_nonzero(np.diff(first_cell) > 1) >= 2  # three lines of text, separated by blank rows
