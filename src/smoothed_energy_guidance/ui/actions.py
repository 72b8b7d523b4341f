"""What the web UI's buttons do, free of Gradio so it can be tested and reused directly."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cli.generate import PipelineCache
from ..cli.metadata import free_path, save_png, settings_from_png
from ..cli.settings import GenerationSettings, parse_layers, parse_sigma

#: The σ picker slider is exponential: position p gives σ = 2**p, and its last position is ∞. The
#: σ text field next to it holds the exact value (any σ > 0, or inf), so a PNG's σ survives a reload.
SIGMA_STEPS = 10
SWEEP_SIGMAS = (1.0, 4.0, 16.0, 64.0, math.inf)


def sigma_from_slider(position: float) -> float:
    """Slider position → σ: 2**position, and ∞ at the top end.

    >>> sigma_from_slider(2), sigma_from_slider(SIGMA_STEPS)
    (4.0, inf)
    """
    return math.inf if position >= SIGMA_STEPS else 2.0 ** float(position)


def slider_from_sigma(sigma: float) -> float:
    """The picker position nearest to σ (σ itself is kept exactly in the text field)."""
    return SIGMA_STEPS if math.isinf(sigma) else max(0.0, min(SIGMA_STEPS - 0.5, math.log2(sigma)))


def sigma_text(sigma: float) -> str:
    """σ as the text field shows it: ``inf``, or the float's shortest exact form (``0.5``, ``9000.0``).

    >>> sigma_text(float("inf")), sigma_text(0.1), parse_sigma(sigma_text(0.1)) == 0.1
    ('inf', '0.1', True)
    """
    return "inf" if math.isinf(sigma) else repr(float(sigma))


@dataclass
class Form:
    """The values of the page's form, in the order the page lists them."""

    model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg: float
    seed: int
    seg_scale: float
    sigma: str  # exact σ as text: a number > 0, or inf / ∞
    layers: str
    seg_start: float
    seg_end: float

    def settings(self) -> GenerationSettings:
        return GenerationSettings(
            model=self.model.strip(),
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=int(self.width) or None,  # 0: the model's default size
            height=int(self.height) or None,
            steps=int(self.steps),
            cfg=float(self.cfg),
            seed=int(self.seed),
            seg_scale=float(self.seg_scale),
            blur_sigma=parse_sigma(self.sigma),
            layers=parse_layers(self.layers or ""),
            seg_start=float(self.seg_start),
            seg_end=float(self.seg_end),
        )

    @classmethod
    def from_settings(cls, settings: GenerationSettings) -> Form:
        return cls(
            settings.model,
            settings.prompt,
            settings.negative_prompt,
            settings.width or 0,
            settings.height or 0,
            settings.steps,
            settings.cfg,
            settings.seed,
            settings.seg_scale,
            sigma_text(settings.blur_sigma),
            " ".join(settings.layers),
            settings.seg_start,
            settings.seg_end,
        )


@dataclass
class Studio:
    """Holds loaded models between clicks and writes every image as a PNG with its settings."""

    device: str = "auto"
    out: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="seg-ui-")))
    cache: PipelineCache | None = None

    def __post_init__(self) -> None:
        self.cache = self.cache or PipelineCache(device=self.device, progress=True)

    def render(self, settings: GenerationSettings, name: str) -> Path:
        image = self.cache.render(settings)
        return save_png(image, free_path(self.out / f"{name}-{settings.seed}.png"), settings)

    def compare(self, form: Form) -> tuple[Path, Path]:
        """The same seed without SEG and with SEG."""
        settings = form.settings()
        without = self.render(settings.replace(seg_scale=0.0), "without-seg")
        return without, self.render(settings, "with-seg")

    def sweep(self, form: Form) -> list[tuple[Path, str]]:
        """The same seed over σ = 1, 4, 16, 64, ∞ (and without SEG first)."""
        settings = form.settings()
        cells = [(self.render(settings.replace(seg_scale=0.0), "sweep-off"), "without SEG")]
        for sigma in SWEEP_SIGMAS:
            label = "∞" if math.isinf(sigma) else f"{sigma:g}"
            path = self.render(settings.replace(blur_sigma=sigma), f"sweep-sigma-{sigma:g}")
            cells.append((path, f"SEG σ = {label}"))
        return cells


def form_from_png(path: str | Path) -> Form:
    """The form values stored in a PNG written by this project (CLI or UI)."""
    return Form.from_settings(settings_from_png(path))


def describe_error(error: BaseException) -> str:
    """A message for the page: what went wrong and, where known, what to do."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return "Out of memory: lower the size, the number of steps or use a smaller model, then try again."
    return str(error)


def form_values(form: Form) -> list[Any]:
    return [getattr(form, name) for name in Form.__dataclass_fields__]
