"""SEG as a Modular Diffusers guider: how exact (ours and diffusers' own) and what it costs.

1. Exactness, on the tiny modular SDXL pipeline of the tests (random weights, fp32, CPU): the final
   latents with plain CFG, diffusers' ``SmoothedEnergyGuidance``, ours, and the exact SEG reference
   (``tests/reference.py``, written from DESIGN.md §2), as max |difference| between them.
2. Cost, through the modular SDXL pipeline whose UNet is the benchmark model of DESIGN.md §6 (SDXL's
   UNet at quarter width, latent 64×64), with text encoders just wide enough for it: whole pipeline
   calls (``output="latents"``), configurations interleaved, medians, ratios against plain CFG.

    python benchmarks/bench_guider.py --rounds 5 --steps 3 --write
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
warnings.filterwarnings("ignore", message="Guiders are currently an experimental feature")

from bench_step import BENCH_UNET  # noqa: E402

import smoothed_energy_guidance as seg  # noqa: E402
from reference import reference_seg  # noqa: E402
from smoothed_energy_guidance import testing as tiny  # noqa: E402

RESULTS = HERE / "GUIDER.md"


def modular_sdxl(parts: dict, guider) -> object:
    from diffusers.modular_pipelines import StableDiffusionXLAutoBlocks

    pipe = StableDiffusionXLAutoBlocks().init_pipeline()
    pipe.update_components(**parts, guider=guider)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def exactness() -> list[tuple[str, float, float]]:
    """(guider, max |x − plain CFG|, max |x − exact SEG|) on the tiny modular SDXL pipeline."""
    from diffusers import ClassifierFreeGuidance, StableDiffusionXLPipeline
    from diffusers.guiders import SmoothedEnergyGuidance as DiffusersSEG

    parts = tiny.tiny_sdxl_components(seed=0)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    call = dict(prompt="a cube", num_inference_steps=4, output="latents")
    settings = dict(guidance_scale=5.0, seg_guidance_scale=3.0, seg_blur_sigma=1.0)
    guiders = {
        "plain CFG (ClassifierFreeGuidance)": ClassifierFreeGuidance(guidance_scale=5.0),
        "diffusers SmoothedEnergyGuidance": DiffusersSEG(**settings, seg_guidance_layers=[0]),
        "smoothed_energy_guidance.SmoothedEnergyGuidance": seg.SmoothedEnergyGuidance(**settings),
    }
    latents = {name: modular_sdxl(parts, guider)(**call, latents=noise.clone()) for name, guider in guiders.items()}
    host = StableDiffusionXLPipeline(**parts)
    host.set_progress_bar_config(disable=True)
    mid = [name for name, _ in host.unet.named_modules() if name.startswith("mid_block") and name.endswith("attn1")]
    with reference_seg(host.unet, mid, 1.0, 3.0, 5.0, True):
        exact = host("a cube", num_inference_steps=4, latents=noise.clone(), guidance_scale=5.0, output_type="latent")
    cfg = latents["plain CFG (ClassifierFreeGuidance)"]
    return [(name, float((x - cfg).abs().max()), float((x - exact.images).abs().max())) for name, x in latents.items()]


def bench_parts() -> dict:
    """Tiny text encoders and VAE around the benchmark UNet (cross-attention 512 = 256 + 256)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    parts = tiny.tiny_sdxl_components(seed=0)
    torch.manual_seed(0)
    parts["unet"] = UNet2DConditionModel(**BENCH_UNET).eval()
    vocab = len(parts["tokenizer"])
    first = tiny._text_config(vocab, 256)
    second = tiny._text_config(vocab, 256)
    second.projection_dim = BENCH_UNET["projection_class_embeddings_input_dim"] - 6 * 64
    parts["text_encoder"] = CLIPTextModel(first).eval()
    parts["text_encoder_2"] = CLIPTextModelWithProjection(second).eval()
    return parts


def cost(rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per pipeline call for each guider configuration, interleaved."""
    from diffusers import ClassifierFreeGuidance
    from diffusers.guiders import SmoothedEnergyGuidance as DiffusersSEG

    parts = bench_parts()
    configs = {
        "CFG": ClassifierFreeGuidance(guidance_scale=5.0),
        "SEG + CFG (ours)": seg.SmoothedEnergyGuidance(guidance_scale=5.0, blur_sigma=10.0),
        "SEG + CFG (ours), outside its window": seg.SmoothedEnergyGuidance(
            guidance_scale=5.0, blur_sigma=10.0, seg_guidance_start=0.99
        ),
        "SEG + CFG (ours), scale 0": seg.SmoothedEnergyGuidance(guidance_scale=5.0, scale=0.0),
        "diffusers SmoothedEnergyGuidance (3 passes, no blur)": DiffusersSEG(
            guidance_scale=5.0, seg_guidance_scale=3.0, seg_guidance_layers=[0]
        ),
        "CFG again (noise floor)": ClassifierFreeGuidance(guidance_scale=5.0),
    }
    pipes = {name: modular_sdxl(parts, guider) for name, guider in configs.items()}
    noise = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in configs}
    for round_index in range(rounds + 1):
        for name, pipe in pipes.items():
            start = time.perf_counter()
            pipe(prompt="a cube", num_inference_steps=steps, latents=noise.clone(), output="latents")
            if round_index:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def table(exact: list[tuple[str, float, float]], seconds: dict[str, float], rounds: int, steps: int) -> str:
    lines = [
        "# SEG as a Modular Diffusers guider: exactness and cost",
        "",
        "`python benchmarks/bench_guider.py --rounds 5 --steps 3 --write`. diffusers "
        f"{__import__('diffusers').__version__}, torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, fp32, CPU.",
        "",
        "## Exactness (tiny modular SDXL pipeline, 4 steps, g = 5, s = 3, σ = 1, mid layers)",
        "",
        "| guider | max \\|x − plain CFG\\| | max \\|x − exact SEG reference\\| |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {to_cfg:.3g} | {to_exact:.3g} |" for name, to_cfg, to_exact in exact]
    cfg = seconds["CFG"]
    lines += [
        "",
        f"## Cost (benchmark UNet of DESIGN.md §6 in the modular SDXL pipeline, latent 64×64, {steps} steps "
        f"per call, median of {rounds} interleaved rounds after a warm-up)",
        "",
        "| guider | median call (s) | ratio to CFG |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {value:.2f} | **{value / cfg:.3f}×** |" for name, value in seconds.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"write the tables to {RESULTS.name}")
    args = parser.parse_args()
    text = table(exactness(), cost(args.rounds, args.steps), args.rounds, args.steps)
    print(text)
    if args.write:
        RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
