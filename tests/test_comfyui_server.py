"""End to end through ComfyUI's own server: ``main.py --cpu`` on a free local port loads this pack from
``custom_nodes``, runs an API-format workflow POSTed to ``/prompt``, and saves a PNG with the workflow in it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from comfyui_host import ROOT, SUPPORT, comfy_session, comfyui_path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(port: int, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as reply:
            return json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{path}: HTTP {error.code}: {error.read().decode()[:2000]}") from None


def workflow(seg_scale: float, prefix: str) -> dict:
    """API format: tiny model → SEG → KSampler (CFG 4) → image → SaveImage."""
    return {
        "1": {"class_type": "SEGTestTinySDXL", "inputs": {"seed": 0, "width": 104, "height": 72}},
        "2": {
            "class_type": "SmoothedEnergyGuidance",
            "inputs": {
                "model": ["1", 0],
                "scale": seg_scale,
                "blur_sigma": 2.0,
                "layers": "",
                "start_percent": 0.0,
                "end_percent": 1.0,
                "temporal_sigma": 0.0,
            },
        },
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 104, "height": 72, "batch_size": 1}},
        "4": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["2", 0],
                "positive": ["1", 1],
                "negative": ["1", 2],
                "latent_image": ["3", 0],
                "seed": 5,
                "steps": 3,
                "cfg": 4.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "5": {"class_type": "SEGTestLatentAsImage", "inputs": {"samples": ["4", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}},
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with comfy_session():  # skips without ComfyUI or its requirements; tells whether the stand-in is needed
        stand_in = str(SUPPORT) in sys.path
    base = tmp_path_factory.mktemp("comfyui")
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir()
    clone = custom_nodes / "smoothed-energy-guidance"  # what a user's `git clone` into custom_nodes gives
    clone.mkdir()
    shutil.copy(ROOT / "__init__.py", clone / "__init__.py")
    shutil.copy(ROOT / "pyproject.toml", clone / "pyproject.toml")
    (clone / "src").symlink_to(ROOT / "src")
    shutil.copytree(SUPPORT / "seg_test_nodes", custom_nodes / "seg_test_nodes")
    (base / "web").mkdir()
    port = free_port()
    env = dict(os.environ)
    extra_paths = [str(SUPPORT)] if stand_in else []  # the torchvision stand-in, where no torchvision is installed
    env["PYTHONPATH"] = os.pathsep.join([*extra_paths, str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--front-end-root",
        str(base / "web"),
        "--disable-auto-launch",
    ]
    log = open(base / "server.log", "w")  # noqa: SIM115 - closed in the fixture's teardown
    process = subprocess.Popen(command, cwd=comfyui_path(), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                request(port, "/system_stats")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not start:\n{(base / 'server.log').read_text()[-3000:]}")
                time.sleep(1)
        yield port, base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def run_prompt(port: int, prompt: dict) -> dict:
    ui_workflow = {"note": "the UI's workflow, embedded by SaveImage as ComfyUI does", "nodes": len(prompt)}
    queued = request(port, "/prompt", {"prompt": prompt, "extra_data": {"extra_pnginfo": {"workflow": ui_workflow}}})
    prompt_id = queued["prompt_id"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        history = request(port, f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.5)
    raise AssertionError(f"the prompt did not finish: {request(port, f'/history/{prompt_id}')}")


def saved_image(base: Path, record: dict):
    from PIL import Image

    (image,) = record["outputs"]["6"]["images"]
    return Image.open(base / "output" / image.get("subfolder", "") / image["filename"])


def test_the_server_lists_the_node_and_runs_a_workflow_with_it(server):
    import numpy as np

    port, base = server
    info = request(port, "/object_info/SmoothedEnergyGuidance")["SmoothedEnergyGuidance"]
    assert info["display_name"] == "Smoothed Energy Guidance (SEG)"
    assert list(info["input"]["required"]) == [
        "model",
        "scale",
        "blur_sigma",
        "layers",
        "start_percent",
        "end_percent",
        "temporal_sigma",
    ]
    with_seg = run_prompt(port, workflow(3.0, "seg"))
    without = run_prompt(port, workflow(0.0, "plain"))
    for record in (with_seg, without):
        assert record["status"]["status_str"] == "success", record["status"]
    image = saved_image(base, with_seg)
    prompt = json.loads(image.text["prompt"])
    assert prompt["2"]["class_type"] == "SmoothedEnergyGuidance" and prompt["2"]["inputs"]["scale"] == 3.0
    assert json.loads(image.text["workflow"])["nodes"] == 6
    difference = np.abs(np.asarray(image, dtype=float) - np.asarray(saved_image(base, without), dtype=float))
    assert difference.max() > 0  # SEG changed the picture


MODEL_FILE_INPUTS = {"ckpt_name", "unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name"}


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "example_workflows").glob("*.json")))
def test_example_workflows_are_valid_for_comfyui_but_for_the_model_files(server, example):
    """Every node and input of the shipped examples is one ComfyUI knows; only the model files are missing here."""
    port, _ = server
    prompt = json.loads((ROOT / "example_workflows" / example).read_text())
    assert any(node["class_type"] == "SmoothedEnergyGuidance" for node in prompt.values())
    with pytest.raises(AssertionError, match="HTTP 400") as refused:
        request(port, "/prompt", {"prompt": prompt})
    reply = json.loads(str(refused.value).split("HTTP 400: ", 1)[1])
    problems = [
        (node_id, error["type"], error["extra_info"].get("input_name"))
        for node_id, node in reply["node_errors"].items()
        for error in node["errors"]
    ]
    assert problems, reply
    for node_id, kind, input_name in problems:
        assert kind == "value_not_in_list" and input_name in MODEL_FILE_INPUTS, (node_id, kind, input_name, reply)
