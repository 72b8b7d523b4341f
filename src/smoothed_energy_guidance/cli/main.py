"""The ``seg`` command: generate, sweep, batch, info and demo, built on the public API."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..catalog import DEFAULT_MODEL, SCHEDULER_NAMES, TOY_MODEL
from .settings import GenerationSettings, parse_layers, parse_lora, parse_sigma, parse_temporal_sigma

# option → (settings field, parser); options left out on the command line keep their defaults
SETTING_OPTIONS: dict[str, tuple[str, Any, str]] = {
    "--model": ("model", str, f"hub id, local diffusers folder or .safetensors file (default {DEFAULT_MODEL})"),
    "--prompt": ("prompt", str, "what to draw"),
    "--negative-prompt": ("negative_prompt", str, "what to avoid"),
    "--width": ("width", int, "image width in pixels (default: the model's)"),
    "--height": ("height", int, "image height in pixels (default: the model's)"),
    "--steps": ("steps", int, "denoising steps (default 30)"),
    "--cfg": ("cfg", float, "classifier-free guidance scale; 1 turns CFG off (default 5)"),
    "--seg-scale": ("seg_scale", float, "SEG scale; 0 turns SEG off (default 3)"),
    "--blur-sigma": ("blur_sigma", parse_sigma, "SEG blur σ, a number or 'inf' (default inf)"),
    "--layers": (
        "layers",
        parse_layers,
        "SEG layers, e.g. 'mid', 'mid+up', 'd4-d9', 'blocks.7' (default: mid for UNets, the middle block for SD3/Flux)",
    ),
    "--seg-start": ("seg_start", float, "fraction of steps where SEG starts (default 0)"),
    "--seg-end": ("seg_end", float, "fraction of steps where SEG ends (default 1)"),
    "--seed": ("seed", int, "random seed (default: a random one, recorded in the PNG)"),
    "--num-images": ("num_images", int, "images to make, seeds seed, seed+1, … (default 1)"),
    "--scheduler": ("scheduler", str, f"default (the model's own) or one of {', '.join(SCHEDULER_NAMES)}"),
    "--controlnet": ("controlnet", str, "ControlNet folder or hub id"),
    "--control-image": ("control_image", str, "the ControlNet condition image"),
    "--init-image": ("init_image", str, "start from this image (img2img)"),
    "--strength": ("strength", float, "how much of the init image to repaint (default 0.8)"),
    "--mask": ("mask", str, "white = repaint (inpainting; needs --init-image)"),
    "--dtype": ("dtype", str, "auto, fp16, bf16 or fp32 (auto: fp16 on CUDA)"),
    "--frames": ("frames", int, "video models: frames to make (default: the model's)"),
    "--fps": ("fps", int, "video models: frames per second of the MP4 / WebP written (default 16)"),
    "--temporal-sigma": (
        "temporal_sigma",
        parse_temporal_sigma,
        "video models: SEG blur σ along time, 0 (default: none), a number or 'inf'",
    ),
}


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` for argparse: its rule reaches the user ("argument --blur-sigma: 'nan': blur sigma must be > 0"),
    where a plain ValueError would be reported as "invalid parse_sigma value"."""
    if parse in (str, int, float):
        return parse

    def checked(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None

    checked.__name__ = parse.__name__
    return checked


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    for option, (field, parse, help_text) in SETTING_OPTIONS.items():
        parser.add_argument(option, dest=field, type=_argument_type(parse), default=argparse.SUPPRESS, help=help_text)
    parser.add_argument(
        "--lora",
        dest="loras",
        action="append",
        type=parse_lora,
        default=argparse.SUPPRESS,
        metavar="PATH[:WEIGHT]",
        help="load a LoRA (repeatable)",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    parser.add_argument("--offload", default="none", choices=["none", "model", "sequential"])
    parser.add_argument("--config", help="local diffusers folder with the configuration of a single-file model")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="allow .ckpt/.bin/.pt checkpoints (they can run code when loaded)"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default ./outputs)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files instead of renaming")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or loader messages")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seg", description="Smoothed Energy Guidance for diffusers pipelines.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate images with SEG")
    _add_setting_options(generate)
    _add_run_options(generate)
    generate.add_argument("--from", dest="from_image", type=Path, help="reuse the settings of a PNG made by seg")
    sweep = commands.add_parser("sweep", help="a labelled comparison grid over one or two settings")
    _add_setting_options(sweep)
    _add_run_options(sweep)
    sweep.add_argument("--x", required=True, help="column axis, e.g. blur-sigma=1,4,16,inf")
    sweep.add_argument("--y", help="row axis, e.g. seg-scale=0,3")
    sweep.add_argument("--baselines", help="extra columns: vanilla, pag (comma separated)")
    batch = commands.add_parser("batch", help="generate every prompt of a .txt, .jsonl or .csv file")
    batch.add_argument("prompts", type=Path)
    _add_setting_options(batch)
    _add_run_options(batch)
    info = commands.add_parser(
        "info", help="print the settings stored in a PNG; without one, the model families and how SEG reaches them"
    )
    info.add_argument("image", type=Path, nargs="?")
    ui = commands.add_parser("ui", help="web UI for side-by-side comparisons (needs the [ui] extra)")
    ui.add_argument("--model", default=TOY_MODEL, help=f"model shown first (default: the bundled {TOY_MODEL})")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    ui.add_argument("--share", action="store_true", help="also open a public Gradio sharing link (off by default)")
    ui.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    evaluate = commands.add_parser(
        "eval", help="quality sweep on a bundled testbed: FD, precision/recall, adherence with 95%% intervals"
    )
    evaluate.add_argument("--testbed", default=TOY_MODEL, help="bundled testbed: seg-toy or seg-clutter")
    evaluate.add_argument("--model-dir", type=Path, default=None, help="a testbed model folder (default: bundled)")
    evaluate.add_argument(
        "--samples", type=int, default=None, help="images per seed and setting (default 128; --confirm: the sweep's)"
    )
    evaluate.add_argument("--seeds", type=int, default=3, help="number of seeds, at least 2 (default 3)")
    evaluate.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    evaluate.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default 20; --confirm: the sweep's)"
    )
    evaluate.add_argument("--scales", type=_float_list, default=None, help="SEG scales (default 0.5,1,2,3,5)")
    evaluate.add_argument("--sigmas", type=_float_list, default=None, help="SEG blur σ values (default 1,4,16,inf)")
    evaluate.add_argument("--pag-scales", type=_float_list, default=None, help="PAG scales (default 1,3)")
    evaluate.add_argument("--cfg", type=float, default=None, help="CFG scale of the conditional runs (default 5)")
    evaluate.add_argument("--combined-scale", type=float, default=None, help="SEG / PAG scale with CFG (default 3)")
    evaluate.add_argument("--combined-sigmas", type=_float_list, default=None, help="σ with CFG (default: --sigmas)")
    evaluate.add_argument(
        "--references",
        type=int,
        default=None,
        help="real reference scenes per seed for FD / precision (default 4096; --confirm: the sweep's)",
    )
    evaluate.add_argument(
        "--confirm",
        action="store_true",
        help="measure the settings the committed sweep (--out/quality-TESTBED.json) picked on fresh seeds "
        "(--seed/--seeds, at least 6, disjoint from the sweep's) and test the declared comparisons",
    )
    evaluate.add_argument("--out", type=Path, default=Path("benchmarks"), help="folder for QUALITY.md, JSON, plots")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.add_argument("--model", help="a real model: compute FID and CLIP score on --prompts and --reference")
    evaluate.add_argument("--prompts", type=Path, help="a .txt file, one prompt per line (with --model)")
    evaluate.add_argument("--reference", type=Path, help="a folder of reference images for FID (with --model)")
    evaluate.add_argument("--size", type=int, default=1024, help="image size for --model (default 1024)")
    evaluate.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    demo = commands.add_parser("demo", help="offline comparison grid on a bundled model")
    demo.add_argument("--model", default=TOY_MODEL, help="bundled model: seg-toy (default) or seg-clutter")
    demo.add_argument("--out", type=Path, default=Path("outputs"))
    demo.add_argument("--overwrite", action="store_true")
    demo.add_argument("--quiet", action="store_true")
    return parser


