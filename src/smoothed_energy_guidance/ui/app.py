"""The Gradio page: form, Compare, Sweep, drop-a-PNG, messages for errors."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import gradio as gr

from ..cli.demo import interface_defaults
from ..cli.settings import parse_sigma
from ..pipelines import TOY_MODEL
from .actions import (
    SIGMA_STEPS,
    Form,
    Studio,
    describe_error,
    form_from_png,
    form_values,
    sigma_from_slider,
    sigma_text,
    slider_from_sigma,
)

INTRO = (
    "**Smoothed Energy Guidance** pushes a sample away from a prediction whose self-attention queries are "
    "blurred by a Gaussian of width σ. *Compare* shows the same seed without and with SEG; *Sweep* shows "
    "σ = 1, 4, 16, 64, ∞. Every image downloads as a PNG carrying its settings; drop such a PNG below to "
    "load them back."
)

# The bundled models draw 32 × 32 and 64 × 64 images: show them large, with crisp pixels.
PAGE_CSS = """
#without-seg img, #with-seg img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
#gallery img { image-rendering: pixelated; }
"""


def _guarded(action):
    """Turn errors into messages on the page; the app keeps serving."""

    @functools.wraps(action)  # Gradio reads the signature to pass its progress tracker
    def run(*values: Any, **kwargs: Any):
        try:
            return action(*values, **kwargs)
        except gr.Error:
            raise
        except Exception as error:  # noqa: BLE001 - every failure becomes a message for the user
            raise gr.Error(describe_error(error)) from error

    return run


def build_app(default_model: str = TOY_MODEL, studio: Studio | None = None) -> gr.Blocks:
    """The page; ``studio`` holds the loaded models and output folder."""
    studio = studio or Studio()
    # settings the confirmation on fresh seeds did not find worse than their baseline (benchmarks/QUALITY.md)
    prompt_default, cfg_default, scale_default, sigma_default, why = interface_defaults()
    with gr.Blocks(title="Smoothed Energy Guidance") as app:
        gr.Markdown(f"{INTRO}\n\nDefaults: {why}.")
        with gr.Row():
            with gr.Column(scale=2):
                model = gr.Textbox(
                    default_model, label="Model (hub id, folder, .safetensors, tiny-random…)", elem_id="model"
                )
                prompt = gr.Textbox(prompt_default, label="Prompt", lines=2, elem_id="prompt")
                negative = gr.Textbox("", label="Negative prompt", elem_id="negative")
                with gr.Row():
                    width = gr.Number(32, label="Width", precision=0, elem_id="width")
                    height = gr.Number(32, label="Height", precision=0, elem_id="height")
                    steps = gr.Number(25, label="Steps", precision=0, elem_id="steps")
                    cfg = gr.Number(cfg_default, label="CFG scale", elem_id="cfg")
                    seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
            with gr.Column(scale=1):
                seg_scale = gr.Slider(0, 10, scale_default, step=0.1, label="SEG scale", elem_id="seg-scale")
                sigma_picker = gr.Slider(
                    0,
                    SIGMA_STEPS,
                    slider_from_sigma(sigma_default),
                    step=0.5,
                    elem_id="sigma-picker",
                    label=f"Pick blur σ = 2^position ({SIGMA_STEPS} = ∞)",
                )
                sigma = gr.Textbox(sigma_text(sigma_default), label="Blur σ (any number > 0, or inf)", elem_id="sigma")
                layers = gr.Textbox(
                    "", label="Layers (empty: model default, e.g. mid, d4-d9, blocks.7)", elem_id="layers"
                )
                with gr.Row():
                    start = gr.Slider(0, 1, 0.0, step=0.05, label="SEG from", elem_id="seg-start")
                    end = gr.Slider(0, 1, 1.0, step=0.05, label="SEG until", elem_id="seg-end")
        with gr.Row():
            compare_button = gr.Button("Compare", variant="primary", elem_id="compare")
            sweep_button = gr.Button("Sweep σ", elem_id="sweep")
        with gr.Row():
            without_image = gr.Image(
                label="Without SEG", type="filepath", format="png", height=320, elem_id="without-seg"
            )
            with_image = gr.Image(label="With SEG", type="filepath", format="png", height=320, elem_id="with-seg")
        gallery = gr.Gallery(label="σ sweep", columns=6, format="png", height=260, elem_id="gallery")
        downloads = gr.File(label="PNG files with their settings", file_count="multiple", elem_id="downloads")
        dropped = gr.File(label="Drop a PNG made by seg to load its settings", file_types=[".png"], elem_id="drop-png")

        fields = [model, prompt, negative, width, height, steps, cfg, seed, seg_scale, sigma, layers, start, end]

        def compare(*values: Any, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's idiom)
            without, with_seg = studio.compare(Form(*values))
            return str(without), str(with_seg), [str(without), str(with_seg)]

        def sweep(*values: Any, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
            cells = studio.sweep(Form(*values))
            return [(str(path), label) for path, label in cells], [str(path) for path, _ in cells]

        def load(file: Any):
            if file is None:
                return [gr.update() for _ in fields]
            return form_values(form_from_png(Path(getattr(file, "name", file))))

        def pick_sigma(position: float) -> str:
            return sigma_text(sigma_from_slider(position))

        def follow_sigma(text: str):
            try:  # the picker follows a typed or loaded σ; the text keeps the exact value
                return slider_from_sigma(parse_sigma(text))
            except ValueError:
                return gr.update()

        compare_button.click(_guarded(compare), fields, [without_image, with_image, downloads])
        sweep_button.click(_guarded(sweep), fields, [gallery, downloads])
        dropped.upload(_guarded(load), dropped, fields)
        sigma_picker.release(pick_sigma, sigma_picker, sigma)
        sigma.change(follow_sigma, sigma, sigma_picker)
    return app


def launch(
    model: str = TOY_MODEL,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    device: str = "auto",
    block: bool = True,
) -> gr.Blocks:
    """Start the app on ``host`` (loopback unless asked otherwise); sharing links are off by default."""
    app = build_app(model, Studio(device=device))
    app.queue().launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=not block, show_error=True, css=PAGE_CSS
    )
    return app
