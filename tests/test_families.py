"""The family table drives the public exports, the SEG classes, CLI detection and tasks, and the messages."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import smoothed_energy_guidance as seg
from smoothed_energy_guidance import families
from smoothed_energy_guidance.families import FAMILIES, Family, PerturbedRows, Stack, Task


def table_seg_classes() -> dict[str, str]:
    return families.seg_class_hosts()


def test_every_seg_class_is_made_from_its_table_entry():
    import pickle

    from smoothed_energy_guidance.pipelines import classes
    from smoothed_energy_guidance.pipelines.call import SegCallMixin

    made = {
        name
        for name, value in vars(classes).items()
        if isinstance(value, type)
        and issubclass(value, SegCallMixin)
        and value is not SegCallMixin
        and value.__name__ == name  # not an alias of another class
    }
    assert made == set(table_seg_classes())
    docs = {entry.seg_class: entry.doc for family in FAMILIES for _, _, entry in family.tasks()}
    for name, host in table_seg_classes().items():
        cls = getattr(seg, name)
        assert cls.__bases__[1].__name__ == host and cls.__doc__ == docs[name] and docs[name]
        assert pickle.loads(pickle.dumps(cls)) is cls
        assert "seg_scale" in str(inspect.signature(cls.__call__))


def test_a_new_table_entry_is_a_new_seg_class(monkeypatch):
    """Adding a pipeline to a family's record is all it takes to get its SEG class."""
    from smoothed_energy_guidance.pipelines import classes

    sd = next(family for family in FAMILIES if family.name.startswith("Stable Diffusion 1"))
    extra = Task(diffusers_class="StableDiffusionPAGPipeline", seg_class="NewSEGPipeline", doc="A new one.")
    grown = dataclasses.replace(
        sd,
        pipelines={**sd.pipelines, "sd-new": {"text2img": extra}},
        pipeline_prefixes={**sd.pipeline_prefixes, "sd-new": ("StableDiffusionPAG",)},
    )
    monkeypatch.setattr(classes, "FAMILIES", (grown,))
    made = classes._make_seg_classes()
    assert made["NewSEGPipeline"].__bases__[1].__name__ == "StableDiffusionPAGPipeline"
    assert made["NewSEGPipeline"].__doc__ == "A new one." and "seg_scale" in str(
        inspect.signature(made["NewSEGPipeline"].__call__)
    )


def test_public_exports_are_the_core_names_and_the_tables_seg_classes():
    from smoothed_energy_guidance import pipelines

    core = {"SegConfig", "apply_seg", "blur_queries", "SegHooks", "enable_seg", "from_pipe", "SmoothedEnergyGuidance"}
    assert set(seg.__all__) == core | {"load_pipeline", "StableDiffusionXLSEGControlNetPipeline"} | set(
        table_seg_classes()
    )
    assert set(table_seg_classes()) <= set(pipelines.__all__)
    seg_names_in_pipelines = {name for name in pipelines.__all__ if "SEG" in name and name.endswith("Pipeline")}
    assert seg_names_in_pipelines == set(table_seg_classes()) | {"StableDiffusionXLSEGControlNetPipeline"}


def test_cli_detection_and_tasks_come_from_the_table():
    from smoothed_energy_guidance.pipelines import FAMILY_TASKS, family_of_pipeline

    for family in FAMILIES:
        for key, task, entry in family.tasks():
            if not entry.cli:
                continue
            assert FAMILY_TASKS[key][task].__name__ == entry.seg_class
            assert families.family_key_of_pipeline_class(entry.diffusers_class) == key
            assert family_of_pipeline(getattr(seg, entry.seg_class).__new__(getattr(seg, entry.seg_class))) == key
        for prefix in family.unsupported_pipeline_prefixes:
            assert families.family_key_of_pipeline_class(prefix + "Pipeline") is None


def test_a_new_record_shows_up_everywhere_families_are_listed(monkeypatch):
    lumen = Family(
        name="Lumen",
        denoiser_classes=("LumenTransformer",),
        stacks=(Stack(spec="blocks", path="layers"),),
        read_inputs=families.inputs.latent_inputs(),
        perturbed_rows=PerturbedRows.AT_INPUT,
        pipelines={"lumen": {"text2img": Task(diffusers_class="LumenPipeline", seg_class="LumenSEGPipeline")}},
        pipeline_prefixes={"lumen": ("Lumen",)},
    )
    first_video = next(index for index, family in enumerate(FAMILIES) if family.video)
    monkeypatch.setattr(families, "FAMILIES", (*FAMILIES[:first_video], lumen, *FAMILIES[first_video:]))
    assert ", Lumen, and video: Wan" in families.supported_pipelines_text()
    assert "Lumen" in families.guider_family_names()
    assert families.family_key_of_pipeline_class("LumenPipeline") == "lumen"
    assert families.cli_family_tasks()["lumen"] == {"text2img": "LumenSEGPipeline"}
    model = type("LumenTransformer2DModel", (), {})()
    assert families.family_of_denoiser(model) is lumen


def test_messages_list_the_tables_families():
    from smoothed_energy_guidance.pipelines import SUPPORTED_FAMILIES

    with pytest.raises(ValueError) as error:
        seg.enable_seg(object())
    for family in FAMILIES:
        if family.has_pipelines:
            assert family.name in str(error.value) and family.name in SUPPORTED_FAMILIES
    from smoothed_energy_guidance.pipelines.guider import attach_seg_hooks

    with pytest.raises(ValueError) as error:
        attach_seg_hooks(__import__("torch").nn.Linear(1, 1), seg.SegConfig(), None, None)
    for name in families.guider_family_names():
        assert name in str(error.value)


def test_records_are_keyword_only_frozen_and_validated():
    with pytest.raises(TypeError):
        Family("Positional", ("X",))  # keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        FAMILIES[0].name = "changed"
    with pytest.raises(ValueError, match="needs its stacks and a grid reader"):
        Family(name="Bare", denoiser_classes=("BareTransformer",))
    with pytest.raises(ValueError, match="every CLI family key needs its pipeline class-name prefixes"):
        Family(
            name="Half",
            denoiser_classes=("UNet2DConditionModel",),
            architecture="unet",
            pipelines={"half": {"text2img": Task(diffusers_class="HalfPipeline", seg_class="HalfSEGPipeline")}},
        )


def test_the_readme_lists_exactly_the_tables_families_and_classes():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Supported pipelines") :]
    section = section[: section.index("\n## ", 1)]
    table = [line for line in section.splitlines() if line.startswith("| ") and "SEG" in line]
    listed = set(re.findall(r"`(\w+SEG\w*Pipeline)`", "\n".join(table)))
    # the README shortens a family's later classes as `…SEGImg2ImgPipeline` after its first full name
    for line in table:
        first = re.search(r"`(\w+?)SEG\w*Pipeline`", line)
        listed |= {first.group(1) + "SEG" + rest for rest in re.findall(r"`…SEG(\w+)`", line)} if first else set()
    assert listed == set(families.seg_class_hosts()) | {"StableDiffusionXLSEGControlNetPipeline"}
    for family in FAMILIES:
        if family.has_pipelines:
            words = family.name.replace("/", " ").replace(".", " ").split()[:2]
            assert any(all(word in line for word in words) for line in table), family.name
