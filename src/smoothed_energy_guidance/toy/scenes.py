"""Procedural scenes with global structure: sky over ground at a straight horizon, one object.

Generated from a seed by numpy alone (no data set, no licence to track). A weak sampler gets the
structure wrong: wavy or doubled horizons, smeared objects, colours bleeding across the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 32
SKIES = {"blue": (70, 130, 220), "orange": (235, 140, 60), "gray": (150, 150, 160), "night": (20, 25, 60)}
GROUNDS = {"green": (60, 150, 60), "sand": (210, 190, 120), "snow": (235, 235, 240), "brown": (110, 75, 45)}
COLOURS = {
    "red": (220, 40, 40),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 180),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
    "cyan": (40, 200, 210),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"left": 0.25, "center": 0.5, "right": 0.75}
ATTRIBUTES = {
    "sky": tuple(SKIES),
    "ground": tuple(GROUNDS),
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": tuple(POSITIONS),
}


@dataclass(frozen=True)
class Scene:
    sky: str
    ground: str
    colour: str
    shape: str
    position: str
    horizon: float  # fraction of the height where the ground starts
    scale: float  # object radius as a fraction of the size

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on the {self.position}, {self.ground} ground, {self.sky} sky"

    def labels(self) -> dict[str, int]:
        return {name: values.index(getattr(self, name)) for name, values in ATTRIBUTES.items()}


def random_scene(rng: np.random.Generator) -> Scene:
    return Scene(
        sky=str(rng.choice(list(SKIES))),
        ground=str(rng.choice(list(GROUNDS))),
        colour=str(rng.choice(list(COLOURS))),
        shape=str(rng.choice(SHAPES)),
        position=str(rng.choice(list(POSITIONS))),
        horizon=float(rng.uniform(0.45, 0.7)),
        scale=float(rng.uniform(0.14, 0.22)),
    )


def render(scene: Scene, size: int = SIZE) -> np.ndarray:
    """(size, size, 3) uint8: a vertical sky gradient, flat ground, the object standing on the horizon."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    sky = np.array(SKIES[scene.sky], np.float32)
    image = sky * (0.75 + 0.35 * y[..., None])  # lighter towards the horizon
    ground = y >= scene.horizon
    image[ground] = np.array(GROUNDS[scene.ground], np.float32) * (0.9 + 0.2 * (y[ground, None] - scene.horizon))
    cx, r = POSITIONS[scene.position], scene.scale
    cy = scene.horizon - r * 0.9
    if scene.shape == "circle":
        mask = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    elif scene.shape == "square":
        mask = (abs(x - cx) <= r * 0.85) & (abs(y - cy) <= r * 0.85)
    else:
        top, bottom = cy - r, cy + r
        half_width = (y - top) / (2 * r) * r
        mask = (y >= top) & (y <= bottom) & (abs(x - cx) <= half_width)
    image[mask] = COLOURS[scene.colour]
    return np.clip(image, 0, 255).astype(np.uint8)


def make_batch(rng: np.random.Generator, count: int) -> tuple[np.ndarray, list[Scene]]:
    """``count`` scenes: images (count, 3, H, W) in [-1, 1] and their descriptions."""
    scenes = [random_scene(rng) for _ in range(count)]
    images = np.stack([render(s) for s in scenes]).astype(np.float32) / 127.5 - 1.0
    return images.transpose(0, 3, 1, 2), scenes
