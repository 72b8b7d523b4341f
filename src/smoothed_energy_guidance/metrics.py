"""FID and CLIP score of a SEG pipeline on your own prompts and reference images (torchmetrics).

On a user's machine the default extractors (Inception for FID, CLIP ViT-L/14 for the CLIP score)
download their weights once; tests pass tiny extractors instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm


@dataclass(frozen=True)
class EvalSetting:
    """One row of the table: a name and the pipeline call arguments that differ for it."""

    name: str
    call: dict[str, Any] = field(default_factory=dict)


DEFAULT_SETTINGS = (
    EvalSetting("CFG", {"seg_scale": 0.0}),
    EvalSetting("SEG σ=∞", {"guidance_scale": 1.0, "seg_scale": 3.0}),
    EvalSetting("CFG + SEG σ=∞", {"seg_scale": 3.0}),
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_reference_images(folder: Path, size: int) -> torch.Tensor:
    """Every image of ``folder`` (sorted), resized to ``size``², as (N, 3, size, size) uint8."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"No reference images ({', '.join(IMAGE_SUFFIXES)}) in {folder}.")
    images = [torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((size, size)))) for p in paths]
    return torch.stack(images).permute(0, 3, 1, 2).contiguous()


class _ProjectedFeatures(torch.nn.Module):
    """Gives torchmetrics the projected CLIP embeddings as tensors: transformers 5 returns them as the
    ``pooler_output`` of a model output, which torchmetrics 1.9 does not unwrap."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    @staticmethod
    def _tensor(output: Any) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


def clip_scorer(clip_model: str | Callable[[], tuple[Any, Any]]) -> Callable[[], tuple[Any, Any]]:
    """A (model, processor) factory for torchmetrics' CLIPScore from a hub id, folder or factory."""

    def load() -> tuple[Any, Any]:
        if callable(clip_model):
            model, processor = clip_model()
        else:
            from transformers import CLIPModel, CLIPProcessor

            model, processor = CLIPModel.from_pretrained(clip_model), CLIPProcessor.from_pretrained(clip_model)
        return _ProjectedFeatures(model.eval()), processor

    return load


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def evaluate_prompts(
    pipe: Any,
    prompts: Sequence[str],
    reference: torch.Tensor,
    settings: Sequence[EvalSetting] = DEFAULT_SETTINGS,
    fid_feature: int | torch.nn.Module = 2048,
    clip_model: str | Callable[[], tuple[Any, Any]] = "openai/clip-vit-large-patch14",
    seed: int = 0,
    batch: int = 4,
    call: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """FID against ``reference`` (uint8 (N, 3, H, W)) and CLIP score against ``prompts``, per setting.

    Every setting uses the same seeds; ``call`` holds arguments common to all (steps, size, …).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.multimodal.clip_score import CLIPScore

    rows = []
    clip = CLIPScore(model_name_or_path=clip_scorer(clip_model))
    for setting in tqdm(settings, desc="settings", disable=not progress):
        fid = FrechetInceptionDistance(feature=fid_feature, reset_real_features=False)
        fid.update(reference, real=True)
        clip.reset()
        for start in range(0, len(prompts), batch):
            chunk = list(prompts[start : start + batch])
            generator = torch.Generator().manual_seed(seed + start)
            arguments = {**(call or {}), "output_type": "pt", **setting.call}
            images = _to_uint8(pipe(prompt=chunk, generator=generator, **arguments).images.cpu())
            fid.update(images, real=False)
            clip.update(images, chunk)
        rows.append({"setting": setting.name, "fid": float(fid.compute()), "clip_score": float(clip.compute())})
    return rows


def metrics_table(rows: Sequence[dict[str, Any]], model: str, prompts: int) -> str:
    lines = [
        f"FID and CLIP score of `{model}` on {prompts} prompts (same seeds in every row).",
        "",
        "| setting | FID ↓ | CLIP score ↑ |",
        "|---|---|---|",
    ]
    lines += [f"| {r['setting']} | {r['fid']:.2f} | {r['clip_score']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"
