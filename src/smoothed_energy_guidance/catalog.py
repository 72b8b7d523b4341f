"""The names users pick models and schedulers by, importable without diffusers: the command line's help and its
argument errors answer before any model library loads."""

from __future__ import annotations

#: Built-in offline model: a tiny SDXL-architecture pipeline with random weights.
TINY_RANDOM = "tiny-random"
#: The project's own small trained model (procedural scenes, 32×32), shipped with the package.
TOY_MODEL = "seg-toy"
#: What ``seg generate`` loads when no ``--model`` is given.
DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
#: Schedulers ``--scheduler`` offers besides the model's own (``pipelines.SCHEDULERS`` holds their classes).
SCHEDULER_NAMES = ("euler", "euler-a", "dpm++2m", "dpm++2m-karras", "ddim", "unipc")
