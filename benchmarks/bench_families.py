"""Cost of one SEG + CFG denoising step against a CFG step, per transformer family, side by side.

Each family's denoiser at a small but compute-bound size (hidden width 256, 8 blocks, a 32 × 32 token
grid, random weights, fp32, CPU), driven as its pipeline drives it: batched CFG (one call of two rows)
for PixArt-Σ, HunyuanDiT, Sana and SD3; CFG as a second call for Chroma, Qwen-Image, Flux Kontext (whose
sequence also holds a 32 × 32 reference image) and Wan (video: 4 latent frames of 16 × 16 tokens). SEG
runs on the family's default layer (its middle block). The FLOP-model limit is 1 + share / 2, where
share is the part of one pass's FLOPs from the fork on (torch flop counter); families whose perturbed
rows join at the input (PixArt, Sana, Wan, SD3 with ControlNet residuals) repeat the whole pass: 1.5.

    python benchmarks/bench_families.py --rounds 7 --write
"""

from __future__ import annotations

import argparse
import platform
import statistics
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
)

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


FAMILIES: dict[str, Callable] = {
    "PixArt-Σ": pixart,
    "HunyuanDiT": hunyuan,
    "Sana": sana,
    "SD3 (reference row)": sd3,
    "Chroma": chroma,
    "Qwen-Image": qwen_image,
    "Flux Kontext": flux_kontext,
    "Wan 2.x (video, 4 × 16 × 16 tokens)": wan,
}


def step_runners(model, inputs, batched: bool):
    """(CFG step, SEG + CFG step) as the family's pipeline runs them."""
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
        hooks = attach_seg_to_transformer(model, config, read_host)
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


def flop_limit(model, inputs) -> tuple[str, float]:
    """The default layer and the FLOP-model limit of SEG + CFG over CFG."""
    family = transformer_family(model)
    inventory = transformer_inventory(model, family)
    names = resolve_block_layers(inventory.default_layers(), inventory)
    if not family.shares_prefix:
        return names[0], 1.5
    plan = transformer_fork_plan(model, names, family)
    forked = {id(block) for block in plan.blocks}
    owners = {name: module for name, module in model.named_modules()}
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        model(**inputs(1))
    counts = counter.get_flop_counts()
    total = sum(counts["Global"].values())
    root = type(model).__name__ + "."
    after = sum(
        sum(values.values()) for name, values in counts.items() if id(owners.get(name.removeprefix(root))) in forked
    )
    return names[0], 1 + (after / total) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="write benchmarks/FAMILIES.md")
    args = parser.parse_args()
    lines = [
        "| family | CFG as | SEG layer (default) | CFG step (s) | SEG + CFG step (s) | ratio "
        "| FLOP-model limit | CFG again |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, build in FAMILIES.items():
        torch.manual_seed(0)
        model, inputs, batched = build()
        model.eval()
        cfg, seg_cfg = step_runners(model, inputs, batched)
        cfg(), seg_cfg()  # warm-up
        times = {"cfg": [], "seg": [], "again": []}
        for round_index in range(args.rounds):
            order = [("cfg", cfg), ("seg", seg_cfg), ("again", cfg)]
            for name, run in order[round_index % 3 :] + order[: round_index % 3]:
                times[name].append(run())
        median = {name: statistics.median(values) for name, values in times.items()}
        layer, limit = flop_limit(model, inputs)
        how = "one batch of 2" if batched else "a second call"
        lines.append(
            f"| {label} | {how} | `{layer}` | {median['cfg']:.3f} | {median['seg']:.3f} | "
            f"**{median['seg'] / median['cfg']:.3f}×** | {limit:.3f}× | {median['again'] / median['cfg']:.3f}× |"
        )
        print(lines[-1], flush=True)
    notes = [
        "",
        "- CFG again: the CFG step timed a second time in the same rounds, the noise floor of this harness. "
        "On this shared 2-core machine single rows move by up to about 0.4× between runs (Sana measured "
        "1.43×, 1.90× and 1.55× in three runs); read each ratio against its CFG-again column.",
        f"- {args.rounds} interleaved rounds after one warm-up per family; CPU: "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}.",
        "- Kolors runs the SDXL UNet, whose rows are in RESULTS.md.",
    ]
    table = "\n".join(lines + notes)
    print(table)
    if args.write:
        header = (
            "# Step cost of SEG per transformer family, measured side by side\n\n"
            "`python benchmarks/bench_families.py --rounds 7 --write`: each family's denoiser at hidden width "
            f"{WIDTH}, {BLOCKS} blocks, a {SIDE} × {SIDE} token grid, {TEXT} text tokens, random weights, fp32, CPU; "
            "SEG (σ = 10) on the family's default layer. Ratios are of medians measured interleaved in one process.\n\n"
        )
        (Path(__file__).parent / "FAMILIES.md").write_text(header + table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
