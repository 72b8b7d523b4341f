"""The project's trained testbeds: one entry per bundled model, naming its domain, sizes and training budget.

``seg-toy`` (32 × 32 scenes: sky, ground, one object) is the quick demo; ``seg-clutter`` (64 × 64,
textures, two or three occluding objects) is hard enough that unguided samples are visibly poor, which
is where the paper says SEG helps. Both use SDXL's pipeline layout, so every SEG code path runs on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..pipelines import BUNDLED_MODELS
from ..testing import TEXT_2_HIDDEN, TEXT_HIDDEN
from . import clutter, scenes


@dataclass(frozen=True)
class TextEncoders:
    """Sizes of the two CLIP text encoders trained from scratch with the testbed."""

    hidden: tuple[int, int] = (TEXT_HIDDEN, TEXT_2_HIDDEN)
    layers: int = 2
    intermediate: int = 37
    projection: int = 32  # the pooled embedding SDXL adds to the time embedding


@dataclass(frozen=True)
class Measured:
    """Settings picked by a testbed's committed quality sweep (benchmarks/quality-<name>.json) and what the
    confirmation on fresh seeds (benchmarks/confirmation-<name>.json) said of them; a test recomputes both.

    ``seg``: (scale, σ) with the lowest mean unconditional FD; ``cfg_seg``: (CFG, SEG scale, σ) of the
    CFG + SEG setting with the lowest mean conditional FD. The verdicts ("better", "worse" or "no difference
    detected", Holm-adjusted) compare ``seg`` with vanilla sampling, the paper's default (scale 3, σ = ∞) with
    vanilla sampling, and ``cfg_seg`` with CFG alone.
    """

    seg: tuple[float, float]
    cfg_seg: tuple[float, float, float]
    seg_vs_vanilla: str
    paper_vs_vanilla: str
    cfg_seg_vs_cfg: str


@dataclass(frozen=True)
class Testbed:
    name: str
    domain: ModuleType  # SIZE, ATTRIBUTES, random_scene, render, make_batch
    unet: dict[str, Any]  # UNet2DConditionModel arguments beyond the shared SDXL layout
    vae_channels: tuple[int, int]
    measured: Measured
    training: dict[str, Any] = field(default_factory=dict)  # TrainConfig defaults for the shipped weights
    text: TextEncoders = TextEncoders()

    @property
    def size(self) -> int:
        return self.domain.SIZE

    @property
    def model_dir(self) -> Path:
        return BUNDLED_MODELS[self.name]

    @property
    def features_file(self) -> Path:
        """The scene-feature network shipped beside the model, trained on held-out scenes."""
        return self.features_beside(self.model_dir)

    def features_beside(self, model_dir: Path) -> Path:
        """Where the feature network of this testbed's model in ``model_dir`` is saved: beside the folder."""
        return Path(model_dir).parent / f"{self.name}-features.safetensors"


TESTBEDS = {
    "seg-toy": Testbed(
        "seg-toy",
        scenes,
        unet=dict(block_out_channels=(48, 96), attention_head_dim=(4, 4), transformer_layers_per_block=(1, 2)),
        vae_channels=(32, 32),
        measured=Measured(
            seg=(3.0, 1.0),
            cfg_seg=(5.0, 3.0, 1.0),
            seg_vs_vanilla="better",
            paper_vs_vanilla="worse",
            cfg_seg_vs_cfg="worse",
        ),
        training=dict(vae_steps=800, unet_steps=3500, feature_steps=800, batch=32),
    ),
    "seg-clutter": Testbed(
        "seg-clutter",
        clutter,
        # SEG's default layer (mid) sees the 16 × 16 grid of the 32 × 32 latent
        unet=dict(block_out_channels=(64, 128), attention_head_dim=(8, 8), transformer_layers_per_block=(1, 1)),
        vae_channels=(32, 48),
        measured=Measured(
            seg=(3.0, 4.0),
            cfg_seg=(5.0, 3.0, 1.0),
            seg_vs_vanilla="no difference detected",
            paper_vs_vanilla="worse",
            cfg_seg_vs_cfg="no difference detected",
        ),
        training=dict(vae_steps=500, text_steps=400, unet_steps=2000, feature_steps=800, batch=16),
        # captions of 70 bytes naming seven attributes need deeper encoders than the toy's
        text=TextEncoders(hidden=(64, 96), layers=3, intermediate=256, projection=64),
    ),
}


def testbed(name: str) -> Testbed:
    try:
        return TESTBEDS[name]
    except KeyError:
        raise ValueError(f"Unknown testbed {name!r}; choose one of {', '.join(TESTBEDS)}.") from None


def testbed_of(model_dir: Path) -> Testbed:
    """The testbed a trained model folder belongs to, read from its sample size."""
    import json

    config = json.loads((Path(model_dir) / "vae" / "config.json").read_text(encoding="utf-8"))
    for bed in TESTBEDS.values():
        if bed.size == config["sample_size"]:
            return bed
    raise ValueError(f"{model_dir} is not a model of any testbed ({', '.join(TESTBEDS)}).")
