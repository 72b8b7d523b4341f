"""Dependencies point one way: core ← hooks ← pipelines ← cli (STYLE.md, principle 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "smoothed_energy_guidance"
CORE = {"blur", "layers", "guidance", "context"}
STDLIB_OK = {
    *("__future__", "math", "re", "functools", "dataclasses", "collections", "typing", "importlib", "threading"),
    *("contextvars", "contextlib", "types", "weakref"),
}


def imports(path: Path) -> set[str]:
    """Absolute top-level packages and package-relative modules a file imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.add(node.module.split(".")[0])
            else:
                module = node.module or ""
                found.add("." * node.level + module)
    return found


def module_files(folder: str = "") -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_imports_only_torch(name):
    used = imports(PACKAGE / f"{name}.py")
    allowed = STDLIB_OK | {"torch"} | {f".{other}" for other in CORE}
    assert used <= allowed, f"{name}.py imports {sorted(used - allowed)}"


def test_hooks_import_torch_and_core_only():
    used = imports(PACKAGE / "hooks.py")
    allowed = STDLIB_OK | {"torch"} | {f".{core}" for core in CORE}
    assert used <= allowed, sorted(used - allowed)


def test_only_pipelines_import_diffusers_and_transformers():
    for path in PACKAGE.rglob("*.py"):
        heavy = imports(path) & {"diffusers", "transformers", "peft", "accelerate"}
        # toy trains and evaluates its own model; metrics loads the CLIP model that scores real ones
        inside_pipelines = path.parent.name in ("pipelines", "toy") or path.name == "metrics.py"
        inside_cli = path.parent.name in ("cli", "ui")
        if heavy and not inside_pipelines:
            # the CLI may use accelerate for process sharding and diffusers' own PAG baseline pipeline
            assert inside_cli and heavy <= {"accelerate", "diffusers"}, f"{path.name} imports {sorted(heavy)}"


def test_cli_and_ui_use_only_the_public_api():
    for path in module_files("cli"):
        parents = {m for m in imports(path) if m.startswith("..")}
        allowed = {"..", "..pipelines", "..ui", "..metrics"}
        outside = {p for p in parents if p not in allowed and not p.startswith("..toy.")}
        assert not outside, f"cli/{path.name} reaches into {sorted(outside)}"
    for path in module_files("ui"):
        parents = {m for m in imports(path) if m.startswith("..")}
        assert all(p in ("..", "..pipelines") or p.startswith("..cli") for p in parents), (path.name, parents)


def test_gradio_is_imported_by_the_ui_only():
    for path in PACKAGE.rglob("*.py"):
        if "gradio" in imports(path):
            assert path.parent.name == "ui", path


# What the engine must never read to learn what it serves (DESIGN.md "How the engine knows what it serves").
INFERENCE = {
    "stack frames": r"sys\._getframe|inspect\.currentframe|inspect\.stack\(|\.f_locals|\.f_back",
    "bytecode": r"\.co_names|\.co_code|\.__code__",
    "private hook state of torch": r"_forward_pre_hooks|_forward_hooks|_backward_hooks",
    "private state of diffusers": r"\._context\b|_set_context",
}
# The guider's plan of its first step's batches, before any denoiser reached it (see the module).
FRAME_READERS = {"pipelines/modular_caller.py"}


@pytest.mark.parametrize("kind", sorted(INFERENCE))
def test_src_never_infers_its_call_from_frames_bytecode_or_private_state(kind):
    import re

    pattern = re.compile(INFERENCE[kind])
    found = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if kind == "stack frames" and relative in FRAME_READERS:
            continue
        found += [f"{relative}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, f"{kind} read in {found}"


def test_the_one_frame_reader_decides_no_seg_call():
    """It may plan the guider's batches, never whether a call gets SEG: hooks import only the call context."""
    users = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if ".modular_caller" in imports(p)]
    assert users == ["pipelines/guider.py"]
