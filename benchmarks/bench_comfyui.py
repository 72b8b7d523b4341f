"""SEG inside ComfyUI: what our node costs beside CFG alone and beside the leading community pack's SEG node,
and how far each is from the exact SEG reference. Needs ComfyUI (../shared/comfyui or $COMFYUI_PATH); the
community pack (sd-perturbed-attention) is loaded from ../shared/anchors to be measured, nothing of it is used.

1. Distance: the tiny SDXL-layout model of the tests, a wide odd latent (13 × 21, mid grid 7 × 11), σ = 2 and
   σ = ∞, CFG 5, 3 Euler steps: max |node − reference| / max |plain| for the final latents, beside how far SEG
   moves them. The reference is the tests' (an attn1 replace patch with the attention computed from scratch on
   densely blurred queries).
2. Cost: a small SDXL-layout UNet (width 64, levels 1-2-4, attention 1-2 deep; latent 48 × 72), 4 Euler steps,
   CFG 5, ``comfy.sample.sample``; CFG alone, our node, our node with its perturbed pass run in full (no replay
   of the layers before the mid block) and the pack's node (σ = 2, its middle block, as ours), interleaved in
   every round; per-round ratios to CFG, mean with a 95 % Student-t interval.
3. Memory: the bytes the replay keeps between the guided call and the perturbed pass (the cond rows' outputs of
   the layers before the first SEG layer), measured on the small model, with the share of one UNet call's
   multiply-adds those layers take.

    python benchmarks/bench_comfyui.py --rounds 5 --write
"""

from __future__ import annotations

import argparse
import importlib
import math
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import comfyui_host as host  # noqa: E402

