"""What stacking SEG on another diffusers guider costs: each base guider alone and with SEG on top
(``SmoothedEnergyGuidance(base_guider=...)``), through the modular SDXL pipeline whose UNet is the benchmark
model of DESIGN.md §6 (SDXL's UNet at quarter width, latent 64×64), whole pipeline calls, every configuration
interleaved in each round, medians, ratios against plain CFG measured in the same run.

    python benchmarks/bench_stacking.py --rounds 3 --steps 3 --write
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
warnings.filterwarnings("ignore", message="Guiders are currently an experimental feature")

from bench_guider import bench_parts, modular_sdxl  # noqa: E402

import smoothed_energy_guidance as seg  # noqa: E402
from smoothed_energy_guidance.testing import diffusers_base_guiders  # noqa: E402

RESULTS = HERE / "STACKING.md"
SEG_SETTINGS = dict(scale=3.0, blur_sigma=10.0)
MID = "mid_block.attentions.0.transformer_blocks"  # PAG's, skip-layer's and AutoGuidance's layer: the mid block


LABELS = {
    "apg": "APG",
    "apg-mix": "APG mix",
    "cfg-zero-star": "CFG-Zero*",
    "tangential": "Tangential CFG",
    "frequency-decoupled": "Frequency-decoupled",
    "pag": "PAG",
    "skip-layer": "Skip-layer",
    "auto-guidance": "AutoGuidance",
}


def base_guiders() -> dict[str, Callable[[], object]]:
    """Plain CFG and the diffusers guiders SEG stacks on (``testing.diffusers_base_guiders``), active on every
    step; magnitude-aware guidance is left out (diffusers' own version fails on 4-d UNet latents)."""
    from diffusers import guiders

    bases = diffusers_base_guiders(MID)
    return {"CFG": lambda: guiders.ClassifierFreeGuidance(guidance_scale=5.0)} | {
        label: bases[name] for name, label in LABELS.items()
    }


def cost(rounds: int, steps: int) -> dict[str, dict[str, float]]:
    """Median seconds per pipeline call: per base guider, alone and with SEG on top (plus CFG run again as the
    noise floor), every configuration once per round, the first round a warm-up."""
    from diffusers import ClassifierFreeGuidance

    parts = bench_parts()
    configs: dict[tuple[str, str], object] = {}
    for name, make in base_guiders().items():
        configs[(name, "alone")] = make()
        configs[(name, "+ SEG")] = seg.SmoothedEnergyGuidance(**SEG_SETTINGS, base_guider=make())
    configs[("CFG again (noise floor)", "alone")] = ClassifierFreeGuidance(guidance_scale=5.0)
    pipe = modular_sdxl(parts, configs[("CFG", "alone")])
    noise = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    times: dict[tuple[str, str], list[float]] = {key: [] for key in configs}
    for round_index in range(rounds + 1):
        for key, guider in configs.items():
            pipe.update_components(guider=guider)
            start = time.perf_counter()
            pipe(prompt="a cube", num_inference_steps=steps, latents=noise.clone(), output="latents")
            if round_index:
                times[key].append(time.perf_counter() - start)
        print(f"round {round_index} of {rounds} done", file=sys.stderr)
    medians: dict[str, dict[str, float]] = {}
    for (name, variant), values in times.items():
        medians.setdefault(name, {})[variant] = statistics.median(values)
    return medians


def table(seconds: dict[str, dict[str, float]], rounds: int, steps: int) -> str:
    cfg = seconds["CFG"]["alone"]
    lines = [
        "# Stacking SEG on diffusers' guiders: cost",
        "",
        "`python benchmarks/bench_stacking.py --rounds 3 --steps 3 --write`. diffusers "
        f"{__import__('diffusers').__version__}, torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, fp32, CPU. The benchmark UNet of DESIGN.md §6 in the modular SDXL "
        f"pipeline, latent 64×64, {steps} steps per call, median of {rounds} interleaved rounds after a warm-up; "
        f"SEG at s = {SEG_SETTINGS['scale']:g}, σ = {SEG_SETTINGS['blur_sigma']:g} on the mid block; the bases "
        "with a batch of their own (PAG, skip-layer guidance) act on every step.",
        "",
        "| base guider | alone (s) | alone / CFG | + SEG (s) | + SEG / CFG | SEG's cost over the base alone |",
        "|---|---|---|---|---|---|",
    ]
    for name, values in seconds.items():
        alone = values["alone"]
        if "+ SEG" in values:
            stacked = values["+ SEG"]
            lines.append(
                f"| {name} | {alone:.2f} | {alone / cfg:.3f}× | {stacked:.2f} | **{stacked / cfg:.3f}×** | "
                f"{stacked / alone:.3f}× |"
            )
        else:
            lines.append(f"| {name} | {alone:.2f} | {alone / cfg:.3f}× | | | |")
    lines += [
        "",
        "SEG forks its perturbed rows inside the base's cond call after the shared prefix, so on every base it "
        "adds about what it adds to CFG; a base with a batch of its own (PAG, skip-layer guidance) keeps it, and "
        "SEG's rows do not join that batch. The CFG-again row is the run-to-run noise of this machine.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"write the table to {RESULTS.name}")
    args = parser.parse_args()
    text = table(cost(args.rounds, args.steps), args.rounds, args.steps)
    print(text)
    if args.write:
        RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
