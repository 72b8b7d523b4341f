"""Test-only ComfyUI nodes: a tiny random SDXL-layout model, random conditioning, and latents as an image.

Loaded by tests/test_comfyui_server.py into a real ComfyUI server (from its ``custom_nodes``), so that a whole
workflow runs end to end without any model file. The server's PYTHONPATH holds tests/ for ``comfyui_host``.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # tests/

import comfy  # noqa: E402

import comfyui_host  # noqa: E402


class TinySDXL:
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("model", "positive", "negative")
    FUNCTION = "build"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": ("INT", {"default": 0}),
                "width": ("INT", {"default": 96}),
                "height": ("INT", {"default": 64}),
            }
        }

    def build(self, seed, width, height):
        positive, negative = comfyui_host.sdxl_conditioning(seed + 1, height // 8, width // 8)
        return (comfyui_host.tiny_sdxl(comfy, seed), positive, negative)


class LatentAsImage:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "convert"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def convert(self, samples):
        latent = samples["samples"][:, :3].float()
        image = torch.sigmoid(latent / latent.abs().amax().clamp(min=1e-6) * 4)
        return (image.movedim(1, -1).contiguous(),)


NODE_CLASS_MAPPINGS = {"SEGTestTinySDXL": TinySDXL, "SEGTestLatentAsImage": LatentAsImage}
