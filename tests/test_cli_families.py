"""``seg generate`` finds every family from the model itself, and runs the newer ones end to end."""

from __future__ import annotations

import json
import sys

import pytest
from PIL import Image
from test_cli_edges import seg
from test_dit_families import auraflow_parts
from test_flux_variants import chroma_parts, flux_parts

from conftest import make_pipe
from smoothed_energy_guidance.pipelines import FAMILY_TASKS, detect_family

# diffusers' class name in model_index.json → our family and the SEG class its models load as
CLASS_NAMES = {
    "FluxFillPipeline": ("flux-fill", "FluxFillSEGPipeline"),
    "FluxKontextPipeline": ("flux-kontext", "FluxKontextSEGPipeline"),
    "FluxPipeline": ("flux", "FluxSEGPipeline"),
    "ChromaPipeline": ("chroma", "ChromaSEGPipeline"),
    "QwenImagePipeline": ("qwen-image", "QwenImageSEGPipeline"),
    "QwenImageEditPipeline": ("qwen-image-edit", "QwenImageEditSEGPipeline"),
    "KolorsPipeline": ("kolors", "KolorsSEGPipeline"),
    "PixArtAlphaPipeline": ("pixart-alpha", "PixArtAlphaSEGPipeline"),
    "PixArtSigmaPipeline": ("pixart-sigma", "PixArtSigmaSEGPipeline"),
    "HunyuanDiTPipeline": ("hunyuandit", "HunyuanDiTSEGPipeline"),
    "SanaPipeline": ("sana", "SanaSEGPipeline"),
    "AuraFlowPipeline": ("auraflow", "AuraFlowSEGPipeline"),
    "StableDiffusion3ControlNetPipeline": ("sd3", "StableDiffusion3SEGPipeline"),
    "WanPipeline": ("wan", "WanSEGPipeline"),
    "WanImageToVideoPipeline": ("wan-i2v", "WanSEGImageToVideoPipeline"),
    "CogVideoXPipeline": ("cogvideox", "CogVideoXSEGPipeline"),
    "CogVideoXImageToVideoPipeline": ("cogvideox-i2v", "CogVideoXSEGImageToVideoPipeline"),
    "LTXPipeline": ("ltx-video", "LTXSEGPipeline"),
    "HunyuanVideoPipeline": ("hunyuanvideo", "HunyuanVideoSEGPipeline"),
    "MochiPipeline": ("mochi", "MochiSEGPipeline"),
}


@pytest.mark.parametrize("class_name", list(CLASS_NAMES))
def test_family_is_read_from_the_pipeline_folder(tmp_path, class_name):
    from smoothed_energy_guidance.pipelines.loading import base_task

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    family, seg_class = CLASS_NAMES[class_name]
    assert detect_family(str(tmp_path)) == family
    assert FAMILY_TASKS[family][base_task(family)].__name__ == seg_class


@pytest.mark.parametrize(
    "class_name", ["Flux2Pipeline", "SanaSprintPipeline", "LTXConditionPipeline", "WanVACEPipeline"]
)
def test_families_seg_does_not_run_are_refused_by_name(tmp_path, class_name):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    with pytest.raises(ValueError, match=f"holds a {class_name} pipeline"):
        detect_family(str(tmp_path))


def _saved(tmp_path, name, cls, parts):
    folder = tmp_path / name
    make_pipe(cls, parts).save_pretrained(folder)
    return folder


def test_seg_generate_runs_chroma_kontext_and_auraflow_folders(tmp_path):
    """Chroma (CFG as a second call: --cfg is its guidance scale), Kontext and AuraFlow (batched CFG, its text
    from a T5 encoder), through the real command.

    Kontext with --init-image resizes its reference image to about a megapixel, as diffusers' pipeline
    does; that path is checked through the API (test_flux_variants), and here only its refusal of a mask.
    """
    from diffusers import AuraFlowPipeline, ChromaPipeline, FluxKontextPipeline

    from smoothed_energy_guidance.testing import tiny_t5_encoder, tiny_t5_tokenizer

    chroma = _saved(tmp_path, "chroma", ChromaPipeline, chroma_parts())
    tokenizer = tiny_t5_tokenizer()
    auraflow_text = dict(tokenizer=tokenizer, text_encoder=tiny_t5_encoder(len(tokenizer)))
    auraflow = _saved(tmp_path, "auraflow", AuraFlowPipeline, {**auraflow_parts(), **auraflow_text})
    kontext = _saved(tmp_path, "kontext", FluxKontextPipeline, flux_parts())
    init = tmp_path / "init.png"
    Image.effect_noise((48, 32), 60).convert("RGB").save(init)
    common = ["--prompt", "a cube", "--steps", "2", "--device", "cpu", "--quiet", "--blur-sigma", "2"]
    size = ["--width", "48", "--height", "32"]
    runs = {
        "chroma": seg(
            "generate",
            "--model",
            chroma,
            "--cfg",
            "4",
            "--negative-prompt",
            "blur",
            *size,
            "--out",
            tmp_path / "a",
            *common,
        ),
        "kontext": seg("generate", "--model", kontext, *size, "--out", tmp_path / "b", *common),
        "auraflow": seg("generate", "--model", auraflow, "--cfg", "4", *size, "--out", tmp_path / "d", *common),
        "kontext-inpaint": seg(
            "generate", "--model", kontext, "--init-image", init, "--mask", init, "--out", tmp_path / "c", *common
        ),
    }
    for name in ("chroma", "kontext", "auraflow"):
        assert runs[name].returncode == 0, runs[name].stderr
        written = [line for line in runs[name].stdout.splitlines() if line.endswith(".png")]
        assert written and Image.open(written[0]).size == (48, 32)
    refused = runs["kontext-inpaint"]
    assert refused.returncode != 0
    assert "Task 'inpaint' is not available for flux-kontext models; available: text2img, img2img" in refused.stderr


def test_seg_info_lists_every_family():
    result = seg("info")
    assert result.returncode == 0, result.stderr
    for family in FAMILY_TASKS:
        assert f"{family}:" in result.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
