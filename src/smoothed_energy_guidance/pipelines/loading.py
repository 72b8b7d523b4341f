"""Loading SEG pipelines from hub ids, local diffusers folders or single-file checkpoints."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from ..catalog import DEFAULT_MODEL, TINY_RANDOM, TOY_MODEL
from ..families import cli_family_tasks, family_key_of_pipeline_class
from .enable import SUPPORTED_FAMILIES
from .registry import SEG_CLASSES

SEG_CLASSES_BY_NAME = {cls.__name__: cls for cls in SEG_CLASSES.values()}

_WEIGHTS = Path(__file__).resolve().parents[1] / "toy" / "weights"
TOY_MODEL_DIR = _WEIGHTS / TOY_MODEL
#: Every trained model shipped with the package (SDXL layout): the toy and the harder 64×64 testbed.
BUNDLED_MODELS = {TOY_MODEL: TOY_MODEL_DIR, "seg-clutter": _WEIGHTS / "seg-clutter"}
#: Tiny random models of every family, for offline checks: name → family.
TINY_MODELS = {TINY_RANDOM: "sdxl", "tiny-random-sd": "sd", "tiny-random-sd3": "sd3", "tiny-random-flux": "flux"}

# the classes of the schedulers catalog.SCHEDULER_NAMES offers, in its order
SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {}),
    "dpm++2m-karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "ddim": (DDIMScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
}

#: The SEG pipeline class of each CLI family and task, from the family table; a family's first task is the one
#: its models load as.
FAMILY_TASKS: dict[str, dict[str, type]] = {
    family: {task: SEG_CLASSES_BY_NAME[name] for task, name in tasks.items()}
    for family, tasks in cli_family_tasks().items()
}
TASK_CLASSES = FAMILY_TASKS["sdxl"]
# single-file key markers, checked in this order
_SINGLE_FILE_MARKERS = (
    ("sdxl", "conditioner.embedders.1."),
    ("sd3", "joint_blocks."),
    ("flux", "double_blocks."),
    ("sd", "model.diffusion_model.input_blocks."),
)


def family_of_class_name(name: str) -> str | None:
    """``StableDiffusionXLPipeline`` → ``sdxl`` and so on (the family table's prefixes); None for other pipelines."""
    return family_key_of_pipeline_class(name)


def base_task(family: str) -> str:
    """The task a family's models load as (text2img, or inpaint for Flux Fill, img2img for Qwen-Image edit)."""
    return next(iter(FAMILY_TASKS[family]))


def family_of_pipeline(pipe: Any) -> str:
    for cls in type(pipe).__mro__:
        family = family_of_class_name(cls.__name__)
        if family:
            return family
    raise ValueError(f"{type(pipe).__name__} is not a pipeline of a family SEG supports.")


def detect_family(model: str) -> str:
    """The family of a model given as tiny name, folder, single file or hub id, read from the model."""
    if model in TINY_MODELS:
        return TINY_MODELS[model]
    if model in BUNDLED_MODELS:
        return "sdxl"
    path = Path(model).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.exists():
            raise ModelLoadError(f"{path} is a folder but not a diffusers pipeline (no model_index.json).")
        return _family_from_index(json.loads(index.read_text(encoding="utf-8")), str(path))
    if path.is_file():
        if not is_safetensors_file(path):
            return "sdxl"  # other files are only read after the explicit opt-in; SDXL is the default
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
        for family, marker in _SINGLE_FILE_MARKERS:
            if any(marker in key for key in keys):
                return family
        raise ModelLoadError(f"{path.name} is not a checkpoint of a family SEG supports ({SUPPORTED_FAMILIES}).")
    try:
        from diffusers import DiffusionPipeline

        return _family_from_index(DiffusionPipeline.load_config(model), model)
    except (OSError, ValueError) as error:
        if isinstance(error, ModelLoadError):
            raise
        raise _not_found(model, error) from error


def _family_from_index(index: dict, where: str) -> str:
    name = index.get("_class_name", "")
    family = family_of_class_name(name)
    if family is None:
        raise ModelLoadError(f"{where} holds a {name or 'unknown'} pipeline; SEG supports {SUPPORTED_FAMILIES}.")
    return family


_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class ModelLoadError(ValueError):
    """A model could not be found or loaded; the message says what was tried and what to do."""


_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit on its JSON header


def is_safetensors_file(path: str | Path) -> bool:
    """Whether a file is safetensors by its content (an 8-byte little-endian header size, then a JSON
    object), whatever its name. Only such files load without running code."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) != 8:
                return False
            size = int.from_bytes(head, "little")
            if not 2 <= size <= min(path.stat().st_size - 8, _MAX_SAFETENSORS_HEADER):
                return False
            return isinstance(json.loads(handle.read(size)), dict)
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def _pickle_refusal(what: str) -> ModelLoadError:
    return ModelLoadError(
        f"{what} is not in safetensors format (checked by content, not by name). Other checkpoint formats "
        "are Python pickles, which can run arbitrary code when loaded. Convert it to .safetensors, or pass "
        "--allow-pickle (allow_pickle=True) if you trust its source."
    )


def refuse_unless_safetensors(path: str | Path, allow_pickle: bool, what: str | None = None) -> None:
    """Raise unless ``path`` is a safetensors file or the user explicitly allowed pickles."""
    if not allow_pickle and not is_safetensors_file(path):
        raise _pickle_refusal(what or Path(path).name)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def refuse_pickle_only_folder(folder: Path, allow_pickle: bool) -> None:
    """Raise if a component of a diffusers folder has weights but none in safetensors format."""
    if allow_pickle:
        return
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        weights = [p for p in component.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES]
        if weights and not any(is_safetensors_file(p) for p in weights):
            raise _pickle_refusal(f"{folder.name}/{component.name} (its weights, {weights[0].name}, …)")


def hub_repo_files(repo: str) -> list[str] | None:
    """The files of a hub repository: listed online, else from the local cache; None if unknown."""
    import huggingface_hub

    try:
        return list(huggingface_hub.list_repo_files(repo))
    except Exception:  # noqa: BLE001 - offline, private or unknown: fall back to the cache
        try:
            snapshot = Path(huggingface_hub.snapshot_download(repo, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached either: diffusers will say what is missing
            return None
        return [str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()]


def refuse_pickle_only_repo(repo: str, allow_pickle: bool) -> None:
    """Raise, before any download, if a hub repository's component has only non-safetensors weights.

    Safety itself comes from ``use_safetensors=True`` (diffusers then reads only safetensors files,
    which cannot run code); this check turns the refusal into one clear message.
    """
    files = None if allow_pickle else hub_repo_files(repo)
    by_component: dict[str, list[str]] = {}
    for name in files or ():
        component, _, file = name.partition("/")
        if file and "/" not in file and Path(file).suffix in _WEIGHT_SUFFIXES:
            by_component.setdefault(component, []).append(file)
    for component, weights in sorted(by_component.items()):
        if not any(name.endswith(".safetensors") for name in weights):
            raise _pickle_refusal(f"{repo}/{component} (its weights, {weights[0]}, …)")


def _load_safetensors_only(load: Any, where: str, allow_pickle: bool) -> Any:
    """Run a ``from_pretrained`` that was told ``use_safetensors=True``; explain a pickle-only model."""
    try:
        return load()
    except (OSError, ValueError) as error:
        if not allow_pickle and "safetensors" in str(error).lower():
            raise _pickle_refusal(f"{where} (it has no safetensors weights)") from error
        raise


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda:") and torch.cuda.is_available():
        return device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU; use --device auto or cpu.")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps was asked for, but MPS is not available; use --device auto or cpu.")
    if device not in ("cuda", "mps", "cpu"):
        raise ValueError(f"Unknown device {device!r}; use auto, cuda, mps or cpu.")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` is fp16 on CUDA and fp32 elsewhere."""
    names = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if dtype not in names:
        raise ValueError(f"Unknown dtype {dtype!r}; use auto, fp16, bf16 or fp32.")
    return names[dtype]


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap the pipeline's scheduler for one of :data:`SCHEDULERS`, keeping its config.

    ``"default"`` keeps the model's own. Flow-matching models (SD3, Flux) keep theirs for
    ``"euler"`` too, which is what their scheduler is.
    """
    if name == "default":
        return
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose default or one of {', '.join(SCHEDULERS)}.")
    if type(pipe.scheduler).__name__.startswith("FlowMatch"):
        if name == "euler":
            return
        raise ValueError(
            f"This model samples with flow matching; --scheduler {name} does not apply to it. Use --scheduler default."
        )
    cls, overrides = SCHEDULERS[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _not_found(model: str, error: Exception | None) -> ModelLoadError:
    if Path(model).suffix or model.startswith((".", "/", "~")):
        return ModelLoadError(f"Model {model!r} was not found: no such file or folder on this machine.")
    if not _HUB_ID.match(model):
        return ModelLoadError(
            f"Model {model!r} is neither a local folder, a .safetensors file nor a hub id like 'org/name'."
        )
    if _offline():
        how = "no download was attempted because HF_HUB_OFFLINE=1 is set"
    else:
        how = f"a download from the Hugging Face Hub was attempted and failed ({type(error).__name__}: {error})"
    return ModelLoadError(
        f"Model {model!r} is not a local folder or file and is not in the local cache; {how}. "
        "Download it once with network access (it is then cached), or pass a local folder or "
        ".safetensors file; set HF_HUB_OFFLINE=1 to work offline from the cache."
    )


def load_base_pipeline(
    model: str = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    config: str | None = None,
    allow_pickle: bool = False,
) -> Any:
    """The text-to-image SEG pipeline of ``model``'s family, on the CPU; see :func:`load_pipeline`."""
    path = Path(model).expanduser()
    if path.is_file():
        refuse_unless_safetensors(path, allow_pickle)
    family = detect_family(model)
    cls = FAMILY_TASKS[family][base_task(family)]
    use_safetensors = None if allow_pickle else True
    if model in BUNDLED_MODELS:
        folder = BUNDLED_MODELS[model]
        if not (folder / "model_index.json").exists():
            raise ModelLoadError(
                f"The bundled model's weights are missing from {folder}; "
                f"run `python scripts/train_toy_model.py --testbed {model}` to train them."
            )
        return cls.from_pretrained(folder, torch_dtype=dtype)
    if model in TINY_MODELS:
        from .. import testing as tiny

        builders = {
            "sdxl": tiny.tiny_sdxl_components,
            "sd": tiny.tiny_sd_components,
            "sd3": tiny.tiny_sd3_components,
            "flux": tiny.tiny_flux_components,
        }
        pipe = cls(**builders[family](seed=0))
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    if path.is_dir():  # detect_family has checked it holds a pipeline
        refuse_pickle_only_folder(path, allow_pickle)
        return _load_safetensors_only(
            lambda: cls.from_pretrained(path, torch_dtype=dtype, use_safetensors=use_safetensors),
            str(path),
            allow_pickle,
        )
    if path.is_file():  # checked above: safetensors, or pickles explicitly allowed
        kwargs: dict[str, Any] = {"torch_dtype": dtype}
        if config is not None:
            kwargs["config"] = str(config)
        return cls.from_single_file(str(path), **kwargs)
    refuse_pickle_only_repo(model, allow_pickle)
    try:
        return _load_safetensors_only(
            lambda: cls.from_pretrained(model, torch_dtype=dtype, use_safetensors=use_safetensors), model, allow_pickle
        )
    except ModelLoadError:
        raise
    except (OSError, ValueError) as error:
        raise _not_found(model, error) from error


def pipeline_for_task(
    base: Any, task: str, controlnet: str | Sequence[str] | None = None, allow_pickle: bool = False
) -> Any:
    """A pipeline for ``task`` sharing ``base``'s components (no second load)."""
    family = family_of_pipeline(base)
    tasks = FAMILY_TASKS[family]
    if task not in tasks:
        raise ValueError(f"Task {task!r} is not available for {family} models; available: {', '.join(tasks)}.")
    if (task == "controlnet") != (controlnet is not None):
        raise ValueError("Pass a ControlNet exactly when the task is 'controlnet'.")
    if tasks[task] is type(base):
        return base
    if task != "controlnet":
        return tasks[task].from_pipe(base)
    names = [controlnet] if isinstance(controlnet, str) else list(controlnet)
    nets = [load_controlnet(name, base.unet, base.unet.dtype, allow_pickle).to(base.unet.device) for name in names]
    return tasks[task].from_pipe(base, controlnet=nets[0] if len(nets) == 1 else nets)


def apply_loras(pipe: Any, loras: Sequence[tuple[str, float]], allow_pickle: bool = False) -> None:
    """Load LoRA files (``(path, weight)`` pairs) into the pipeline, all active at their weights.

    Only safetensors files (by content) load unless ``allow_pickle``.
    """
    for index, (path, _) in enumerate(loras):
        if not Path(path).expanduser().exists():
            raise ModelLoadError(f"LoRA file {path} was not found.")
        refuse_unless_safetensors(Path(path).expanduser(), allow_pickle, f"LoRA file {Path(path).name}")
        pipe.load_lora_weights(str(Path(path).expanduser()), adapter_name=f"lora{index}")
    if loras:
        pipe.set_adapters([f"lora{i}" for i in range(len(loras))], adapter_weights=[w for _, w in loras])


def load_pipeline(
    model: str = DEFAULT_MODEL,
    task: str = "text2img",
    *,
    controlnet: str | Sequence[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    offload: str = "none",
    scheduler: str | None = None,
    loras: Sequence[tuple[str, float]] = (),
    config: str | None = None,
    allow_pickle: bool = False,
) -> Any:
    """Load a SEG pipeline for ``task`` (text2img, img2img; inpaint and controlnet for SD / SDXL).

    ``model`` is a hub id, a local diffusers folder, a ``.safetensors`` single-file checkpoint
    (``config`` names a local diffusers folder to read its configuration from, for offline use)
    or a tiny random model (``"tiny-random"``, ``"tiny-random-sd"``, ``"tiny-random-sd3"``,
    ``"tiny-random-flux"``). The family (SD 1.x/2.x, SDXL, SD3, Flux) is read from the model.
    Pickle checkpoints are refused unless ``allow_pickle``.
    """
    torch_device = resolve_device(device)
    base = load_base_pipeline(model, resolve_dtype(dtype, torch_device), config, allow_pickle)
    apply_loras(base, loras, allow_pickle)
    pipe = pipeline_for_task(base, task, controlnet, allow_pickle)
    if scheduler:
        set_scheduler(pipe, scheduler)
    return place_pipeline(pipe, torch_device, offload)


def load_controlnet(name: str, unet: Any, dtype: torch.dtype, allow_pickle: bool = False) -> ControlNetModel:
    """A ControlNet from a folder or hub id; ``tiny-random`` builds one for the tiny UNet."""
    if name == TINY_RANDOM:
        from ..testing import tiny_controlnet

        return tiny_controlnet(unet).to(dtype=dtype)  # fp32 stays fp32
    use_safetensors = None if allow_pickle else True
    try:
        return _load_safetensors_only(
            lambda: ControlNetModel.from_pretrained(name, torch_dtype=dtype, use_safetensors=use_safetensors),
            name,
            allow_pickle,
        )
    except ModelLoadError:
        raise
    except (OSError, ValueError) as error:
        raise _not_found(name, error) from error


def place_pipeline(pipe: Any, device: str, offload: str) -> Any:
    """Move the pipeline to ``device`` or set up diffusers' CPU offloading."""
    if offload == "none":
        return pipe.to(device)
    if device != "cuda":
        raise ValueError(f"--offload {offload} moves weights between CPU and GPU; it needs --device cuda.")
    if offload == "model":
        pipe.enable_model_cpu_offload()
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload()
    else:
        raise ValueError(f"Unknown offload mode {offload!r}; use none, model or sequential.")
    return pipe
