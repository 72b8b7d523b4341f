"""SEG + CFG over CFG on one GPU: full-size SDXL UNet and Flux.1 transformer configs, random weights.

Real sizes give real timings (weights are random: speed and memory do not depend on them). For each model,
dtype (fp16 / bf16) and mode (eager, or compiled with diffusers' regional
``compile_repeated_blocks(fullgraph=True)``), one CFG step and one SEG + CFG step (default layers, σ = 10) run
interleaved; the table reports medians and their ratio, and the peak CUDA memory of each. Compile time is
excluded (warm-up calls). Never a test dependency.

    python benchmarks/bench_gpu.py --write      # about 3-5 minutes on one H200-class GPU
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

from smoothed_energy_guidance.core.guidance import SegConfig
from smoothed_energy_guidance.hooks import HostStep
from smoothed_energy_guidance.pipelines.transformer import attach_seg_to_transformer
from smoothed_energy_guidance.pipelines.unet import attach_seg_to_unet
from smoothed_energy_guidance.testing import SDXL_UNET_CONFIG

# Stable Diffusion XL base 1.0's UNet config, 1024 × 1024 images (latent 128 × 128).
SDXL_UNET = SDXL_UNET_CONFIG
# FLUX.1-dev's transformer config, 1024 × 1024 images (64 × 64 tokens after 2 × 2 packing), 512 text tokens.
FLUX = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


def sdxl_inputs(rows: int, dtype: torch.dtype) -> dict:
    g = torch.Generator("cuda").manual_seed(rows)
    return dict(
        sample=torch.randn(rows, 4, 128, 128, generator=g, device="cuda", dtype=dtype),
        timestep=torch.tensor(500.0, device="cuda"),
        encoder_hidden_states=torch.randn(rows, 77, 2048, generator=g, device="cuda", dtype=dtype),
        added_cond_kwargs={
            "text_embeds": torch.randn(rows, 1280, generator=g, device="cuda", dtype=dtype),
            "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]], device="cuda").repeat(rows, 1),
        },
        return_dict=False,
    )


def flux_inputs(rows: int, dtype: torch.dtype) -> dict:
    g = torch.Generator("cuda").manual_seed(rows)
    side, text = 64, 512
    ids = torch.zeros(side, side, 3, device="cuda")
    ids[..., 1] = torch.arange(side, device="cuda")[:, None]
    ids[..., 2] = torch.arange(side, device="cuda")[None, :]
    return dict(
        hidden_states=torch.randn(rows, side * side, 64, generator=g, device="cuda", dtype=dtype),
        encoder_hidden_states=torch.randn(rows, text, 4096, generator=g, device="cuda", dtype=dtype),
        pooled_projections=torch.randn(rows, 768, generator=g, device="cuda", dtype=dtype),
        timestep=torch.full((rows,), 0.5, device="cuda", dtype=dtype),
        guidance=torch.full((rows,), 3.5, device="cuda", dtype=dtype),
        img_ids=ids.reshape(-1, 3),
        txt_ids=torch.zeros(text, 3, device="cuda"),
        return_dict=False,
    )


def build(model: str, dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        module = UNet2DConditionModel(**SDXL_UNET) if model == "SDXL UNet" else FluxTransformer2DModel(**FLUX)
    return module.to(dtype).eval()


def timed(run, rounds: int) -> tuple[float, float]:
    """Median seconds of ``rounds`` calls and the peak CUDA memory (GiB) of one."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def measure(model: str, dtype: torch.dtype, compiled: bool, rounds: int) -> dict:
    module = build(model, dtype)
    batched = model == "SDXL UNet"  # Flux's pipelines run CFG as a second call
    inputs = sdxl_inputs if batched else flux_inputs
    pair, single = inputs(2, dtype), inputs(1, dtype)

    def read_host(timestep, call) -> HostStep:
        return HostStep(cfg=batched, guidance_scale=5.0, guidance_rescale=0.0, progress=0.0)

    attach = attach_seg_to_unet if batched else attach_seg_to_transformer
    hooks = attach(module, SegConfig(blur_sigma=10.0), read_host)
    if compiled:  # regional compilation (diffusers' compile_repeated_blocks): one block compiled, reused
        module.compile_repeated_blocks(fullgraph=True)
    denoiser = module

    def cfg() -> None:
        with torch.no_grad():
            denoiser(**pair) if batched else (denoiser(**single), denoiser(**single))

    def seg_cfg() -> None:
        with torch.no_grad():
            with hooks.serving():
                denoiser(**(pair if batched else single))
            if not batched:
                denoiser(**single)  # the uncond call, untouched

    for run in (cfg, seg_cfg, cfg, seg_cfg):  # warm-up, compilation included
        run()
    cfg_time, cfg_memory = timed(cfg, rounds)
    seg_time, seg_memory = timed(seg_cfg, rounds)
    cfg_again, _ = timed(cfg, rounds)
    hooks.remove()
    torch.cuda.empty_cache()
    return dict(cfg=cfg_time, seg=seg_time, cfg_again=cfg_again, cfg_mem=cfg_memory, seg_mem=seg_memory)


def table(rows: list[tuple[str, str, str, dict]]) -> str:
    lines = [
        "| model | dtype | mode | CFG step (ms) | SEG + CFG step (ms) | ratio | CFG again (noise) | "
        "peak memory CFG / SEG + CFG (GiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, dtype, mode, r in rows:
        lines.append(
            f"| {model} | {dtype} | {mode} | {1000 * r['cfg']:.1f} | {1000 * r['seg']:.1f} | "
            f"**{r['seg'] / r['cfg']:.3f}×** | {r['cfg_again'] / r['cfg']:.3f}× | "
            f"{r['cfg_mem']:.2f} / {r['seg_mem']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--models", default="SDXL UNet,Flux.1 transformer")
    parser.add_argument("--write", action="store_true", help="store the table in benchmarks/GPU.md")
    parser.add_argument("--output", type=Path, help="where --write stores it (default benchmarks/GPU.md)")
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        for dtype_name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            for mode in ("eager", "compiled"):
                with contextlib.suppress(torch.OutOfMemoryError):
                    result = measure(model, dtype, mode == "compiled", args.rounds)
                    rows.append((model, dtype_name, mode, result))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
                    if args.write:  # after every row, so that a run cut short keeps what it measured
                        write(rows, args)
    print(table(rows))


def write(rows: list, args: argparse.Namespace) -> None:
    text = table(rows)
    device = torch.cuda.get_device_name()
    note = (
        f"\n\n- {device}, torch {torch.__version__}; medians of {args.rounds} steps after two warm-up "
        "rounds (compilation excluded), CFG and SEG + CFG interleaved; compiled: "
        "`compile_repeated_blocks(fullgraph=True)`, inductor. SEG layers: the default (`mid` for the UNet, "
        "the middle block for Flux); σ = 10.\n"
        "- SDXL: CFG batched (2 rows), SEG adds its rows after the shared prefix. Flux: CFG as two calls "
        "(as its pipelines run it), SEG joins the cond call.\n"
    )
    header = "# SEG on one GPU: full-size SDXL UNet and Flux.1 transformer, random weights\n\n"
    command = "`python benchmarks/bench_gpu.py --write`\n\n"
    (args.output or Path(__file__).with_name("GPU.md")).write_text(header + command + text + note)


if __name__ == "__main__":
    main()
