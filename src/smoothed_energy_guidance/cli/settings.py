"""Everything that determines one generated image, as one record that round-trips through PNGs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..catalog import DEFAULT_MODEL


@dataclass(frozen=True)
class GenerationSettings:
    """Settings of one image (``num_images`` > 1 means seeds ``seed``, ``seed + 1``, …)."""

    prompt: str = ""
    negative_prompt: str = ""
    model: str = DEFAULT_MODEL
    width: int | None = None
    height: int | None = None
    steps: int = 30
    cfg: float = 5.0
    seg_scale: float = 3.0
    blur_sigma: float = math.inf
    layers: tuple[str, ...] = ()  # empty: the model family's default (mid for UNets)
    seg_start: float = 0.0
    seg_end: float = 1.0
    seed: int = 0
    num_images: int = 1
    scheduler: str = "default"
    loras: tuple[tuple[str, float], ...] = ()
    controlnet: str | None = None
    control_image: str | None = None
    controlnet_scale: float = 1.0
    init_image: str | None = None
    strength: float = 0.8
    mask: str | None = None
    dtype: str = "auto"
    frames: int | None = None  # video models: frames to make (None: the model's default)
    fps: int = 16  # video models: frames per second of the written MP4 / WebP
    temporal_sigma: float = 0.0  # video models: SEG blur σ along time (0: none; inf: the mean over frames)

    def __post_init__(self) -> None:
        check_field_types(self)
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "loras", tuple((p, float(w)) for p, w in self.loras))
        check_field_values(self)
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}.")
        if self.num_images < 1:
            raise ValueError(f"num-images must be at least 1, got {self.num_images}.")
        if self.mask and not self.init_image:
            raise ValueError("--mask needs --init-image (the picture to inpaint).")
        if (self.controlnet is None) != (self.control_image is None):
            raise ValueError("--controlnet and --control-image go together; pass both or neither.")
        if self.controlnet and self.init_image:
            raise ValueError("ControlNet with --init-image is not supported yet; use one or the other.")

    @property
    def task(self) -> str:
        if self.controlnet:
            return "controlnet"
        if self.mask:
            return "inpaint"
        return "img2img" if self.init_image else "text2img"

    def replace(self, **changes: Any) -> GenerationSettings:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["blur_sigma"] = _float_to_json(self.blur_sigma)
        record["temporal_sigma"] = _float_to_json(self.temporal_sigma)
        record["layers"] = list(self.layers)
        record["loras"] = [list(item) for item in self.loras]
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> GenerationSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(f"Unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        values = dict(record)
        if "blur_sigma" in values:
            values["blur_sigma"] = parse_sigma(values["blur_sigma"])
        if "temporal_sigma" in values:
            values["temporal_sigma"] = parse_temporal_sigma(values["temporal_sigma"])
        if isinstance(values.get("layers"), str):
            values["layers"] = parse_layers(values["layers"])
        return cls(**values)


_TEXT_FIELDS = ("prompt", "negative_prompt", "model", "scheduler", "dtype")
_OPTIONAL_TEXT_FIELDS = ("controlnet", "control_image", "init_image", "mask")
_INT_FIELDS = ("steps", "seed", "num_images", "fps")
_OPTIONAL_INT_FIELDS = ("width", "height", "frames")
_NUMBER_FIELDS = (
    "cfg",
    "seg_scale",
    "blur_sigma",
    "seg_start",
    "seg_end",
    "controlnet_scale",
    "strength",
    "temporal_sigma",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_problem(name: str, value: Any) -> str | None:
    """What is wrong with the type of field ``name``, or None."""
    if name in _TEXT_FIELDS or (name in _OPTIONAL_TEXT_FIELDS and value is not None):
        return None if isinstance(value, str) else "text"
    if name in _INT_FIELDS or (name in _OPTIONAL_INT_FIELDS and value is not None):
        return None if _is_int(value) else "a whole number"
    if name in _NUMBER_FIELDS:
        return None if _is_number(value) else "a number"
    if name == "layers":
        ok = isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)
        return None if ok else "a list of layer names"
    if name == "loras":
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str) and _is_number(item[1])
            for item in value
        )
        return None if ok else "a list of [path, weight] pairs"
    return None


def check_field_types(settings: GenerationSettings) -> None:
    """Every field has its declared type (batch files and PNG records are untrusted input)."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        expected = _type_problem(field.name, value)
        if expected:
            raise ValueError(f"{field.name.replace('_', '-')} must be {expected}, got {value!r}.")


