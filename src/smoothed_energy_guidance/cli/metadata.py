"""Settings inside PNGs: an A1111-style ``parameters`` chunk and a full JSON record."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .. import __version__
from .settings import GenerationSettings

JSON_KEY = "seg-settings"
VIDEO_SUFFIXES = (".mp4", ".webp")  # videos ``seg`` writes (cli/video.py), their records read back here
A1111_KEY = "parameters"
SAMPLER_NAMES = {
    "default": ("Default", None),
    "euler": ("Euler", None),
    "euler-a": ("Euler a", None),
    "dpm++2m": ("DPM++ 2M", None),
    "dpm++2m-karras": ("DPM++ 2M", "Karras"),
    "ddim": ("DDIM", None),
    "unipc": ("UniPC", None),
}


def _quote(value: str) -> str:
    """A1111 quotes values that contain its separators."""
    return json.dumps(value) if any(c in value for c in ',:"\n') else value


def infotext(settings: GenerationSettings, size: tuple[int, int]) -> str:
    """A1111's ``parameters`` text: prompt, ``Negative prompt:`` line, then ``Key: value`` pairs."""
    sampler, schedule = SAMPLER_NAMES.get(settings.scheduler, (settings.scheduler, None))
    pairs: list[tuple[str, Any]] = [("Steps", settings.steps), ("Sampler", sampler)]
    if schedule:
        pairs.append(("Schedule type", schedule))
    pairs += [
        ("CFG scale", settings.cfg),
        ("Seed", settings.seed),
        ("Size", f"{size[0]}x{size[1]}"),
        ("Model", Path(settings.model).name or settings.model),
        ("SEG scale", settings.seg_scale),
        ("SEG blur sigma", "inf" if math.isinf(settings.blur_sigma) else settings.blur_sigma),
        ("SEG layers", " ".join(settings.layers) or "default"),
        ("SEG interval", f"{settings.seg_start}-{settings.seg_end}"),
    ]
    if settings.init_image:
        pairs.append(("Denoising strength", settings.strength))
    for path, weight in settings.loras:
        pairs.append(("Lora", f"{Path(path).stem}:{weight}"))
    pairs.append(("Version", f"smoothed-energy-guidance {__version__}"))
    lines = [settings.prompt]
    if settings.negative_prompt:
        lines.append(f"Negative prompt: {settings.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(str(value))}" for key, value in pairs))
    return "\n".join(lines)


def free_path(path: Path, overwrite: bool = False) -> Path:
    """``path`` itself, or ``name-1.png``, ``name-2.png``… so nothing existing is overwritten."""
    if overwrite or not path.exists():
        return path
    for index in range(1, 1_000_000):
        candidate = path.with_name(f"{path.stem}-{index}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"No free file name next to {path}.")


def write_atomically(path: Path, write: Any) -> None:
    """Call ``write(temp_path)`` then rename, so a partial file never carries the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def settings_record(settings: GenerationSettings, extra: dict | None = None) -> str:
    """The JSON record every file ``seg`` writes carries (PNG text chunk, MP4 comment, WebP XMP)."""
    return json.dumps({"version": __version__, "settings": settings.to_json(), **(extra or {})}, sort_keys=True)


def save_png(image: Image.Image, path: Path, settings: GenerationSettings, extra: dict | None = None) -> Path:
    """Write ``image`` with its settings embedded, atomically. Returns the path written."""
    info = PngImagePlugin.PngInfo()
    info.add_text(A1111_KEY, infotext(settings, image.size))
    info.add_text(JSON_KEY, settings_record(settings, extra))
    write_atomically(path, lambda temp: image.save(temp, format="PNG", pnginfo=info))
    return path


def read_video_record(path: Path) -> str | None:
    """The JSON record text of an MP4 or WebP written by ``seg`` (None when it has none)."""
    if path.suffix.lower() == ".webp":
        with Image.open(path) as image:
            xmp = image.info.get("xmp")
        return xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else xmp
    try:
        import av
    except ImportError:
        raise RuntimeError("Reading MP4 settings needs PyAV: pip install av.") from None
    try:
        with av.open(str(path)) as container:
            return container.metadata.get("comment")
    except av.error.FFmpegError as error:
        raise ValueError(f"Cannot read video {path}: {error}.") from None


def read_png_settings(path: str | Path | BinaryIO) -> tuple[str | None, dict | None]:
    """The ``parameters`` text and the JSON record of a PNG (either may be None); for an MP4 or WebP
    written by ``seg``, its JSON record."""
    try:
        if isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in VIDEO_SUFFIXES:
            text = {JSON_KEY: read_video_record(Path(path))}
        else:
            with Image.open(path) as image:
                text = dict(getattr(image, "text", {}) or image.info)
    except FileNotFoundError:
        raise ValueError(f"Cannot read image {path}: no such file.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"Cannot read image {path}: not an image PIL can open ({error}).") from None
    record = text.get(JSON_KEY)
    if not record:
        return text.get(A1111_KEY), None
    try:
        parsed = json.loads(record)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"{path}: its '{JSON_KEY}' record is not valid JSON ({error}).") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{path}: its '{JSON_KEY}' record is not a JSON object.")
    return text.get(A1111_KEY), parsed


def settings_from_png(path: str | Path) -> GenerationSettings:
    """The settings a PNG written by ``seg`` was generated with.

    The record is untrusted input: anything malformed is one clear ``ValueError``, and it can only
    carry generation settings (safety options such as ``--allow-pickle`` are never read from it).
    """
    _, record = read_png_settings(path)
    if record is None:
        raise ValueError(f"{path} carries no smoothed-energy-guidance settings (no '{JSON_KEY}' text chunk).")
    settings = record.get("settings")
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: its '{JSON_KEY}' record has no 'settings' object; was it written by seg?")
    try:
        return GenerationSettings.from_json(settings)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
        raise ValueError(f"{path}: its '{JSON_KEY}' record holds unusable settings: {error}") from None