RESULTS = HERE / "COMFYUI.md"
ANCHOR = HERE.parent.parent / "shared" / "anchors" / "sd-perturbed-attention"
SMALL_SDXL = dict(
    host.SDXL_UNET,
    model_channels=64,
    num_res_blocks=[1, 1, 1],
    channel_mult=[1, 2, 4],
    transformer_depth=[0, 1, 2],
    transformer_depth_output=[0, 0, 1, 1, 2, 2],
    transformer_depth_middle=2,
    context_dim=256,
    num_head_channels=32,
)
T_975 = {2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def load_anchor_seg_node():
    """The community pack's SEG node class from its ``pag_nodes`` module (its package ``__init__`` also imports
    nodes that need kornia, which the SEG node does not)."""
    package = types.ModuleType("sd_perturbed_attention")
    package.__path__ = [str(ANCHOR)]
    sys.modules["sd_perturbed_attention"] = package
    return importlib.import_module("sd_perturbed_attention.pag_nodes").SmoothedEnergyGuidanceAdvanced


def ours(node, model, sigma: float):
    inputs = dict(scale=3.0, blur_sigma=sigma, layers="", start_percent=0.0, end_percent=1.0, temporal_sigma=0.0)
    return node.SmoothedEnergyGuidance.execute(model, **inputs).result[0]


def full_pass(node, model, sigma: float):
    """Our SEG without the prefix replay: every layer runs again in the perturbed pass."""
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(node.seg_patch(model, 3.0, sigma))
    return patched


def anchor(anchor_node, model, sigma: float):
    # the pack's σ < 0 means ∞; its maximum is 9999
    return anchor_node().patch(model, scale=3.0, blur_sigma=-1.0 if sigma > 9999 else sigma)[0]


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def distances(comfy, node, anchor_node) -> list[str]:
    from test_comfyui import reference_unet_model

    model = host.tiny_sdxl(comfy)
    latent = torch.zeros(1, 4, 13, 21)
    positive, negative = host.sdxl_conditioning(1, 13, 21)
    plain = host.sample(comfy, model, positive, negative, latent, 5.0)
    scale = plain.abs().max()
    rows = []
    for sigma in (2.0, 10000.0):
        reference = host.sample(comfy, reference_unet_model(comfy, model, 3.0, sigma), positive, negative, latent, 5.0)
        effect = ((reference - plain).abs().max() / scale).item()
        for name, patched in (
            ("ours", ours(node, model, sigma)),
            ("ours, perturbed pass in full", full_pass(node, model, sigma)),
            ("sd-perturbed-attention", anchor(anchor_node, model, sigma)),
        ):
            result = host.sample(comfy, patched, positive, negative, latent, 5.0)
            error = ((result - reference).abs().max() / scale).item()
            label = "∞" if sigma > 9999 else f"{sigma:g}"
            rows.append(f"| {label} | {name} | {error:.1e} | {effect:.1e} |")
    return rows


def costs(comfy, node, anchor_node, rounds: int, steps: int) -> list[str]:
    model = host.patcher(comfy, comfy.supported_models.SDXL, SMALL_SDXL, 0)
    generator = torch.Generator().manual_seed(0)
    conditioning = [
        [[torch.randn(1, 77, 256, generator=generator), {"pooled_output": torch.randn(1, 32, generator=generator)}]]
        for _ in range(2)
    ]
    latent = torch.zeros(1, 4, 48, 72)
    settings = {
        "CFG 5": model,
        "CFG 5 + our SEG (σ = 2)": ours(node, model, 2.0),
        "CFG 5 + our SEG (σ = 2), perturbed pass in full": full_pass(node, model, 2.0),
        "CFG 5 + sd-perturbed-attention SEG (σ = 2)": anchor(anchor_node, model, 2.0),
    }
    for patched in settings.values():  # warm-up
        host.sample(comfy, patched, *conditioning, latent, 5.0, steps=1)
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(rounds):
        for name, patched in settings.items():
            start = time.perf_counter()
            host.sample(comfy, patched, *conditioning, latent, 5.0, steps=steps)
            seconds[name].append(time.perf_counter() - start)
    rows = []
    baseline = seconds["CFG 5"]
    for name, values in seconds.items():
        mean, low, high = mean_interval([value / base for value, base in zip(values, baseline, strict=True)])
        rows.append(f"| {name} | {statistics.median(values):.2f} | {mean:.3f} [{low:.3f}, {high:.3f}] |")
    return rows


def prefix_memory(comfy, node) -> list[str]:
    """Bytes of the cond rows' prefix outputs kept for the replay (one image, the cost run's latent), and the share
    of the UNet's multiply-adds (convolutions and linear layers, counted by hooks) spent before the mid block."""
    model = host.patcher(comfy, comfy.supported_models.SDXL, SMALL_SDXL, 0)
    diffusion_model = model.model.diffusion_model
    patch = node.seg_patch(model, 3.0, 2.0)
    family, layers = patch.resolve(diffusion_model, "SDXL")
    prefix = {diffusion_model.get_submodule(name) for name, _ in family.prefix(diffusion_model, layers)}
    kept, work = [0], {"prefix": 0, "all": 0}

    def keep(module, inputs, output):
        kept[0] += output[:1].numel() * output.element_size()

    def count(inside):
        def hook(module, inputs, output):
            weight = module.weight
            per_output = weight[0].numel()
            macs = output[:1].numel() * per_output
            work["all"] += macs
            work["prefix"] += macs if inside else 0

        return hook

    handles = [module.register_forward_hook(keep) for module in prefix]
    for module in prefix:
        handles += [leaf.register_forward_hook(count(True)) for leaf in module.modules() if _weighted(leaf)]
    inside = {id(leaf) for module in prefix for leaf in module.modules()}
    handles += [
        leaf.register_forward_hook(count(False))
        for leaf in diffusion_model.modules()
        if _weighted(leaf) and id(leaf) not in inside
    ]
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        diffusion_model(
            torch.randn(1, 4, 48, 72, generator=generator),
            torch.full((1,), 500.0),
            context=torch.randn(1, 77, 256, generator=generator),
            y=torch.randn(1, SMALL_SDXL["adm_in_channels"], generator=generator),
        )
    for handle in handles:
        handle.remove()
    return [
        f"| {len(prefix)} layers before the mid block's attention | {kept[0] / 2**20:.2f} MiB (fp32) | "
        f"{work['prefix'] / work['all']:.1%} |"
    ]


def _weighted(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() >= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = parser.parse_args()
    with host.comfy_session() as comfy:
        from smoothed_energy_guidance.comfyui import nodes as node

        anchor_node = load_anchor_seg_node()
        distance_rows = distances(comfy, node, anchor_node)
        cost_rows = costs(comfy, node, anchor_node, args.rounds, args.steps)
        memory_rows = prefix_memory(comfy, node)
    report = "\n".join(
        [
            "# SEG in ComfyUI: distance from the reference and cost",
            "",
            f"`python benchmarks/bench_comfyui.py --rounds {args.rounds} --steps {args.steps}` on "
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, "
            "ComfyUI v0.8 (3cd7b32f), fp32, CPU. See the script's docstring for the models.",
            "",
            "## Distance from the exact SEG reference (tiny SDXL layout, latent 13 × 21, CFG 5, 3 steps)",
            "",
            "| σ | node | max error / max plain | SEG's effect / max plain |",
            "|---|---|---|---|",
            *distance_rows,
            "",
            f"## Cost of sampling ({args.steps} Euler steps, latent 48 × 72, {args.rounds} interleaved rounds)",
            "",
            "| setting | median seconds | ratio to CFG, mean [95 % t-interval] |",
            "|---|---|---|",
            *cost_rows,
            "",
            "Every SEG node here runs the perturbed prediction as a cond pass after ComfyUI's batched cond / uncond",
            "call. Ours replays, in that pass, the outputs the guided call computed for the cond rows in every layer",
            "before the first SEG layer (the input blocks and the mid block's first ResBlock for the default `mid`),",
            "so only the rest of the UNet runs again; the row 'perturbed pass in full' is the same SEG without the",
            "replay (what the pack's node pays). The replay is used only when the perturbed call's inputs equal the",
            "recorded cond rows' inputs; otherwise (several conds in one call, area conds) the pass runs in full.",
            "",
            "## What the replay keeps",
            "",
            "| replayed layers | kept between the two calls, one image | their share of a UNet call's multiply-adds |",
            "|---|---|---|",
            *memory_rows,
            "",
            "The kept outputs are freed as soon as the perturbed pass has used them. At full size (SDXL, 1024²,",
            "latent 128 × 128) the same layers give 34.7 M values per image (level 1: 3 × 320 × 128², then",
            "320 × 64²; level 2: 4 × 640 × 64², then 640 × 32²; level 3 and the mid ResBlock: 5 × 1280 × 32²),",
            "about 69 MB in fp16.",
            "",
        ]
    )
    print(report)
    if args.write:
        RESULTS.write_text(report)


if __name__ == "__main__":
    main()
