"""The real ``seg`` command, in subprocesses, at the edges users hit: bad batch lines, crafted PNGs,
resume after edits, the pickle gate by content, negative scales."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from smoothed_energy_guidance.cli.metadata import JSON_KEY

SEG = str(Path(sys.executable).with_name("seg"))
TINY = ["--model", "tiny-random", "--steps", "2", "--width", "32", "--height", "32", "--device", "cpu", "--quiet"]
PICKLE_BYTES = pickle.dumps({"state_dict": {}})


def seg(*argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([SEG, *map(str, argv)], capture_output=True, text=True, env=env, timeout=600)


def seg_many(commands: list[list], env=None) -> list[subprocess.CompletedProcess]:
    """Several ``seg`` runs side by side (most of each is start-up)."""
    processes = [
        subprocess.Popen([SEG, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for argv in commands
    ]
    results = []
    for argv, process in zip(commands, processes, strict=True):
        out, err = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(argv, process.returncode, out, err))
    return results


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def assert_one_clear_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_batch_lines_are_reported_skipped_and_fail_the_run_at_the_end(tmp_path):
    (tmp_path / "p.jsonl").write_text(
        '{"prompt": "a cube"}\n'
        '{"prompt": "a ball", "seed": 1.5}\n'
        '{"prompt": "a cone", "steps": 2.5}\n'
        '{"prompt": "a ring", "seg_scale": -2}\n'
        '{"prompt": "a disc", "seed": 4}\n'
    )
    (tmp_path / "p.csv").write_text("prompt,seed\na cube,1\na ball,2,surplus\na cone,x\na disc,4\n")
    jsonl, csv_run = seg_many(
        [
            ["batch", tmp_path / "p.jsonl", *TINY, "--out", tmp_path / "j"],
            ["batch", tmp_path / "p.csv", *TINY, "--out", tmp_path / "c"],
        ]
    )
    assert jsonl.returncode == 1, jsonl.stderr
    assert "Traceback" not in jsonl.stderr
    for line, reason in [(2, "seed must be a whole number"), (3, "steps must be a whole number"), (4, "seg-scale")]:
        assert f"p.jsonl:{line}: skipped: {reason}" in jsonl.stderr, jsonl.stderr
    assert "3 line(s) of p.jsonl skipped" in jsonl.stderr
    assert [r["line"] for r in manifest(tmp_path / "j")] == [1, 5]
    assert csv_run.returncode == 1 and "Traceback" not in csv_run.stderr, csv_run.stderr
    assert "p.csv:3: skipped: 1 more cell(s) than the header has columns" in csv_run.stderr
    assert "p.csv:4: skipped: Bad value for seed" in csv_run.stderr
    assert [r["line"] for r in manifest(tmp_path / "c")] == [2, 5]


def crafted_png(path: Path, record: object) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text(JSON_KEY, record if isinstance(record, str) else json.dumps(record))
    Image.new("RGB", (32, 32)).save(path, pnginfo=info)
    return path


def test_crafted_pngs_give_one_clear_error_and_never_switch_on_safety_settings(tmp_path):
    pickled = tmp_path / "evil.safetensors"
    pickled.write_bytes(PICKLE_BYTES)
    good = {"prompt": "a cube", "model": "tiny-random", "steps": 2, "width": 32, "height": 32}
    cases = {
        "not-json.png": ("{oops", "not valid JSON"),
        "list.png": ([1, 2], "not a JSON object"),
        "no-settings.png": ({"version": "0.1.0"}, "has no 'settings' object"),
        "settings-list.png": ({"settings": ["a"]}, "has no 'settings' object"),
        "steps-text.png": ({"settings": {**good, "steps": "3"}}, "steps must be a whole number"),
        "sigma-list.png": ({"settings": {**good, "blur_sigma": [1]}}, "blur sigma must be a number"),
        "loras.png": ({"settings": {**good, "loras": [["a", "b", "c"]]}}, "loras must be a list of [path, weight]"),
        "allow-pickle.png": ({"settings": {**good, "allow_pickle": True}}, "Unknown setting(s) allow_pickle"),
        "pickle-model.png": (  # the record tries to switch the gate off and to load a pickle
            {"allow_pickle": True, "settings": {**good, "model": str(pickled)}},
            "evil.safetensors is not in safetensors format",
        ),
    }
    runs = seg_many(
        [
            [
                "generate",
                "--from",
                crafted_png(tmp_path / name, record),
                "--device",
                "cpu",
                "--quiet",
                "--out",
                tmp_path,
            ]
            for name, (record, _) in cases.items()
        ]
    )
    for (name, (_, message)), result in zip(cases.items(), runs, strict=True):
        assert_one_clear_line(result, message)
        assert name in result.stderr or "pickle-model" in name
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(cases)  # nothing generated


def test_resume_redoes_lines_whose_settings_changed_and_overwrite_redoes_all(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cube\na ball\n")
    out = tmp_path / "out"
    first = seg("batch", prompts, *TINY, "--out", out)
    assert first.returncode == 0 and first.stdout.startswith("2 image(s) written"), first.stderr
    kept = (out / "item-00001_0.png").stat().st_mtime_ns
    prompts.write_text("a cube\na red ball\n")  # line 2 edited
    second = seg("batch", prompts, *TINY, "--out", out)
    assert second.stdout.startswith("1 image(s) written"), second.stdout
    records = manifest(out)
    assert [r["settings"]["prompt"] for r in records] == ["a cube", "a red ball"]
    assert [r.get("redone", False) for r in records] == [False, True]
    assert (out / "item-00001_0.png").stat().st_mtime_ns == kept
    again = seg("batch", prompts, *TINY, "--cfg", "3", "--out", out)  # changed settings: all redone
    assert again.stdout.startswith("2 image(s) written"), again.stdout
    assert seg("batch", prompts, *TINY, "--cfg", "3", "--out", out).stdout.startswith("0 image(s) written")
    forced = seg("batch", prompts, *TINY, "--cfg", "3", "--out", out, "--overwrite")
    assert forced.stdout.startswith("2 image(s) written"), forced.stdout
    assert all(r["redone"] for r in manifest(out))


def _pickle_only_folder(folder: Path) -> Path:
    """A diffusers folder of the tiny model whose every weight file is a pickle (``.bin``)."""
    import torch
    from safetensors.torch import load_file

    from smoothed_energy_guidance.pipelines import load_base_pipeline

    load_base_pipeline("tiny-random").save_pretrained(folder, safe_serialization=False)
    for weights in folder.rglob("*.safetensors"):  # transformers writes safetensors regardless
        torch.save(load_file(weights), weights.with_name("pytorch_model.bin"))
        weights.unlink()
    assert not list(folder.rglob("*.safetensors")) and list(folder.rglob("*.bin"))
    return folder


def _fake_hub_cache(cache: Path, repo: str, source: Path) -> None:
    """A Hugging Face cache holding ``repo`` at one snapshot, as a download would leave it."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.parent.mkdir(parents=True)
    os.rename(source, snapshot)


