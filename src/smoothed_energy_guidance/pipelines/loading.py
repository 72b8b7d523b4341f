"""Loading SEG pipelines from hub ids, local diffusers folders or single-file checkpoints."""

from __future__ import annotations

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

from .sdxl import (
    StableDiffusionXLControlNetSEGPipeline,
    StableDiffusionXLSEGImg2ImgPipeline,
    StableDiffusionXLSEGInpaintPipeline,
    StableDiffusionXLSEGPipeline,
)

#: Built-in offline model: a tiny SDXL-architecture pipeline with random weights.
TINY_RANDOM = "tiny-random"
DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"

SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {}),
    "dpm++2m-karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "ddim": (DDIMScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
}

TASK_CLASSES = {
    "text2img": StableDiffusionXLSEGPipeline,
    "img2img": StableDiffusionXLSEGImg2ImgPipeline,
    "inpaint": StableDiffusionXLSEGInpaintPipeline,
    "controlnet": StableDiffusionXLControlNetSEGPipeline,
}

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class ModelLoadError(ValueError):
    """A model could not be found or loaded; the message says what was tried and what to do."""


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
    """Swap the pipeline's scheduler for one of :data:`SCHEDULERS`, keeping its config."""
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}.")
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
) -> StableDiffusionXLSEGPipeline:
    """The text-to-image SEG pipeline of ``model``, on the CPU; see :func:`load_pipeline`."""
    cls = StableDiffusionXLSEGPipeline
    if model == TINY_RANDOM:
        from .tiny import tiny_sdxl_components

        pipe = cls(**tiny_sdxl_components(seed=0))
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise ModelLoadError(f"{path} is a folder but not a diffusers pipeline (no model_index.json).")
        return cls.from_pretrained(path, torch_dtype=dtype, use_safetensors=None if allow_pickle else True)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise ModelLoadError(
                f"{path.name} is a pickle checkpoint, which can run arbitrary code when loaded. Convert it to "
                ".safetensors, or pass --allow-pickle if you trust its source."
            )
        kwargs: dict[str, Any] = {"torch_dtype": dtype}
        if config is not None:
            kwargs["config"] = str(config)
        return cls.from_single_file(str(path), **kwargs)
    try:
        return cls.from_pretrained(model, torch_dtype=dtype)
    except (OSError, ValueError) as error:
        raise _not_found(model, error) from error


def pipeline_for_task(base: Any, task: str, controlnet: str | Sequence[str] | None = None) -> Any:
    """A pipeline for ``task`` sharing ``base``'s components (no second load)."""
    if task not in TASK_CLASSES:
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(TASK_CLASSES)}.")
    if (task == "controlnet") != (controlnet is not None):
        raise ValueError("Pass a ControlNet exactly when the task is 'controlnet'.")
    if task == "text2img":
        return base
    if task != "controlnet":
        return TASK_CLASSES[task].from_pipe(base)
    names = [controlnet] if isinstance(controlnet, str) else list(controlnet)
    nets = [load_controlnet(name, base.unet, base.unet.dtype).to(base.unet.device) for name in names]
    return TASK_CLASSES[task].from_pipe(base, controlnet=nets[0] if len(nets) == 1 else nets)


def apply_loras(pipe: Any, loras: Sequence[tuple[str, float]]) -> None:
    """Load LoRA files (``(path, weight)`` pairs) into the pipeline, all active at their weights."""
    for index, (path, _) in enumerate(loras):
        if not Path(path).expanduser().exists():
            raise ModelLoadError(f"LoRA file {path} was not found.")
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
    """Load an SDXL SEG pipeline for ``task`` (text2img, img2img, inpaint or controlnet).

    ``model`` is a hub id, a local diffusers folder, a ``.safetensors`` single-file checkpoint
    (``config`` names a local diffusers folder to read its configuration from, for offline use)
    or ``"tiny-random"``. Pickle checkpoints are refused unless ``allow_pickle``.
    """
    torch_device = resolve_device(device)
    base = load_base_pipeline(model, resolve_dtype(dtype, torch_device), config, allow_pickle)
    apply_loras(base, loras)
    pipe = pipeline_for_task(base, task, controlnet)
    if scheduler:
        set_scheduler(pipe, scheduler)
    return place_pipeline(pipe, torch_device, offload)


def load_controlnet(name: str, unet: Any, dtype: torch.dtype) -> ControlNetModel:
    """A ControlNet from a folder or hub id; ``tiny-random`` builds one for the tiny UNet."""
    if name == TINY_RANDOM:
        from .tiny import tiny_controlnet

        return tiny_controlnet(unet).to(dtype=dtype)  # fp32 stays fp32
    try:
        return ControlNetModel.from_pretrained(name, torch_dtype=dtype)
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
