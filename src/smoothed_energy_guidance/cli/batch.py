"""Many prompts from a file: resumable, atomic per image, sharded over ``accelerate launch`` processes."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .generate import PipelineCache
from .metadata import read_png_settings, save_png, write_atomically
from .settings import GenerationSettings, coerce_overrides

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class BatchItem:
    """One prompt of a batch file, named after its line so reruns find it again."""

    id: str
    line: int
    settings: GenerationSettings
    random_seed: bool = False  # neither the line nor the command chose the seed

    def image_paths(self, out: Path) -> list[Path]:
        return [out / f"{self.id}_{k}.png" for k in range(self.settings.num_images)]


def _rows(path: Path) -> list[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise ValueError(f"{path}: a CSV batch file needs a header row with a 'prompt' column.")
        return [(reader.line_num, row) for row in reader]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            rows.append((number, line))
    return rows


def _overrides(path: Path, row: Any) -> dict[str, Any]:
    if path.suffix == ".jsonl":
        try:
            record = json.loads(row)
        except json.JSONDecodeError as error:
            raise ValueError(f"not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError('each line must be a JSON object with a "prompt" string')
        return coerce_overrides(record)
    if path.suffix == ".csv":
        extra = row.pop(None, None)  # csv.DictReader files cells beyond the header under None
        if extra:
            raise ValueError(f"{len(extra)} more cell(s) than the header has columns ({extra!r})")
        return coerce_overrides(dict(row))
    return {"prompt": row.strip()}


def read_batch(path: Path, base: GenerationSettings, random_seed: bool = False) -> tuple[list[BatchItem], list[str]]:
    """Items of a ``.txt``, ``.jsonl`` or ``.csv`` file, and a message per malformed line.

    ``random_seed``: ``base.seed`` was drawn at random for this run (no ``--seed``).
    """
    if path.suffix not in (".txt", ".jsonl", ".csv"):
        raise ValueError(f"{path}: batch files must end in .txt, .jsonl or .csv.")
    if not path.is_file():
        raise ValueError(f"Batch file {path} was not found.")
    items, problems = [], []
    for number, row in _rows(path):
        try:
            overrides = _overrides(path, row)
            settings = base.replace(**overrides)
        except (ValueError, TypeError) as error:
            problems.append(f"{path.name}:{number}: skipped: {error}")
            continue
        items.append(BatchItem(f"item-{number:05d}", number, settings, random_seed and "seed" not in overrides))
    return items, problems


def shard(items: list[BatchItem], rank: int, world: int) -> list[BatchItem]:
    """This process's share: every ``world``-th item from ``rank``, so no item is done twice."""
    return items[rank::world]


def remove_stale_partials(items: list[BatchItem], out: Path) -> None:
    """Delete temp files an interrupted run left for these items (never a finished image)."""
    for item in items:
        for path in item.image_paths(out):
            for stale in out.glob(f".{path.name}.*.partial"):
                stale.unlink(missing_ok=True)


def write_manifest(items: list[BatchItem], out: Path) -> Path:
    """Rebuild ``manifest.jsonl`` from the finished images, in file order, each once."""
    lines = []
    for item in items:
        for path in item.image_paths(out):
            if path.exists():
                _, record = read_png_settings(path)
                lines.append(json.dumps({"item": item.id, "line": item.line, "image": path.name, **(record or {})}))
    manifest = out / MANIFEST
    write_atomically(manifest, lambda temp: temp.write_text("".join(f"{line}\n" for line in lines), "utf-8"))
    return manifest


def finished_with(path: Path, settings: GenerationSettings, any_seed: bool = False) -> bool:
    """Whether ``path`` is an image this batch made with exactly ``settings`` (so it need not be redone).

    ``any_seed``: the seed was drawn at random, so the one the image was made with counts as chosen.
    """
    if not path.exists():
        return False
    try:
        _, record = read_png_settings(path)
        made_with = GenerationSettings.from_json(record["settings"])
        return (made_with.replace(seed=settings.seed) if any_seed else made_with) == settings
    except (ValueError, TypeError, KeyError, AttributeError):
        return False  # unreadable, foreign or malformed: made again


def run_batch(
    cache: PipelineCache,
    path: Path,
    base: GenerationSettings,
    out: Path,
    overwrite: bool = False,
    random_seed: bool = False,
) -> tuple[int, list[str]]:
    """Generate every item of this process's shard that has no image made with its current settings.

    An existing image whose recorded settings differ from its line's (an edited prompt, changed
    options) is made again and marked ``"redone": true``; ``overwrite`` redoes every image. With
    ``random_seed`` (no ``--seed``), lines without their own seed keep the seed of an existing image.
    Returns (images written, problems).
    """
    from accelerate import PartialState

    from ..pipelines import resolve_device

    # on CPU, accelerate only joins the launched processes into one group when told it is CPU work
    state = PartialState(cpu=resolve_device(cache.device) == "cpu")
    if state.num_processes > 1 and state.device.type == "cuda":
        cache.device = str(state.device)  # one GPU per process
    items, problems = read_batch(path, base, random_seed)
    if state.is_main_process:
        for problem in problems:
            print(problem, file=sys.stderr)
    written = 0
    mine = shard(items, state.process_index, state.num_processes)
    remove_stale_partials(mine, out)
    todo = [
        (item, single, image_path)
        for item in mine
        for k, image_path in enumerate(item.image_paths(out))
        for single in [item.settings.replace(seed=item.settings.seed + k, num_images=1)]
        if overwrite or not finished_with(image_path, single, item.random_seed)
    ]
    for item, single, image_path in tqdm(
        todo, desc=f"batch[{state.process_index}]", unit="image", disable=not cache.progress
    ):
        extra = {"item": item.id, "line": item.line, "process": state.process_index}
        if image_path.exists():
            extra["redone"] = True  # replaced an image made with other settings (or --overwrite)
        save_png(cache.render(single), image_path, single, extra)
        written += 1
    state.wait_for_everyone()
    if state.is_main_process:
        write_manifest(items, out)
    return written, problems