def test_pickle_gate_decides_by_content_for_every_way_a_model_arrives(tmp_path):
    for name in ("evil.pkl", "evil", "evil.safetensors", "evil.ckpt"):
        (tmp_path / name).write_bytes(PICKLE_BYTES)
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(PICKLE_BYTES)
    folder = _pickle_only_folder(tmp_path / "folder")
    hub = tmp_path / "hub"
    _fake_hub_cache(hub, "someone/tiny-pickle", _pickle_only_folder(tmp_path / "hub-source"))
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    argv = ["--device", "cpu", "--steps", "2", "--quiet", "--out", tmp_path / "o"]
    models = ["evil.pkl", "evil", "evil.safetensors", "evil.ckpt"]
    runs = seg_many(
        [["generate", "--model", tmp_path / name, *argv] for name in models]
        + [
            ["generate", "--model", folder, *argv],
            ["generate", "--model", "someone/tiny-pickle", *argv],
            ["generate", *TINY, "--lora", lora, "--out", tmp_path / "o"],
        ],
        env=env,
    )
    for result in runs:
        assert_one_clear_line(result, "not in safetensors format", "--allow-pickle")
    assert "folder/text_encoder (its weights, pytorch_model.bin" in runs[4].stderr
    assert "someone/tiny-pickle/text_encoder (its weights, pytorch_model.bin" in runs[5].stderr
    assert "LoRA file lora.safetensors" in runs[6].stderr
    allowed = seg("generate", "--model", folder, "--allow-pickle", *argv, "--width", "32", "--height", "32")
    assert allowed.returncode == 0, allowed.stderr


def test_negative_seg_scale_is_refused_everywhere(tmp_path):
    import smoothed_energy_guidance as seg_api

    with pytest.raises(ValueError, match="seg_scale must be >= 0.*anti-guidance"):
        seg_api.SegConfig(scale=-1.0)
    result = seg("generate", *TINY, "--seg-scale", "-1", "--out", tmp_path)
    assert_one_clear_line(result, "seg-scale must be a finite number >= 0")
    assert not list(tmp_path.glob("*.png"))


def test_info_without_an_image_names_both_routes():
    result = seg("info")
    assert result.returncode == 0, result.stderr
    assert "SEG pipeline classes, seg.enable_seg" in result.stdout and "  sdxl: text2img, img2img" in result.stdout
    assert "Modular Diffusers guider, seg.SmoothedEnergyGuidance" in result.stdout
    assert "  Qwen-Image" in result.stdout and "  Flux.2" in result.stdout
