"""Cost of one SEG + CFG denoising step against a CFG step, per transformer family, side by side.

Each family's denoiser at a small but compute-bound size (hidden width 256, 8 blocks, a 32 × 32 token
grid, random weights, fp32, CPU), driven as its pipeline drives it: batched CFG (one call of two rows)
for PixArt-Σ, HunyuanDiT, Sana, SD3 and AuraFlow; CFG as a second call for Chroma, Qwen-Image, Flux Kontext (whose
sequence also holds a 32 × 32 reference image) and Wan (video: 4 latent frames of 16 × 16 tokens). SEG
runs on the family's default layer (its middle block). The FLOP-model limit is 1 + share / 2, where
share is the part of one pass's FLOPs SEG runs again (torch flop counter): from the fork on where the rows
fork inside the call; everything but the blocks before the first SEG block where the perturbed prediction
is a call of its own with that prefix replayed (PixArt, Sana and the video families, whose code after the
blocks uses pre-block tensors with the host's rows only; Flux and AuraFlow, where it measured cheaper than the
fork); the whole pass where rows join at the input.

    python benchmarks/bench_families.py --rounds 21 --write
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from smoothed_energy_guidance.core.guidance import SegConfig
from smoothed_energy_guidance.core.layers import resolve_block_layers
from smoothed_energy_guidance.hooks import HostStep
from smoothed_energy_guidance.pipelines.transformer import (
    attach_seg_to_transformer,
    transformer_family,
    transformer_fork_plan,
    transformer_inventory,
    transformer_replay_plan,
)
from smoothed_energy_guidance.toy.statistics import median_interval

SIDE = 32  # token grid side
TOKENS = SIDE * SIDE
TEXT = 64
WIDTH, HEADS, BLOCKS = 256, 4, 8


def _ids(frame: int = 0) -> torch.Tensor:
    return torch.cartesian_prod(torch.tensor([frame]), torch.arange(SIDE), torch.arange(SIDE)).float()


def pixart():
    from diffusers import PixArtTransformer2DModel

    model = PixArtTransformer2DModel(
        num_attention_heads=HEADS,
        attention_head_dim=WIDTH // HEADS,
        in_channels=4,
        out_channels=8,
        num_layers=BLOCKS,
        cross_attention_dim=WIDTH,
        sample_size=2 * SIDE,
        patch_size=2,
        caption_channels=128,
    )

    def inputs(rows):
        return dict(
            hidden_states=torch.randn(rows, 4, 2 * SIDE, 2 * SIDE),
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            timestep=torch.full((rows,), 500.0),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        )

    return model, inputs, True


def hunyuan():
    from diffusers import HunyuanDiT2DModel

    model = HunyuanDiT2DModel(
        num_attention_heads=HEADS,
        attention_head_dim=WIDTH // HEADS,
        in_channels=4,
        patch_size=2,
        sample_size=2 * SIDE,
        hidden_size=WIDTH,
        num_layers=BLOCKS,
        cross_attention_dim=128,
        cross_attention_dim_t5=128,
        pooled_projection_dim=128,
        text_len=TEXT,
        text_len_t5=TEXT,
    )
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    rope = get_2d_rotary_pos_embed(WIDTH // HEADS, ((0, 0), (SIDE, SIDE)), (SIDE, SIDE), use_real=True)

    def inputs(rows):
        return dict(
            hidden_states=torch.randn(rows, 4, 2 * SIDE, 2 * SIDE),
            timestep=torch.full((rows,), 500.0),
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            text_embedding_mask=torch.ones(rows, TEXT),
            encoder_hidden_states_t5=torch.randn(rows, TEXT, 128),
            text_embedding_mask_t5=torch.ones(rows, TEXT),
            image_meta_size=torch.ones(rows, 6) * 64,
            style=torch.zeros(rows, dtype=torch.long),
            image_rotary_emb=rope,
        )

    return model, inputs, True


def sana():
    from diffusers import SanaTransformer2DModel

    model = SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=HEADS,
        attention_head_dim=WIDTH // HEADS,
        num_layers=BLOCKS,
        num_cross_attention_heads=HEADS,
        cross_attention_head_dim=WIDTH // HEADS,
        cross_attention_dim=WIDTH,
        caption_channels=128,
        sample_size=SIDE,
        patch_size=1,
    )

    def inputs(rows):
        return dict(
            hidden_states=torch.randn(rows, 4, SIDE, SIDE),
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            timestep=torch.full((rows,), 500.0),
        )

    return model, inputs, True


def auraflow():
    from diffusers import AuraFlowTransformer2DModel

    model = AuraFlowTransformer2DModel(  # 2 joint + 6 single blocks (the released model: 4 + 32)
        sample_size=2 * SIDE,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_mmdit_layers=2,
        num_single_dit_layers=BLOCKS - 2,
        attention_head_dim=WIDTH // HEADS,
        num_attention_heads=HEADS,
        joint_attention_dim=128,
        caption_projection_dim=WIDTH,
        pos_embed_max_size=TOKENS,
    )

    def inputs(rows):
        return dict(
            hidden_states=torch.randn(rows, 4, 2 * SIDE, 2 * SIDE),
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            timestep=torch.full((rows,), 0.5),  # its pipeline passes t / 1000
        )

    return model, inputs, True


def sd3():
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(
        sample_size=2 * SIDE,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=BLOCKS,
        attention_head_dim=WIDTH // HEADS,
        num_attention_heads=HEADS,
        joint_attention_dim=128,
        caption_projection_dim=WIDTH,
        pooled_projection_dim=128,
        pos_embed_max_size=2 * SIDE,
        qk_norm="rms_norm",
    )

    def inputs(rows):
        return dict(
            hidden_states=torch.randn(rows, 4, 2 * SIDE, 2 * SIDE),
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            pooled_projections=torch.randn(rows, 128),
            timestep=torch.full((rows,), 500.0),
        )

    return model, inputs, True


def chroma():
    from diffusers import ChromaTransformer2DModel

    model = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=16,
        out_channels=16,
        num_layers=BLOCKS // 2,
        num_single_layers=BLOCKS // 2,
        attention_head_dim=WIDTH // HEADS,
        num_attention_heads=HEADS,
        joint_attention_dim=128,
        axes_dims_rope=(16, 24, 24),
        approximator_num_channels=16,
        approximator_hidden_dim=64,
        approximator_layers=1,
    )

    def inputs(rows):
        return dict(
            hidden_states=torch.randn(rows, TOKENS, 16),
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            timestep=torch.full((rows,), 0.5),
            img_ids=_ids(),
            txt_ids=torch.zeros(TEXT, 3),
        )

    return model, inputs, False


def flux_kontext():
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        out_channels=16,
        num_layers=BLOCKS // 2,
        num_single_layers=BLOCKS // 2,
        attention_head_dim=WIDTH // HEADS,
        num_attention_heads=HEADS,
        joint_attention_dim=128,
        pooled_projection_dim=128,
        axes_dims_rope=(16, 24, 24),
        guidance_embeds=True,
    )

    def inputs(rows):
        return dict(
            hidden_states=torch.randn(rows, 2 * TOKENS, 16),  # the generated image, then the reference image
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            pooled_projections=torch.randn(rows, 128),
            timestep=torch.full((rows,), 0.5),
            guidance=torch.full((rows,), 2.5),
            img_ids=torch.cat([_ids(0), _ids(1)]),
            txt_ids=torch.zeros(TEXT, 3),
        )

    return model, inputs, False


def qwen_image():
    from diffusers import QwenImageTransformer2DModel

    model = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=BLOCKS,
        attention_head_dim=WIDTH // HEADS,
        num_attention_heads=HEADS,
        joint_attention_dim=128,
        axes_dims_rope=(16, 24, 24),
    )

    def inputs(rows):
        return dict(
            hidden_states=torch.randn(rows, TOKENS, 64),
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            encoder_hidden_states_mask=torch.ones(rows, TEXT, dtype=torch.long),
            timestep=torch.full((rows,), 0.5),
            img_shapes=[[(1, SIDE, SIDE)]] * rows,
        )

    return model, inputs, False


def wan():
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=HEADS,
        attention_head_dim=WIDTH // HEADS,
        in_channels=16,
        out_channels=16,
        text_dim=128,
        freq_dim=64,
        ffn_dim=4 * WIDTH,
        num_layers=BLOCKS,
        rope_max_seq_len=64,
    )

    def inputs(rows):  # 4 latent frames of 16 × 16 tokens: the same 1024 tokens as the image rows
        return dict(
            hidden_states=torch.randn(rows, 16, 4, SIDE, SIDE),
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            timestep=torch.full((rows,), 500.0),
        )

    return model, inputs, False


VIDEO = (4, SIDE // 2, SIDE // 2)  # latent frames × token rows × token columns: the same 1024 tokens


def cogvideox():
    from diffusers import CogVideoXTransformer3DModel

    model = CogVideoXTransformer3DModel(
        num_attention_heads=HEADS,
        attention_head_dim=WIDTH // HEADS,
        in_channels=16,
        out_channels=16,
        time_embed_dim=WIDTH,
        text_embed_dim=128,
        num_layers=BLOCKS,
        sample_width=SIDE,
        sample_height=SIDE,
        sample_frames=13,  # 4 latent frames
        patch_size=2,
        max_text_seq_length=TEXT,
    )

    def inputs(rows):
        return dict(
            hidden_states=torch.randn(rows, VIDEO[0], 16, SIDE, SIDE),
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            timestep=torch.full((rows,), 500),
        )

    return model, inputs, True


def ltx_video():
    from diffusers import LTXVideoTransformer3DModel

    model = LTXVideoTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=HEADS,
        attention_head_dim=WIDTH // HEADS,
        cross_attention_dim=WIDTH,
        num_layers=BLOCKS,
        caption_channels=128,
    )
    frames, height, width = VIDEO

    def inputs(rows):
        return dict(
            hidden_states=torch.randn(rows, frames * height * width, 16),
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            timestep=torch.full((rows,), 500.0),
            encoder_attention_mask=torch.ones(rows, TEXT),
            num_frames=frames,
            height=height,
            width=width,
        )

    return model, inputs, True


def hunyuan_video():
    from diffusers import HunyuanVideoTransformer3DModel

    model = HunyuanVideoTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=HEADS,
        attention_head_dim=WIDTH // HEADS,
        num_layers=BLOCKS // 2,
        num_single_layers=BLOCKS // 2,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=128,
        pooled_projection_dim=64,
        rope_axes_dim=(16, 24, 24),
    )

    def inputs(rows):
        return dict(
            hidden_states=torch.randn(rows, 16, VIDEO[0], SIDE, SIDE),
            timestep=torch.full((rows,), 500),
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            encoder_attention_mask=torch.ones(rows, TEXT),
            pooled_projections=torch.randn(rows, 64),
            guidance=torch.full((rows,), 6000.0),
        )

    return model, inputs, False


def mochi():
    from diffusers import MochiTransformer3DModel

    model = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=HEADS,
        attention_head_dim=WIDTH // HEADS,
        num_layers=BLOCKS,
        pooled_projection_dim=128,
        in_channels=16,
        text_embed_dim=128,
        time_embed_dim=WIDTH,
        max_sequence_length=TEXT,
    )

    def inputs(rows):
        return dict(
            hidden_states=torch.randn(rows, 16, VIDEO[0], SIDE, SIDE),
            encoder_hidden_states=torch.randn(rows, TEXT, 128),
            timestep=torch.full((rows,), 500),
            encoder_attention_mask=torch.ones(rows, TEXT),
        )

    return model, inputs, True


FAMILIES: dict[str, Callable] = {
    "PixArt-Σ": pixart,
    "HunyuanDiT": hunyuan,
    "Sana": sana,
    "SD3 (reference row)": sd3,
    "AuraFlow": auraflow,
    "Chroma": chroma,
    "Qwen-Image": qwen_image,
    "Flux Kontext": flux_kontext,
    "Wan 2.x (video, 4 × 16 × 16 tokens)": wan,
    "CogVideoX (video)": cogvideox,
    "LTX-Video (video)": ltx_video,
    "HunyuanVideo (video)": hunyuan_video,
    "Mochi (video)": mochi,
}


ROWS = {
    "AFTER_SHARED_PREFIX": "forked after the prefix",
    "REPLAYED_PREFIX": "own call, prefix replayed",
    "AT_INPUT": "joined at the input",
    "SEPARATE_CALL": "own call",
}


def step_runners(model, inputs, batched: bool, share_prefix: bool = True):
    """(CFG step, SEG + CFG step) as the family's pipeline runs them (``share_prefix=False``: the perturbed rows
    join at the input, a whole extra pass)."""
    config = SegConfig(blur_sigma=10.0)
    pair, single = inputs(2), inputs(1)

    def read_host(timestep, call) -> HostStep:
        return HostStep(cfg=batched, guidance_scale=5.0, guidance_rescale=0.0, progress=0.0)

    def cfg() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            if batched:
                model(**pair)
            else:
                model(**single), model(**single)
        return time.perf_counter() - start

    def seg_cfg() -> float:
        start = time.perf_counter()
        hooks = attach_seg_to_transformer(model, config, read_host, share_prefix)
        try:
            with torch.no_grad(), hooks.serving():
                model(**(pair if batched else single))
        finally:
            hooks.remove()
        if not batched:
            with torch.no_grad():
                model(**single)  # the uncond call, untouched
        return time.perf_counter() - start

    return cfg, seg_cfg


def _ratio(interval, bold: bool = False) -> str:
    mark = "**" if bold else ""
    return f"{mark}{interval.mean:.3f}×{mark} ({interval.low:.3f}–{interval.high:.3f})"


def _bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return sum(_bytes(item) for item in value) if isinstance(value, (list, tuple)) else 0


def flops_inside(counts: dict, model, blocks: set[int]) -> float:
    """FLOPs the flop counter attributed to the modules whose ids are in ``blocks`` (each counted with its
    children, which are entries of their own that are not in ``blocks``)."""
    owners = {name: module for name, module in model.named_modules()}
    root = type(model).__name__ + "."
    return sum(sum(v.values()) for name, v in counts.items() if id(owners.get(name.removeprefix(root))) in blocks)


def flop_limit(model, inputs) -> tuple[str, float, str]:
    """The default layer, the FLOP-model limit of SEG + CFG over CFG, and what a replayed prefix keeps.

    Rows forked after the shared prefix rerun the blocks from the fork on and the output modules; a perturbed
    call with a replayed prefix reruns everything but the blocks before the first SEG block; rows joined at
    the input rerun the whole pass. The limit is 1 + (rerun share of one pass) / 2.
    """
    family = transformer_family(model)
    inventory = transformer_inventory(model, family)
    names = resolve_block_layers(inventory.default_layers(), inventory)
    if not (family.shares_prefix or family.replays_prefix):
        return names[0], 1.5, "—"
    if family.shares_prefix:
        counted = {id(block) for block in transformer_fork_plan(model, names, family).blocks}
    else:
        prefixes = transformer_replay_plan(model, names, family).prefixes
        counted = {id(block) for prefix in prefixes for block in prefix}
    kept = [0]
    handles = [
        prefix[-1].register_forward_hook(lambda m, a, out: kept.__setitem__(0, kept[0] + _bytes(out)))
        for prefix in (() if family.shares_prefix else prefixes)
    ]
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        model(**inputs(1))
    for handle in handles:
        handle.remove()
    counts = counter.get_flop_counts()
    total = sum(counts["Global"].values())
    inside = flops_inside(counts, model, counted)
    rerun = inside if family.shares_prefix else total - inside
    memory = "—" if family.shares_prefix else f"{kept[0] / 2**20:.2f} MiB"
    return names[0], 1 + (rerun / total) / 2, memory


# Wan 2.1 14B (its published transformer config) at 480p: 81 frames → 21 latent frames of 60 × 104, 30 × 52 tokens
WAN_14B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)
ASSUMED_TFLOPS = 400.0  # an assumed sustained bf16 rate on one H100-class GPU (about 40 % of its dense peak)


def wan_480p_estimate() -> list[str]:
    """FLOPs of one Wan 2.1 14B pass at 480p counted on the meta device (no weights, no compute), the share of
    its default SEG layer's prefix, and what the replayed prefix saves per step at an assumed GPU rate."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**WAN_14B)
    family = transformer_family(model)
    inventory = transformer_inventory(model, family)
    names = resolve_block_layers(inventory.default_layers(), inventory)
    prefix = {id(block) for stack in transformer_replay_plan(model, names, family).prefixes for block in stack}
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        model(
            hidden_states=torch.empty(1, 16, 21, 60, 104, device="meta"),
            timestep=torch.full((1,), 500.0, device="meta"),
            encoder_hidden_states=torch.empty(1, 512, 4096, device="meta"),
        )
    counts = counter.get_flop_counts()
    total = sum(counts["Global"].values())
    skipped = flops_inside(counts, model, prefix)
    pass_seconds = total / (ASSUMED_TFLOPS * 1e12)
    at_input, replayed = 3 * pass_seconds, (3 - skipped / total) * pass_seconds
    return [
        "| model and size | one pass | SEG layer | prefix share | CFG step | SEG + CFG step, rows at the input | "
        "SEG + CFG step, prefix replayed | saved per step | saved over 50 steps |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| Wan 2.1 14B, 480 × 832, 81 frames (21 × 30 × 52 = 32 760 tokens, 512 text) | {total / 1e12:.0f} TFLOP | "
        f"`{names[0]}` | {skipped / total:.1%} | {2 * pass_seconds:.1f} s | {at_input:.1f} s "
        f"({at_input / pass_seconds / 2:.2f}×) | {replayed:.1f} s ({replayed / pass_seconds / 2:.2f}×) | "
        f"{at_input - replayed:.1f} s | {50 * (at_input - replayed):.0f} s |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="write benchmarks/FAMILIES.md")
    args = parser.parse_args()
    lines = [
        "| family | CFG as | perturbed rows | SEG layer (default) | CFG step (s) | SEG + CFG step (s) | ratio (95 % "
        "interval) | FLOP-model limit | over the limit | CFG again | kept for the replay, per image | the same SEG, "
        "rows at the input |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    measured = []
    for label, build in FAMILIES.items():
        torch.manual_seed(0)
        model, inputs, batched = build()
        model.eval()
        cfg, seg_cfg = step_runners(model, inputs, batched)
        order = [("cfg", cfg), ("seg", seg_cfg), ("again", cfg)]
        if transformer_family(model).replays_prefix:  # side by side: the same SEG with its rows at the input
            order.append(("input", step_runners(model, inputs, batched, share_prefix=False)[1]))
        for _, run in order:
            run()  # warm-up
        measured.append((label, model, inputs, batched, order, {name: [] for name, _ in order}))
    # every round visits every family in turn, so a slow spell of a shared machine spreads over all rows instead
    # of landing on the one being timed
    for round_index in range(args.rounds):
        for *_, order, times in measured:
            shift = round_index % len(order)
            for name, run in order[shift:] + order[:shift]:
                times[name].append(run())
        print(f"round {round_index + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    for label, model, inputs, batched, _, times in measured:
        median = {name: statistics.median(values) for name, values in times.items()}
        # each round times a family's steps back to back: its own ratios cancel the slower drifts
        ratio = {
            name: median_interval([run / cfg_time for run, cfg_time in zip(values, times["cfg"], strict=True)])
            for name, values in times.items()
            if name != "cfg"
        }
        at_input = _ratio(ratio["input"]) if "input" in ratio else "—"
        layer, limit, kept = flop_limit(model, inputs)
        how = "one batch of 2" if batched else "a second call"
        rows = ROWS[transformer_family(model).perturbed_rows.name]
        lines.append(
            f"| {label} | {how} | {rows} | `{layer}` | {median['cfg']:.3f} | {median['seg']:.3f} | "
            f"{_ratio(ratio['seg'], bold=True)} | {limit:.3f}× | "
            f"{ratio['seg'].mean - limit:+.3f} | {_ratio(ratio['again'])} | {kept} | {at_input} |"
        )
        print(lines[-1], flush=True)
    notes = [
        "",
        "- Ratios: the median of the per-round ratios (each round times a family's steps back to back, in an "
        "order that rotates from round to round, and visits every family in turn) with the distribution-free "
        "95 % interval of that median (order statistics); the step times are the medians over rounds.",
        "- CFG again: the CFG step timed a second time in the same rounds, the noise floor of this harness. "
        "On this shared 2-core machine rows timed family after family moved by up to 0.09 between two runs of "
        "21 rounds (HunyuanDiT 1.260× and 1.351×), more than their intervals say: a slow spell landed on the "
        "family being timed, hence rounds that visit every family in turn.",
        f"- {args.rounds} interleaved rounds after one warm-up per family; CPU: "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}.",
        "- Kolors runs the SDXL UNet, whose rows are in RESULTS.md.",
    ]
    table = "\n".join(lines + notes)
    print(table)
    if args.write:
        header = (
            "# Step cost of SEG per transformer family, measured side by side\n\n"
            f"`python benchmarks/bench_families.py --rounds {args.rounds} --write`: each family's denoiser at hidden "
            f"width {WIDTH}, {BLOCKS} blocks, a {SIDE} × {SIDE} token grid, {TEXT} text tokens, random weights, "
            "fp32, CPU; SEG (σ = 10) on the family's default layer, measured interleaved in one process.\n\n"
        )
        estimate = "\n".join(
            [
                "",
                "## A video model at full size: Wan 2.1 14B at 480p (an estimate from counted FLOPs)",
                "",
                *wan_480p_estimate(),
                "",
                "FLOPs counted by torch's flop counter on the meta device (the published 14B configuration, no weights",
                f"loaded); seconds are FLOPs at an assumed sustained {ASSUMED_TFLOPS:.0f} TFLOP/s in bf16 on one "
                "H100-class GPU, not measured. Steps are CFG's two passes (Wan runs its uncond pass as a second call) "
                "plus SEG's perturbed pass; rows at the input pay a whole pass, the replayed prefix skips the blocks "
                "before the default (middle) SEG block.",
            ]
        )
        (Path(__file__).parent / "FAMILIES.md").write_text(header + table + "\n" + estimate + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
