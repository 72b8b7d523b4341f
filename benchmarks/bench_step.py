"""Cost of one SEG denoising step against plain and CFG steps, measured side by side.

Model: SDXL's UNet config at quarter width (DESIGN.md §6), random weights, latent 64×64, CPU, fp32.
Configurations run interleaved in one process, median of ``--rounds`` steps each; peak memory comes
from one fresh process per configuration. ``--write`` stores the table in benchmarks/RESULTS.md.

    python benchmarks/bench_step.py --rounds 7 --write
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from smoothed_energy_guidance.core.blur import blur_queries
from smoothed_energy_guidance.core.guidance import SegConfig
from smoothed_energy_guidance.hooks import HostStep
from smoothed_energy_guidance.pipelines.unet import attach_seg_to_unet
from smoothed_energy_guidance.testing import SDXL_UNET_CONFIG

# SDXL's UNet at quarter width (DESIGN.md §6)
BENCH_UNET = {
    **SDXL_UNET_CONFIG,
    "sample_size": 64,
    "block_out_channels": (80, 160, 320),
    "cross_attention_dim": 512,
    "addition_time_embed_dim": 64,
    "projection_class_embeddings_input_dim": 704,
    "norm_num_groups": 16,
}
LATENT = 64
TEXT_TOKENS = 77
POOLED = 704 - 6 * 64

# name → (host rows, CFG on, SEG config or None, share prefix)
CASES = {
    "plain": (1, False, None, True),
    "cfg": (2, True, None, True),
    "seg": (1, False, SegConfig(blur_sigma=10.0), True),
    "seg+cfg": (2, True, SegConfig(blur_sigma=10.0), True),
    "seg+cfg unshared": (2, True, SegConfig(blur_sigma=10.0), False),
    "seg+cfg inactive": (2, True, SegConfig(blur_sigma=10.0, start=0.5), True),
    "seg+cfg scale 0": (2, True, SegConfig(scale=0.0), True),
    "cfg again": (2, True, None, True),  # the same as "cfg": shows the harness's noise floor
    # the same UNet compiled by inductor (compile time excluded: the warm-up runs compile)
    "cfg compiled": (2, True, None, True),
    "seg+cfg compiled": (2, True, SegConfig(blur_sigma=10.0), True),
}
COMPILED = ("cfg compiled", "seg+cfg compiled")


def build_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**BENCH_UNET).eval()


def inputs(rows: int) -> tuple[tuple, dict]:
    generator = torch.Generator().manual_seed(rows)
    sample = torch.randn(rows, 4, LATENT, LATENT, generator=generator)
    kwargs = {
        "encoder_hidden_states": torch.randn(rows, TEXT_TOKENS, 512, generator=generator),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(rows, POOLED, generator=generator),
            "time_ids": torch.tensor([[512.0, 512.0, 0.0, 0.0, 512.0, 512.0]]).repeat(rows, 1),
        },
        "return_dict": False,
    }
    return (sample, torch.tensor(500.0)), kwargs


def step_runner(unet, case: str):
    rows, cfg, config, share = CASES[case]
    args, kwargs = inputs(rows)
    progress = 0.0  # the inactive case sits before its window

    def read_host(timestep, call) -> HostStep:
        return HostStep(cfg=cfg, guidance_scale=5.0, guidance_rescale=0.0, progress=progress)

    def run() -> float:
        hooks = attach_seg_to_unet(unet, config, read_host, share) if config else None
        try:
            start = time.perf_counter()
            with torch.no_grad(), hooks.serving() if hooks else contextlib.nullcontext():
                unet(*args, **kwargs)
            return time.perf_counter() - start
        finally:
            if hooks:
                hooks.remove()

    return run


def post_fork_flop_share(unet) -> float:
    """Share of a batch-1 pass's FLOPs from the mid block on (the part SEG 'mid' repeats)."""
    args, kwargs = inputs(1)
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        unet(*args, **kwargs)
    by_module = counter.get_flop_counts()
    total = sum(by_module["Global"].values())
    root = type(unet).__name__ + "."
    repeated = re.compile(r"^(mid_block|up_blocks\.\d+|conv_norm_out|conv_out)$")
    after = sum(sum(counts.values()) for name, counts in by_module.items() if repeated.match(name.removeprefix(root)))
    return after / total


def blur_seconds(repeats: int = 20) -> float:
    """Blur of the perturbed rows in the 10 mid layers of one step (grid 16×16, 320 channels)."""
    q = torch.randn(1, 16 * 16, 320)
    blur_queries(q, (16, 16), 10.0)
    start = time.perf_counter()
    for _ in range(repeats):
        for _ in range(10):
            blur_queries(q, (16, 16), 10.0)
    return (time.perf_counter() - start) / repeats


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_step_memory(case: str) -> float:
    """Peak RSS growth (MB) over one step: Linux's high-water mark, reset just before the step."""
    unet = build_unet()
    run = step_runner(unet, case)
    run()  # first-call allocations (kernels, caches) are not the step's
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    run()
    return (_status_kb("VmHWM") - before) / 1024


