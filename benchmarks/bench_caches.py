"""Cost of SEG on top of each diffusers cache method, side by side: CFG + cache against CFG + cache + SEG.

A Flux.1-layout pipeline (the tests' tiny text encoders and VAE; a transformer of width 256 with 4 double- and
8 single-stream blocks, random weights, fp32, CPU), 256 × 256 pixels (16 × 16 tokens), 4 steps, true CFG 4 with
a negative prompt, latents out. For each cache method, the run without SEG and the run with SEG (σ = 2, the
default layer) are interleaved in every round; the ratio is of their medians. With a cache on, SEG's perturbed
prediction is a call of its own in its own cache context, so the cache skips in it as it does in the cond and
uncond calls: the ratio is about 1.5 (three calls instead of two) times what the cache saves or costs there.

    python benchmarks/bench_caches.py --rounds 3 --write
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

import smoothed_energy_guidance as seg
from smoothed_energy_guidance.testing import diffusers_cache_configs, tiny_flux_components

STEPS, SIZE = 4, 256


def pipeline():
    from diffusers import FluxTransformer2DModel

    components = tiny_flux_components(seed=0)
    torch.manual_seed(0)
    components["transformer"] = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        out_channels=16,
        num_layers=4,
        num_single_layers=8,
        attention_head_dim=64,
        num_attention_heads=4,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(16, 24, 24),
    ).eval()
    pipe = seg.FluxSEGPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


NAMES = {
    "first-block-cache": "First Block Cache (threshold 0.2)",
    "taylorseer": "TaylorSeer (interval 2)",
    "pyramid-attention-broadcast": "Pyramid Attention Broadcast (skip range 2)",
    "magcache": "MagCache (threshold 0.2)",
    "fastercache": "FasterCache (skip range 2)",
}


def cache_configs(pipe) -> dict:
    configs = diffusers_cache_configs(lambda: pipe.current_timestep, STEPS, threshold=0.2)
    return {"no cache": None, **{NAMES[key]: config for key, config in configs.items()}}


def timed(pipe, config, seg_scale: float) -> float:
    if config is not None:
        pipe.transformer.enable_cache(config)
    try:
        start = time.perf_counter()
        with torch.no_grad():
            pipe(
                "a cube",
                negative_prompt="blur",
                true_cfg_scale=4.0,
                num_inference_steps=STEPS,
                height=SIZE,
                width=SIZE,
                max_sequence_length=8,
                output_type="latent",
                seg_scale=seg_scale,
                seg_blur_sigma=2.0,
                generator=torch.Generator().manual_seed(0),
            )
        return time.perf_counter() - start
    finally:
        if config is not None:
            pipe.transformer.disable_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write benchmarks/CACHES.md")
    args = parser.parse_args()
    pipe = pipeline()
    lines = [
        "| cache method | CFG + cache (s) | CFG + cache + SEG (s) | SEG's ratio | against CFG without a cache |",
        "|---|---|---|---|---|",
    ]
    baseline = None
    for name, config in cache_configs(pipe).items():
        timed(pipe, config, 0.0), timed(pipe, config, 3.0)  # warm-up
        plain, with_seg = [], []
        for _ in range(args.rounds):
            plain.append(timed(pipe, config, 0.0))
            with_seg.append(timed(pipe, config, 3.0))
        plain_s, seg_s = statistics.median(plain), statistics.median(with_seg)
        baseline = plain_s if baseline is None else baseline
        lines.append(
            f"| {name} | {plain_s:.2f} | {seg_s:.2f} | **{seg_s / plain_s:.3f}×** | "
            f"{plain_s / baseline:.3f}× / {seg_s / baseline:.3f}× |"
        )
        print(lines[-1], flush=True)
    header = [
        "# SEG on top of diffusers' cache methods, measured side by side",
        "",
        f"`python benchmarks/bench_caches.py --rounds {args.rounds} --write` on "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}: "
        f"a Flux.1-layout pipeline (width 256, 4 + 8 blocks, random weights, fp32, CPU), {SIZE} × {SIZE}, {STEPS} "
        "steps, true CFG 4. SEG's ratio: CFG + cache + SEG over CFG + cache, medians of interleaved runs; the last "
        "column puts both against CFG without a cache. Random weights make the caches' skip decisions arbitrary "
        "(thresholds are not calibrated), so read the ratios, not what each cache saves.",
        "",
    ]
    table = "\n".join(header + lines) + "\n"
    print(table)
    if args.write:
        (Path(__file__).parent / "CACHES.md").write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
