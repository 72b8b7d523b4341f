"""A small network trained on a testbed's domain: its penultimate features measure realism
(Fréchet distance, precision / recall) and its heads read the scene's attributes back
(caption adherence). It is trained on scenes from its own random stream, never the ones the
denoiser saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .testbeds import Testbed

FEATURE_DIM = 64


class SceneFeatures(nn.Module):
    """Conv net halving the scene down to 8 × 8: a 64-d feature and one classifier head per attribute."""

    def __init__(self, size: int, attributes: dict[str, tuple[str, ...]]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in (32, 64, 64)[: max(1, (size // 8).bit_length() - 1)]:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.SiLU()]
            layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU()]
            channels = width
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 8 * 8, FEATURE_DIM), nn.SiLU())
        self.attributes = attributes
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURE_DIM, len(values)) for name, values in attributes.items()})

    @classmethod
    def for_testbed(cls, bed: Testbed) -> SceneFeatures:
        return cls(bed.size, bed.domain.ATTRIBUTES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, size, size) in [-1, 1] → (B, 64)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path))

    @classmethod
    def load(cls, path: Path, bed: Testbed) -> SceneFeatures:
        from safetensors.torch import load_file

        model = cls.for_testbed(bed)
        model.load_state_dict(load_file(str(path)))
        return model.eval()


def train_features(
    bed: Testbed, steps: int, batch: int, rng: np.random.Generator, progress: bool = True
) -> SceneFeatures:
    """Attribute classification on fresh scenes, with light noise so generated images transfer."""
    model = SceneFeatures.for_testbed(bed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in tqdm(range(steps), desc="features", disable=not progress):
        images, scenes = bed.domain.make_batch(rng, batch)
        images = torch.from_numpy(images)
        images = images + 0.1 * torch.randn_like(images) * torch.rand(len(scenes), 1, 1, 1)
        logits = model(images)
        loss = sum(
            F.cross_entropy(logits[name], torch.tensor([s.labels()[name] for s in scenes])) for name in model.attributes
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()