def _settings(args: argparse.Namespace, base: GenerationSettings | None = None) -> GenerationSettings:
    fields = {field for field, _, _ in SETTING_OPTIONS.values()} | {"loras"}
    given = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    if base is None:
        given.setdefault("seed", secrets.randbelow(2**32))
        return GenerationSettings(**given)
    return base.replace(**given)


def _cache(args: argparse.Namespace):
    from .generate import PipelineCache

    return PipelineCache(
        device=args.device,
        offload=args.offload,
        config=args.config,
        allow_pickle=args.allow_pickle,
        progress=not args.quiet,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .generate import generate
    from .metadata import free_path, save_png, settings_from_png

    base = settings_from_png(args.from_image) if args.from_image else None
    settings = _settings(args, base)
    images = generate(_cache(args), settings)
    for image, single in tqdm(images, total=settings.num_images, desc="images", disable=args.quiet):
        if isinstance(image, list):  # a video model's frames
            from .video import save_video

            for path in save_video(image, free_path(args.out / f"seg-{single.seed}.mp4", args.overwrite), single):
                print(path)
            continue
        path = save_png(image, free_path(args.out / f"seg-{single.seed}.png", args.overwrite), single)
        print(path)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import parse_axis, parse_baselines, run_sweep

    x, y = parse_axis(args.x), parse_axis(args.y) if args.y else None
    grid, cells = run_sweep(
        _cache(args), _settings(args), x, y, parse_baselines(args.baselines), args.out, args.overwrite
    )
    print(grid)
    print(f"cells in {cells[0].parent} ({len(cells)} files)")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import MANIFEST, run_batch

    written, problems = run_batch(
        _cache(args), args.prompts, _settings(args), args.out, args.overwrite, random_seed=not hasattr(args, "seed")
    )
    print(f"{written} image(s) written; manifest: {args.out / MANIFEST}")
    if problems:
        print(f"{len(problems)} line(s) of {args.prompts.name} skipped; see the messages above.", file=sys.stderr)
    return 1 if problems else 0


def print_routes() -> None:
    """Which families SEG serves, and through which route."""
    from ..pipelines import FAMILY_TASKS, guider_families

    print("SEG pipeline classes, seg.enable_seg and `seg generate` (family: tasks):")
    for family, tasks in FAMILY_TASKS.items():
        print(f"  {family}: {', '.join(tasks)}")
    print("Modular Diffusers guider, seg.SmoothedEnergyGuidance (pipeline.update_components(guider=...)):")
    for family in guider_families():
        print(f"  {family}")


def cmd_info(args: argparse.Namespace) -> int:
    from .metadata import read_png_settings

    if args.image is None:
        print_routes()
        return 0
    text, record = read_png_settings(args.image)
    if text is None and record is None:
        raise ValueError(f"{args.image} carries no generation settings.")
    if text is not None:
        print(text)
    if record is not None:
        print(json.dumps(record, indent=2, sort_keys=True))
    return 0


def cmd_eval_real(args: argparse.Namespace) -> int:
    from ..metrics import evaluate_prompts, load_reference_images, metrics_table
    from ..pipelines import load_pipeline

    if not args.prompts or not args.reference:
        raise ValueError("seg eval --model needs --prompts FILE.txt and --reference FOLDER.")
    prompts = [line.strip() for line in args.prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    rows = evaluate_prompts(
        pipe,
        prompts,
        load_reference_images(args.reference, args.size),
        seed=args.seed,
        call={"num_inference_steps": args.steps, "height": args.size, "width": args.size},
        progress=not args.quiet,
    )
    table = metrics_table(rows, args.model, len(prompts))
    print(table)
    if args.out != Path("benchmarks/QUALITY.md"):
        args.out.write_text(table, encoding="utf-8")
    return 0


def _float_list(text: str) -> tuple[float, ...]:
    """'0.5,1,inf' → (0.5, 1.0, inf)."""
    return tuple(parse_sigma(part) for part in text.split(",") if part.strip())


def cmd_eval(args: argparse.Namespace) -> int:
    if args.model:
        return cmd_eval_real(args)
    import dataclasses
    import shlex

    from ..pipelines import resolve_device
    from ..toy.evaluate import SweepPlan, evaluate
    from ..toy.report import confirmation_markdown, sweep_markdown, write_reports
    from ..toy.testbeds import testbed

    bed = testbed(args.testbed)
    model_dir = args.model_dir or bed.model_dir
    common = dict(progress=not args.quiet, device=resolve_device(args.device))
    sizes = {"samples": args.samples, "steps": args.steps, "references": args.references}
    given_sizes = {key: value for key, value in sizes.items() if value is not None}
    seeds = range(args.seed, args.seed + args.seeds)
    if args.confirm:
        from ..toy.confirm import confirm

        sweep_file = args.out / f"quality-{bed.name}.json"
        if not sweep_file.exists():
            raise ValueError(f"--confirm needs the sweep's results in {sweep_file}: run the sweep first.")
        sweep = json.loads(sweep_file.read_text(encoding="utf-8"))
        results = confirm(model_dir, bed.features_beside(model_dir), sweep, seeds, **given_sizes, **common)
    else:
        given = {"scales": args.scales, "sigmas": args.sigmas, "pag_scales": args.pag_scales, "cfg": args.cfg}
        given.update(combined_scale=args.combined_scale, combined_sigmas=args.combined_sigmas)
        plan = dataclasses.replace(SweepPlan(), **{k: v for k, v in given.items() if v is not None})
        sizes = {"samples": 128, "steps": 20, "references": 4096, **given_sizes}
        results = evaluate(model_dir, bed.features_beside(model_dir), seeds=seeds, plan=plan, **sizes, **common)
    command = "seg " + shlex.join(str(part) for part in args.argv)
    written = write_reports(results, args.out, command)
    print(confirmation_markdown(results, command) if args.confirm else sweep_markdown(results, command))
    print("written: " + ", ".join(str(path) for path in written))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _, message = run_demo(args.out, progress=not args.quiet, overwrite=args.overwrite, model=args.model)
    print(message)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        from ..ui import launch
    except ImportError as error:
        raise ValueError(f"The web UI needs Gradio: pip install 'smoothed-energy-guidance[ui]' ({error}).") from None
    launch(args.model, host=args.host, port=args.port, share=args.share, device=args.device)
    return 0


COMMANDS = {
    "generate": cmd_generate,
    "sweep": cmd_sweep,
    "batch": cmd_batch,
    "info": cmd_info,
    "demo": cmd_demo,
    "eval": cmd_eval,
    "ui": cmd_ui,
}


def _signed_values_attached(argv: list[str]) -> list[str]:
    """``--temporal-sigma -inf`` → ``--temporal-sigma=-inf``: argparse takes a value such as ``-inf`` or ``-nan``
    for an option of its own and says "expected one argument"; joined, the value reaches its option's check."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else None
        if token in SETTING_OPTIONS and following is not None and following.startswith("-") and _is_number(following):
            joined.append(f"{token}={following}")
            index += 2
            continue
        joined.append(token)
        index += 1
    return joined


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``seg`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_signed_values_attached(argv))
    args.argv = argv  # recorded beside results (seg eval)
    # the loaders pass torch_dtype on purpose (older diffusers lack its new name); nothing to act on
    warnings.filterwarnings("ignore", message=r".*`torch_dtype` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"The `local_dir_use_symlinks` argument is deprecated")
    if getattr(args, "quiet", False):
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bars either
        diffusers_logging.set_verbosity_error()  # and no loader chatter; errors still arrive as one line
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileExistsError) as error:  # a ModelLoadError is a ValueError
        print(f"seg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seg {args.command}: interrupted; finished images are kept.", file=sys.stderr)
        return 130
