"""Dependencies point one way: core ← hooks ← pipelines ← cli (STYLE.md, principle 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "smoothed_energy_guidance"
CORE = {"blur", "layers", "guidance", "context", "tokens", "grids"}
STDLIB_OK = {
    *("__future__", "math", "re", "functools", "dataclasses", "collections", "typing", "importlib", "threading"),
    *("contextvars", "contextlib", "types", "weakref", "enum"),
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


def test_the_core_package_holds_the_core_modules():
    assert {path.stem for path in module_files("core")} == CORE | {"__init__"}


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_imports_only_torch(name):
    used = imports(PACKAGE / "core" / f"{name}.py")
    allowed = STDLIB_OK | {"torch"} | {f".{other}" for other in CORE}
    assert used <= allowed, f"{name}.py imports {sorted(used - allowed)}"


def test_the_family_table_imports_torch_and_core_only():
    """A second host (ComfyUI) reads the same table: no diffusers on this path."""
    allowed = STDLIB_OK | {"torch", "enum"} | {f"..core.{core}" for core in CORE}
    allowed |= {".", ".inputs", ".records", ".table"}
    for path in module_files("families"):
        used = imports(path)
        assert used <= allowed, f"families/{path.name} imports {sorted(used - allowed)}"


def test_hooks_import_torch_and_core_only():
    used = imports(PACKAGE / "hooks.py")
    allowed = STDLIB_OK | {"torch"} | {f".core.{core}" for core in CORE}
    assert used <= allowed, sorted(used - allowed)


def test_only_pipelines_import_diffusers_and_transformers():
    for path in PACKAGE.rglob("*.py"):
        heavy = imports(path) & {"diffusers", "transformers", "peft", "accelerate"}
        # toy trains and evaluates its own model; metrics loads the CLIP model that scores real ones
        # testing builds the tiny random diffusers models the CLI offers and the tests use
        inside_pipelines = path.parent.name in ("pipelines", "toy") or path.name in ("metrics.py", "testing.py")
        inside_cli = path.parent.name in ("cli", "ui")
        if heavy and not inside_pipelines:
            # the CLI may use accelerate for process sharding and diffusers' own PAG baseline pipeline
            assert inside_cli and heavy <= {"accelerate", "diffusers"}, f"{path.name} imports {sorted(heavy)}"


def test_cli_and_ui_use_only_the_public_api():
    for path in module_files("cli"):
        parents = {m for m in imports(path) if m.startswith("..")}
        allowed = {"..", "..catalog", "..pipelines", "..ui", "..metrics"}
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


@pytest.mark.parametrize("kind", sorted(INFERENCE))
def test_src_never_infers_its_call_from_frames_bytecode_or_private_state(kind):
    import re

    pattern = re.compile(INFERENCE[kind])
    found = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        found += [f"{relative}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, f"{kind} read in {found}"


# The host's private attributes SEG reads, each in one module that says why (never about what SEG serves)
PRIVATE_READS = {
    "_orig_mod": "pipelines/compiled.py",  # torch.compile's wrapper → the module it runs
    "_diffusers_hook": "pipelines/caches.py",  # a cache hook's state, which diffusers offers no getter for
    "_input_predictions": "pipelines/guider.py",  # the predictions a base guider combines (its class declares them)
    "_execution_device": "cli/generate.py",  # where an offloaded pipeline runs: the seed generator's device
}


@pytest.mark.parametrize("attribute", sorted(PRIVATE_READS))
def test_each_private_attribute_of_a_host_is_read_in_one_place(attribute):
    readers = sorted(
        path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py") if attribute in path.read_text()
    )
    assert readers == [PRIVATE_READS[attribute]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Package module → package modules it imports, at module level or inside functions (lazy imports)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    edges.add(submodule if submodule in modules else target)
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    return graph


def test_no_import_circles_lazy_imports_included():
    graph = import_graph()
    circles = []

    def visit(name: str, path: list[str]) -> None:
        for edge in sorted(graph[name]):
            if edge in path:
                circles.append(path[path.index(edge) :] + [edge])
            elif edge not in done:
                visit(edge, [*path, edge])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not circles, "import circles: " + "; ".join(" -> ".join(circle) for circle in circles[:5])


def test_no_test_fixture_inside_a_public_package():
    """Tiny random models live in ``smoothed_energy_guidance.testing``, named for what they are."""
    fixtures = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.stem in ("tiny", "fixtures")]
    assert not fixtures


def test_the_comfyui_node_path_never_imports_diffusers():
    """The ComfyUI nodes run on the core alone: ComfyUI users need only torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import smoothed_energy_guidance.comfyui.patch, smoothed_energy_guidance.comfyui.models\n"
        "heavy = sorted(name for name in ('diffusers', 'transformers', 'accelerate') if name in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_commands_help_and_argument_errors_answer_before_any_model_library_loads():
    """``seg --help`` and a mistyped option answer at once (they took 7 s when the CLI imported diffusers first)."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from smoothed_energy_guidance.cli import main\n"
        "for argv in (['--help'], ['generate', '--help'], ['generate', '--steps', 'x'], ['sweep', '--nope']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers', 'PIL'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "invalid int value: 'x'" in result.stderr and "required: --x" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_the_scheduler_names_the_command_offers_are_the_schedulers_it_loads():
    from smoothed_energy_guidance.catalog import SCHEDULER_NAMES
    from smoothed_energy_guidance.pipelines import SCHEDULERS

    assert tuple(SCHEDULERS) == SCHEDULER_NAMES