def check_field_values(settings: GenerationSettings) -> None:
    """Ranges that would otherwise only fail once a model is loaded and rendering."""
    checks = [
        (math.isfinite(settings.cfg) and settings.cfg >= 0, f"cfg must be a finite number >= 0, got {settings.cfg}"),
        (
            math.isfinite(settings.seg_scale) and settings.seg_scale >= 0,
            f"seg-scale must be a finite number >= 0 (0 turns SEG off), got {settings.seg_scale}",
        ),
        (
            not math.isnan(settings.blur_sigma) and settings.blur_sigma > 0,
            f"blur-sigma must be > 0 or inf, got {settings.blur_sigma}",
        ),
        (
            0 <= settings.seg_start < settings.seg_end <= 1,
            f"the SEG interval must satisfy 0 <= start < end <= 1, got {settings.seg_start}-{settings.seg_end}",
        ),
        (0 < settings.strength <= 1, f"strength must be in (0, 1], got {settings.strength}"),
        (0 <= settings.seed < 2**63, f"seed must be in [0, 2**63), got {settings.seed}"),
        (
            all(side is None or side > 0 for side in (settings.width, settings.height)),
            f"width and height must be positive, got {settings.width}x{settings.height}",
        ),
        (settings.frames is None or settings.frames > 0, f"frames must be positive, got {settings.frames}"),
        (settings.fps > 0, f"fps must be positive, got {settings.fps}"),
        (
            not math.isnan(settings.temporal_sigma) and settings.temporal_sigma >= 0,
            f"temporal-sigma must be >= 0 (0: no blur along time) or inf, got {settings.temporal_sigma}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message + ".")


def _float_to_json(value: float) -> float | str:
    return "inf" if math.isinf(value) else value


def parse_sigma(value: str | float) -> float:
    """σ from text: a positive number or ``inf``."""
    if isinstance(value, str) and value.strip() in ("∞", "+∞"):
        return math.inf
    try:
        sigma = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"blur sigma must be a number or 'inf', got {value!r}.") from None
    if math.isnan(sigma) or sigma <= 0:
        raise ValueError(f"blur sigma must be > 0 (or 'inf'), got {value!r}.")
    return sigma


def parse_layers(value: str) -> tuple[str, ...]:
    """Layers from text: ``mid``, ``mid+up``, ``d4-d9+u0`` (``+`` or spaces between specs)."""
    return tuple(part for part in value.replace("+", " ").replace(",", " ").split() if part)


def parse_lora(value: str) -> tuple[str, float]:
    """``PATH[:WEIGHT]`` → (path, weight); weight defaults to 1."""
    path, sep, weight = value.rpartition(":")
    if sep and path and not weight.startswith(("/", "\\")):
        try:
            return path, float(weight)
        except ValueError:
            pass
    return value, 1.0


def _parse_loras(value: Any) -> tuple[tuple[str, float], ...]:
    if isinstance(value, str):
        return tuple(parse_lora(part) for part in value.split(";") if part.strip())
    return tuple(tuple(item) if not isinstance(item, str) else parse_lora(item) for item in value)


_TEXT_PARSERS: dict[str, Any] = {
    "width": int,
    "height": int,
    "steps": int,
    "seed": int,
    "num_images": int,
    "cfg": float,
    "seg_scale": float,
    "seg_start": float,
    "seg_end": float,
    "strength": float,
    "controlnet_scale": float,
    "blur_sigma": parse_sigma,
    "layers": parse_layers,
    "loras": _parse_loras,
}


def coerce_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Settings given as text (CSV cells, JSON strings) converted to their field types.

    Keys may use dashes or underscores (``blur-sigma`` or ``blur_sigma``); empty cells are dropped.
    """
    known = {f.name for f in dataclasses.fields(GenerationSettings)}
    result: dict[str, Any] = {}
    for key, value in values.items():
        name = key.strip().replace("-", "_")
        if name not in known:
            raise ValueError(f"Unknown setting {key!r}; known: {', '.join(sorted(known))}.")
        if value is None or value == "":
            continue
        parser = _TEXT_PARSERS.get(name)
        try:
            result[name] = parser(value) if parser and (isinstance(value, str) or name == "loras") else value
        except ValueError as error:
            raise ValueError(f"Bad value for {key}: {value!r} ({error}).") from None
    return result


def parse_temporal_sigma(value: str | float) -> float:
    """σ along time from text: 0 (no temporal blur), a positive number or ``inf`` (the mean over frames)."""
    if isinstance(value, str) and value.strip() in ("∞", "+∞"):
        return math.inf
    try:
        sigma = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"temporal sigma must be a number, 0 or 'inf', got {value!r}.") from None
    if math.isnan(sigma) or sigma < 0:
        raise ValueError(f"temporal sigma must be >= 0 (0: no blur along time; 'inf': the mean), got {value!r}.")
    return sigma
