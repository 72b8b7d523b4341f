"""Model families as declarative records, and everything derived from their table.

The table (:mod:`.table`) is the one place a family's facts live: its denoiser classes, block stacks, token
layouts, grid reader, how its pipelines run CFG, where SEG's perturbed rows join, and its diffusers pipelines
by task. The SEG classes, the CLI's family detection and tasks, ``seg info`` and every message that lists
families read it from here. Imports only torch (through the grid readers), never diffusers.
"""

from __future__ import annotations

from typing import Any

from .records import Cfg, Family, PerturbedRows, Stack, Task, TokenLayout
from .table import FAMILIES

__all__ = [
    "FAMILIES",
    "Cfg",
    "Family",
    "PerturbedRows",
    "Stack",
    "Task",
    "TokenLayout",
    "cli_family_tasks",
    "family_of_denoiser",
    "family_key_of_pipeline_class",
    "family_of_seg_class",
    "guider_family_names",
    "seg_class_hosts",
    "supported_pipelines_text",
]


def family_of_denoiser(model: Any) -> Family | None:
    """The family whose denoiser classes name ``model``'s class, else its nearest base class that one names
    (the class itself first: Flux.2's transformer also inherits a mixin named for Flux.1's)."""
    for cls in type(model).__mro__:
        for family in FAMILIES:
            if any(cls.__name__.startswith(prefix) for prefix in family.denoiser_classes):
                return family
    return None


def _pipeline_prefixes() -> list[tuple[str, str | None]]:
    """(diffusers pipeline class-name prefix, CLI family key or None for unsupported), most specific first."""
    pairs: list[tuple[str, str | None]] = []
    for family in FAMILIES:
        pairs += [(prefix, key) for key, prefixes in family.pipeline_prefixes.items() for prefix in prefixes]
        pairs += [(prefix, None) for prefix in family.unsupported_pipeline_prefixes]
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def family_key_of_pipeline_class(name: str) -> str | None:
    """``StableDiffusionXLPipeline`` → ``"sdxl"`` and so on; None for pipelines SEG does not run."""
    return next((key for prefix, key in _pipeline_prefixes() if name.startswith(prefix)), None)


def cli_family_tasks() -> dict[str, dict[str, str]]:
    """CLI family key → task → SEG class name, for the tasks ``seg generate`` offers; a key's first task is
    the one its models load as."""
    tasks: dict[str, dict[str, str]] = {}
    for family in FAMILIES:
        for key, task, entry in family.tasks():
            if entry.cli:
                tasks.setdefault(key, {})[task] = entry.seg_class
    return tasks


def family_of_seg_class(name: str) -> Family | None:
    """The family whose table lists a SEG class of this name."""
    return next((f for f in FAMILIES for _, _, entry in f.tasks() if entry.seg_class == name), None)


def seg_class_hosts() -> dict[str, str]:
    """SEG class name → the diffusers pipeline class it extends, for every SEG class."""
    return {entry.seg_class: entry.diffusers_class for family in FAMILIES for _, _, entry in family.tasks()}


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def supported_pipelines_text() -> str:
    """The families whose diffusers pipelines SEG runs, for messages: images, then video."""
    images = [family.label for family in FAMILIES if family.has_pipelines and not family.video]
    videos = [family.label for family in FAMILIES if family.has_pipelines and family.video]
    return ", ".join(images) + ", and video: " + _listed(videos)


def guider_family_names() -> list[str]:
    """Every family the guider serves (every modular pipeline built on one of them)."""
    names = [f"{family.name} (UNet)" if family.architecture == "unet" else family.name for family in FAMILIES]
    return [name for name, family in zip(names, FAMILIES, strict=True) if family.guider]
