"""Videos with their settings: an H.264 MP4 (PyAV) and an animated WebP preview, each carrying the
same JSON record as a PNG's ``seg-settings`` chunk (MP4: the container's ``comment`` tag; WebP: XMP)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from PIL import Image

from .metadata import settings_record, write_atomically
from .settings import GenerationSettings


def _write_mp4(frames: list[Image.Image], path: Path, fps: int, comment: str) -> None:
    try:
        import av
    except ImportError:
        raise RuntimeError(
            "Writing MP4 needs PyAV: pip install 'smoothed-energy-guidance[video]' (or pip install av)."
        ) from None
    # H.264 in yuv420p needs even sides; a video model's sides are multiples of its patch grid anyway
    width, height = frames[0].size[0] // 2 * 2, frames[0].size[1] // 2 * 2
    with av.open(str(path), mode="w", format="mp4") as container:
        container.metadata["comment"] = comment
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            picture = frame.convert("RGB").crop((0, 0, width, height))
            container.mux(stream.encode(av.VideoFrame.from_image(picture)))
        container.mux(stream.encode())


_TOLD: set[tuple[int, int]] = set()


def _tell_rounded(asked: int, made: int) -> None:
    if (asked, made) not in _TOLD:
        _TOLD.add((asked, made))
        print(
            f"note: the model made {made} frames where {asked} were asked for (it rounds the count).", file=sys.stderr
        )


def save_video(
    frames: list[Image.Image], path: Path, settings: GenerationSettings, extra: dict | None = None
) -> list[Path]:
    """Write ``path`` (MP4) and an animated WebP preview beside it, atomically; returns both paths.

    Both carry the settings record (with ``extra``, e.g. a sweep's axes), which holds the frames really made:
    video pipelines round the count they are asked for (Wan and LTX-Video make 4k + 1 frames, CogVideoX
    4k + 1 or 8k + 1), and the user is told once when they did."""
    if settings.frames is not None and len(frames) != settings.frames:
        _tell_rounded(settings.frames, len(frames))
        settings = dataclasses.replace(settings, frames=len(frames))
    comment = settings_record(settings, extra)
    preview = path.with_suffix(".webp")
    write_atomically(path, lambda temp: _write_mp4(frames, temp, settings.fps, comment))
    write_atomically(
        preview,
        lambda temp: frames[0].save(
            temp,
            format="WEBP",
            save_all=True,
            append_images=frames[1:],
            duration=round(1000 / settings.fps),
            loop=0,
            xmp=comment.encode("utf-8"),
        ),
    )
    return [path, preview]
