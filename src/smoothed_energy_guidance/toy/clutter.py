"""Cluttered 64 × 64 scenes: textured sky and ground, two or three patterned objects that occlude
each other in depth order. The harder testbed's domain (``seg-clutter``).

A weak sampler fails here in ways a reader can see: broken textures, objects melted into each other or
into the ground, wrong occlusion, horizons that wander. The caption names the count, the front object
(pattern, colour, shape, position), the ground and the sky; it fits the 75 characters the bundled byte
tokenizer reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenes import COLOURS, SHAPES  # the same objects as the toy's scenes, in new surroundings

SIZE = 64
SKIES = ("blue", "sunset", "night", "gray")
GROUNDS = ("grass", "sand", "tiles", "water")
PATTERNS = ("plain", "striped", "dotted")
POSITIONS = {"left": 0.25, "center": 0.5, "right": 0.75}
COUNTS = ("2", "3")
ATTRIBUTES = {
    "count": COUNTS,
    "pattern": PATTERNS,
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": tuple(POSITIONS),
    "ground": GROUNDS,
    "sky": SKIES,
}


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    pattern: str
    x: float  # centre, as a fraction of the width
    base: float  # where it stands, as a fraction of the height
    radius: float  # as a fraction of the size


@dataclass(frozen=True)
class ClutterScene:
    sky: str
    ground: str
    horizon: float
    things: tuple[Thing, ...]  # back to front; the last one is the front object the caption names
    texture_seed: int  # phases of the clouds, stars, grass and waves

    @property
    def front(self) -> Thing:
        return self.things[-1]

    @property
    def position(self) -> str:
        return min(POSITIONS, key=lambda name: abs(POSITIONS[name] - self.front.x))

    @property
    def caption(self) -> str:
        f = self.front
        return (
            f"{len(self.things)} shapes, front {f.pattern} {f.colour} {f.shape} {self.position}, "
            f"{self.ground} ground, {self.sky} sky"
        )

    def labels(self) -> dict[str, int]:
        f = self.front
        values = {
            "count": str(len(self.things)),
            "pattern": f.pattern,
            "colour": f.colour,
            "shape": f.shape,
            "position": self.position,
            "ground": self.ground,
            "sky": self.sky,
        }
        return {name: ATTRIBUTES[name].index(values[name]) for name in ATTRIBUTES}


def _thing(rng: np.random.Generator, x: float, base: float, radius: float) -> Thing:
    return Thing(
        colour=str(rng.choice(list(COLOURS))),
        shape=str(rng.choice(SHAPES)),
        pattern=str(rng.choice(PATTERNS)),
        x=x,
        base=base,
        radius=radius,
    )


def random_scene(rng: np.random.Generator) -> ClutterScene:
    horizon = float(rng.uniform(0.35, 0.5))
    count = int(rng.integers(2, 4))
    back = []
    for _ in range(count - 1):
        x, depth, radius = rng.uniform(0.15, 0.85), rng.uniform(0.05, 0.2), rng.uniform(0.1, 0.15)
        back.append(_thing(rng, float(x), horizon + float(depth), float(radius)))
    back.sort(key=lambda t: t.base)  # farther (higher) objects are drawn first
    position = str(rng.choice(list(POSITIONS)))
    x, base, radius = POSITIONS[position] + rng.uniform(-0.05, 0.05), rng.uniform(0.8, 0.92), rng.uniform(0.16, 0.22)
    front = _thing(rng, float(x), float(base), float(radius))
    return ClutterScene(
        sky=str(rng.choice(SKIES)),
        ground=str(rng.choice(GROUNDS)),
        horizon=horizon,
        things=(*back, front),
        texture_seed=int(rng.integers(0, 2**31)),
    )


def _sky(kind: str, y: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "blue":
        image = np.array([70, 130, 220], np.float32) * (0.75 + 0.35 * y[..., None])
        for _ in range(3):  # soft clouds
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0.05, 0.3), rng.uniform(0.06, 0.12)
            cloud = np.exp(-(((x - cx) / (2 * r)) ** 2 + ((y - cy) / r) ** 2))[..., None]
            image = image * (1 - cloud) + 245 * cloud
        return image
    if kind == "sunset":
        top, bottom = np.array([120, 60, 140], np.float32), np.array([250, 160, 70], np.float32)
        return top + (bottom - top) * np.clip(y * 2, 0, 1)[..., None]
    if kind == "night":
        image = np.broadcast_to(np.array([20, 25, 60], np.float32), (*y.shape, 3)).copy()
        stars = rng.random(y.shape) < 0.03
        image[stars] = 230
        return image
    shade = 150 + 12 * np.sin(7 * x + rng.uniform(0, 6)) * np.sin(5 * y)  # overcast gray, banded
    return np.stack([shade, shade, shade + 10], -1)


def _ground(kind: str, y: np.ndarray, x: np.ndarray, horizon: float, rng: np.random.Generator) -> np.ndarray:
    depth = np.clip((y - horizon) / (1 - horizon), 0, 1)[..., None]
    if kind == "grass":
        blades = rng.random((1, y.shape[1])) * 0.35
        return np.array([60, 150, 60], np.float32) * (0.75 + blades[..., None] + 0.2 * depth)
    if kind == "sand":
        speckle = rng.random(y.shape)[..., None] * 0.25
        return np.array([210, 190, 120], np.float32) * (0.8 + speckle)
    if kind == "tiles":  # a checkerboard whose rows grow towards the viewer
        rows = np.floor(np.sqrt(np.clip(y - horizon, 0, None)) * 10)
        cols = np.floor(x * (4 + 8 * depth[..., 0]) + 0.5)
        light = ((rows + cols) % 2)[..., None]
        return np.array([90, 90, 100], np.float32) + light * np.array([130, 120, 110], np.float32)
    waves = 0.5 + 0.5 * np.sin(40 * y + 3 * np.sin(6 * x + rng.uniform(0, 6)))
    return np.array([30, 80, 170], np.float32) * (0.8 + 0.4 * waves[..., None])


def _mask(thing: Thing, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    r, cx = thing.radius, thing.x
    cy = thing.base - r
    if thing.shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    if thing.shape == "square":
        return (abs(x - cx) <= r * 0.85) & (abs(y - cy) <= r * 0.85)
    top = cy - r
    return (y >= top) & (y <= thing.base) & (abs(x - cx) <= (y - top) / 2)


def _paint(thing: Thing, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    colour = np.array(COLOURS[thing.colour], np.float32)
    contrast = np.array([20, 20, 20] if colour.mean() > 128 else [235, 235, 235], np.float32)
    if thing.pattern == "striped":
        mark = (np.floor((x - thing.x) / (thing.radius * 0.4)) % 2) == 0
    elif thing.pattern == "dotted":
        cell = thing.radius * 0.6
        u, v = (x - thing.x) / cell, (y - thing.base) / cell
        mark = (u - np.round(u)) ** 2 + (v - np.round(v)) ** 2 < 0.09
    else:
        mark = np.zeros(y.shape, bool)
    return np.where(mark[..., None], contrast, colour)


def render(scene: ClutterScene, size: int = SIZE) -> np.ndarray:
    """(size, size, 3) uint8: the sky, the ground below the horizon, the objects back to front."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rng = np.random.default_rng(scene.texture_seed)
    image = _sky(scene.sky, y, x, rng)
    ground = y >= scene.horizon
    image[ground] = _ground(scene.ground, y, x, scene.horizon, rng)[ground]
    for thing in scene.things:
        mask = _mask(thing, y, x)
        image[mask] = _paint(thing, y, x)[mask]
    return np.clip(image, 0, 255).astype(np.uint8)


def make_batch(rng: np.random.Generator, count: int) -> tuple[np.ndarray, list[ClutterScene]]:
    """``count`` scenes: images (count, 3, H, W) in [-1, 1] and their descriptions."""
    scenes = [random_scene(rng) for _ in range(count)]
    images = np.stack([render(s) for s in scenes]).astype(np.float32) / 127.5 - 1.0
    return images.transpose(0, 3, 1, 2), scenes
