"""A small network trained on the scene domain: its penultimate features measure realism
(Fréchet distance, precision / recall) and its heads read the scene's attributes back
(caption adherence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .scenes import ATTRIBUTES, make_batch

FEATURE_DIM = 64


class SceneFeatures(nn.Module):
    """Conv net on 32×32 scenes: a 64-d feature and one classifier head per attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, FEATURE_DIM),
            nn.SiLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURE_DIM, len(values)) for name, values in ATTRIBUTES.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [-1, 1] → (B, 64)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path))

    @classmethod
    def load(cls, path: Path) -> SceneFeatures:
        from safetensors.torch import load_file

        model = cls()
        model.load_state_dict(load_file(str(path)))
        return model.eval()


def train_features(steps: int, batch: int, rng: np.random.Generator, progress: bool = True) -> SceneFeatures:
    """Attribute classification on fresh scenes, with light noise so generated images transfer."""
    model = SceneFeatures()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in tqdm(range(steps), desc="features", disable=not progress):
        images, scenes = make_batch(rng, batch)
        images = torch.from_numpy(images)
        images = images + 0.1 * torch.randn_like(images) * torch.rand(len(scenes), 1, 1, 1)
        logits = model(images)
        loss = sum(
            F.cross_entropy(logits[name], torch.tensor([s.labels()[name] for s in scenes])) for name in ATTRIBUTES
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()