def peak_memory_mb(case: str) -> float:
    """Peak step memory of ``case``, measured in a fresh process."""
    code = (
        "import sys, json; sys.path.insert(0, 'benchmarks'); import bench_step as b; "
        "print(json.dumps(b.measure_step_memory(sys.argv[1])))"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code, case], capture_output=True, text=True, cwd=root, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="write benchmarks/RESULTS.md")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    unet = build_unet()
    compiled = torch.compile(unet)
    runners = {case: step_runner(compiled if case in COMPILED else unet, case) for case in CASES}
    for run in [*runners.values(), *runners.values()]:  # warm-up: compiles with and without SEG's hooks
        run()
    times: dict[str, list[float]] = {case: [] for case in CASES}
    cases = list(CASES)
    for round_index in range(args.rounds):
        # rotate the order each round so no configuration always runs after the same neighbour
        for case in cases[round_index % len(cases) :] + cases[: round_index % len(cases)]:
            times[case].append(runners[case]())
        print(f"round {round_index + 1}/{args.rounds}", {c: round(t[-1], 3) for c, t in times.items()}, flush=True)
    median = {case: statistics.median(t) for case, t in times.items()}
    share = post_fork_flop_share(unet)
    blur = blur_seconds()
    memory = {case: peak_memory_mb(case) for case in CASES if case not in COMPILED} if not args.no_memory else {}

    rows = [
        ("plain (batch 1)", "plain", "plain", "1.000"),
        ("CFG (batch 2)", "cfg", "cfg", "1.000"),
        ("SEG only", "seg", "plain", f"{1 + share:.3f}"),
        ("SEG + CFG", "seg+cfg", "cfg", f"{1 + share / 2:.3f}"),
        ("SEG + CFG, no prefix sharing", "seg+cfg unshared", "cfg", "1.500"),
        ("SEG + CFG, outside its window", "seg+cfg inactive", "cfg", "1.000"),
        ("SEG + CFG, scale 0", "seg+cfg scale 0", "cfg", "1.000"),
        ("CFG again (noise floor of this harness)", "cfg again", "cfg", "1.000"),
        ("CFG, UNet compiled (inductor)", "cfg compiled", "cfg compiled", "1.000"),
        ("SEG + CFG, UNet compiled (inductor)", "seg+cfg compiled", "cfg compiled", f"{1 + share / 2:.3f}"),
    ]
    lines = [
        "| configuration | median step (s) | ratio | against | FLOP-model limit | peak step memory (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for label, case, base, limit in rows:
        ratio = median[case] / median[base]
        mem = f"{memory[case]:.0f}" if case in memory else "—"
        lines.append(f"| {label} | {median[case]:.3f} | **{ratio:.3f}×** | {base} | {limit}× | {mem} |")
    blur_share = blur / median["seg+cfg"]
    notes = [
        "",
        f"- Share of a pass's FLOPs from the mid block on (torch flop counter): {share:.3f}; the FLOP-model "
        f"limits are 1 + share (SEG only) and 1 + share/2 (SEG + CFG).",
        f"- Blur of the 10 mid layers' perturbed queries (σ = 10, 16×16 grid): {blur * 1000:.2f} ms per step, "
        f"{100 * blur_share:.2f} % of a SEG + CFG step.",
        f"- {args.rounds} interleaved rounds after one warm-up; CPU: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}.",
        "- Peak step memory: growth of the resident set's high-water mark over one step (reset through "
        "/proc/self/clear_refs just before it), in a fresh process per row, after one warm-up step "
        "(not measured for the compiled rows).",
        f"- Compiled rows: `torch.compile(unet)` (inductor), two warm-up rounds so that the graphs with and "
        f"without SEG's hooks are compiled before timing; compiled CFG is "
        f"{median['cfg compiled'] / median['cfg']:.3f}× eager CFG.",
    ]
    table = "\n".join(lines + notes)
    print(table)
    if args.write:
        header = (
            "# Step cost of SEG, measured side by side\n\n"
            "`python benchmarks/bench_step.py --rounds 7 --write` on the benchmark model of DESIGN.md §6 "
            "(SDXL's UNet config at quarter width, random weights, latent 64×64, fp32, CPU). Ratios are of "
            "medians measured interleaved in one process; SEG layers: `mid`.\n\n"
        )
        (Path(__file__).parent / "RESULTS.md").write_text(header + table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
