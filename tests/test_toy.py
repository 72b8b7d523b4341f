"""The project's own model: scenes, the training script (smoke run), metrics, demo and eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothed_energy_guidance.toy.evaluate import adherence, frechet_distance, precision_recall
from smoothed_energy_guidance.toy.scenes import ATTRIBUTES, SIZE, Scene, make_batch, random_scene, render


def test_scenes_are_deterministic_and_match_their_captions():
    a, scenes = make_batch(np.random.default_rng(3), 4)
    b, _ = make_batch(np.random.default_rng(3), 4)
    assert np.array_equal(a, b) and a.shape == (4, 3, SIZE, SIZE) and a.min() >= -1 and a.max() <= 1
    scene = Scene("blue", "green", "red", "square", "left", horizon=0.6, scale=0.2)
    image = render(scene)
    assert tuple(image[1, 16]) != tuple(image[30, 16]), "sky and ground must differ"
    assert tuple(image[int(0.6 * SIZE) - 3, int(0.25 * SIZE)]) == (220, 40, 40), "the red square sits on the left"
    assert scene.caption == "a red square on the left, green ground, blue sky"
    assert set(random_scene(np.random.default_rng(0)).labels()) == set(ATTRIBUTES)


def test_frechet_distance_and_precision_recall_behave():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=generator)
    same = torch.randn(300, 8, generator=generator)
    shifted = same + 3.0
    assert frechet_distance(real, same) < 0.5
    assert frechet_distance(real, shifted) == pytest.approx(9 * 8 + frechet_distance(real, same), rel=0.1)
    precision, recall = precision_recall(real, same)
    assert precision > 0.8 and recall > 0.8
    assert precision_recall(real, shifted)[0] < 0.05


def test_support_matches_a_brute_force_count_in_chunks():
    """Precision's k-NN support, computed in chunks, against a direct double loop in NumPy."""
    from smoothed_energy_guidance.toy.evaluate import Support

    generator = torch.Generator().manual_seed(1)
    reference, queries = torch.randn(23, 3, generator=generator), torch.randn(17, 3, generator=generator) * 1.5
    ref, qry = reference.double().numpy(), queries.double().numpy()
    distances = np.sqrt(((ref[:, None] - ref[None]) ** 2).sum(-1))
    radii = np.sort(distances, axis=1)[:, 3]  # the 3rd neighbour, the point itself being the 0th
    inside = [any(np.sqrt(((q - r) ** 2).sum()) <= radius for r, radius in zip(ref, radii, strict=True)) for q in qry]
    support = Support(reference, k=3, chunk=5)
    assert torch.allclose(support.radii.double(), torch.from_numpy(radii), atol=1e-5)
    assert support.share_inside(queries) == pytest.approx(np.mean(inside))
    assert 0 < np.mean(inside) < 1  # the case checks both sides of the boundary


def test_adherence_counts_attributes():
    scenes = [Scene("blue", "green", "red", "square", "left", 0.6, 0.2)] * 2
    heads = {name: torch.zeros(2, len(values)) for name, values in ATTRIBUTES.items()}
    for name in ATTRIBUTES:
        heads[name][0, scenes[0].labels()[name]] = 1.0  # first image right everywhere
    accuracy, all_right = adherence(heads, scenes)
    expected_second = sum(scenes[0].labels()[n] == 0 for n in ATTRIBUTES) / len(ATTRIBUTES)
    assert accuracy == pytest.approx((1 + expected_second) / 2)
    assert all_right == pytest.approx(0.5 if expected_second < 1 else 1.0)


def test_training_smoke_run_produces_a_loadable_pipeline(tmp_path):
    from smoothed_energy_guidance.toy.train import TrainConfig, train

    out = train(TrainConfig.smoke(tmp_path / "seg-toy"), progress=False)
    import smoothed_energy_guidance as seg

    pipe = seg.StableDiffusionXLSEGPipeline.from_pretrained(out, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a red circle on the left, green ground, blue sky", num_inference_steps=2, height=32, width=32, output_type="pt"
    ).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
    assert (tmp_path / "seg-toy-features.safetensors").exists()
    assert pipe.config.force_zeros_for_empty_prompt is False  # unconditional = the empty caption it learned


def test_text_pretraining_teaches_the_encoders_the_caption_attributes():
    """The denoiser starts from text encoders that already tell captions apart (attribute heads on what the
    UNet reads of them); 60 small steps take the toy's encoders from chance (about 1/3) past 0.8."""
    import dataclasses

    from smoothed_energy_guidance.toy.model import toy_components
    from smoothed_energy_guidance.toy.train import TrainConfig, pretrain_text_encoders

    config = dataclasses.replace(TrainConfig.smoke(Path("unused")), text_steps=60)
    components = toy_components(0, config.bed)
    before = components["text_encoder_2"].text_projection.weight.clone()
    assert pretrain_text_encoders(components, config, progress=False) > 0.8
    assert not torch.equal(before, components["text_encoder_2"].text_projection.weight)


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory):
    from smoothed_energy_guidance.toy.train import TrainConfig, train

    return train(TrainConfig.smoke(tmp_path_factory.mktemp("bed") / "seg-toy"), progress=False)


def test_sweep_reports_every_setting_with_intervals_checked_independently(smoke_model, tmp_path):
    from PIL import Image

    from smoothed_energy_guidance.toy.evaluate import SweepPlan, evaluate
    from smoothed_energy_guidance.toy.report import write_reports

    plan = SweepPlan(scales=(1.0, 3.0), sigmas=(2.0, math.inf), pag_scales=(3.0,), combined_scale=2.0)
    features = smoke_model.parent / "seg-toy-features.safetensors"
    results = evaluate(
        smoke_model, features, samples=8, steps=2, seeds=(0, 1, 2), plan=plan, batch=8, references=24, progress=False
    )
    assert results["references"] == 24
    assert [r["setting"] for r in results["unconditional"]] == [
        "real scenes (held out)",
        "vanilla",
        "PAG 3",
        "SEG 1 σ=2",
        "SEG 3 σ=2",
        "SEG 1 σ=∞",
        "SEG 3 σ=∞",
    ]
    assert [r["setting"] for r in results["conditional"]] == [
        "vanilla",
        "CFG 5",
        "CFG 5 + SEG 2 σ=2",
        "CFG 5 + SEG 2 σ=∞",
        "CFG 5 + PAG 2",
    ]
    t_975_df2 = 4.302652729911275  # Student-t table, 95 % two-sided, 2 degrees of freedom
    for row in results["unconditional"] + results["conditional"]:
        for metric, values in row["per_seed"].items():
            assert len(values) == 3
            mean = sum(values) / 3
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
            assert row[metric]["mean"] == pytest.approx(mean)
            assert row[metric]["high"] - mean == pytest.approx(t_975_df2 * sd / math.sqrt(3), rel=1e-8)
        assert row["fd"]["low"] <= row["fd"]["mean"] <= row["fd"]["high"]  # every interval holds its estimate
        assert "kid" in row and "fd_bootstrap" not in row  # no image bootstrap: it missed its own estimates
    assert results["device"] == "cpu"
    # SEG changes the samples, so its FD differs from vanilla's on every seed
    real, vanilla, seg_inf = results["unconditional"][0], results["unconditional"][1], results["unconditional"][-1]
    assert real["method"] == "real" and real["per_seed"]["fd"] != vanilla["per_seed"]["fd"]
    assert all(a != b for a, b in zip(vanilla["per_seed"]["fd"], seg_inf["per_seed"]["fd"], strict=True))

    data, plot, table = write_reports(results, tmp_path, "seg eval --testbed seg-toy")
    text = table.read_text(encoding="utf-8")
    assert "## seg-toy" in text and "`seg eval --testbed seg-toy`" in text and "| SEG 3 σ=∞ |" in text
    assert Image.open(plot).size[0] > 1000
    import json

    assert json.loads(data.read_text(encoding="utf-8"))["unconditional"][3]["seg_scale"] == 1.0
    assert "reference set of 24 real scenes" in text and "| real scenes (held out) |" in text


def test_sweep_refuses_fewer_references_than_samples_before_loading_anything(tmp_path):
    from smoothed_energy_guidance.toy.evaluate import evaluate

    with pytest.raises(ValueError, match="references"):
        evaluate(tmp_path / "no-model", tmp_path / "no-features", samples=8, references=4)


def test_statistics_match_independent_computations():
    from smoothed_energy_guidance.toy.statistics import seed_interval

    interval = seed_interval([1.0, 2.0, 4.0])
    assert interval.mean == pytest.approx(7 / 3)
    assert interval.half_width == pytest.approx(4.302652729911275 * np.std([1, 2, 4], ddof=1) / math.sqrt(3))
    with pytest.raises(ValueError, match="two seeds"):
        seed_interval([1.0])


def test_clutter_scenes_occlude_in_depth_order_and_fit_the_tokenizer():
    from smoothed_energy_guidance.toy import clutter

    a, scenes = clutter.make_batch(np.random.default_rng(3), 6)
    b, _ = clutter.make_batch(np.random.default_rng(3), 6)
    assert np.array_equal(a, b) and a.shape == (6, 3, 64, 64)
    rng = np.random.default_rng(0)
    many = [clutter.random_scene(rng) for _ in range(500)]
    assert max(len(s.caption) for s in many) <= 75  # the byte tokenizer reads 77 tokens with start / end
    assert {len(s.things) for s in many} == {2, 3}
    front = clutter.Thing("red", "square", "plain", x=0.5, base=0.85, radius=0.2)
    behind = clutter.Thing("cyan", "square", "plain", x=0.5, base=0.8, radius=0.2)
    scene = clutter.ClutterScene("night", "sand", 0.4, (behind, front), texture_seed=1)
    image = clutter.render(scene)
    assert tuple(image[int(0.65 * 64), 32]) == clutter.COLOURS["red"], "the front object hides the one behind"
    assert tuple(image[int(0.47 * 64), 32]) == clutter.COLOURS["cyan"], "the back object shows above it"
    assert scene.caption == "2 shapes, front plain red square center, sand ground, night sky"
    assert scene.labels()["count"] == 0 and scene.labels()["position"] == 1


@pytest.mark.parametrize("name", ["seg-toy", "seg-clutter"])
def test_bundled_testbeds_load_and_sample_offline(name):
    from smoothed_energy_guidance.pipelines import load_base_pipeline
    from smoothed_energy_guidance.toy.features import SceneFeatures
    from smoothed_energy_guidance.toy.testbeds import testbed

    bed = testbed(name)
    pipe = load_base_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    size = bed.size
    image = pipe("", num_inference_steps=3, height=size, width=size, output_type="pt", generator=generator).images
    assert image.shape == (1, 3, size, size) and torch.isfinite(image).all()
    assert pipe.unet.config.sample_size == size // 2
    # the shipped weights are the architecture the testbed declares (what `scripts/train_toy_model.py` builds)
    encoders = (pipe.text_encoder.config, pipe.text_encoder_2.config)
    assert tuple(c.hidden_size for c in encoders) == bed.text.hidden
    assert all(c.num_hidden_layers == bed.text.layers for c in encoders)
    assert pipe.text_encoder_2.config.projection_dim == bed.text.projection
    network = SceneFeatures.load(bed.features_file, bed)
    assert network.features(image * 2 - 1).shape == (1, 64)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("name", ["seg-toy", "seg-clutter"])
def test_measured_defaults_are_the_best_settings_of_the_committed_sweep(name):
    """The demo's and the UI's SEG settings are read off the committed sweep, and their verdicts off the committed
    confirmation on fresh seeds, both recomputed here from the JSON."""
    from smoothed_energy_guidance.toy.testbeds import testbed

    data = json.loads((BENCHMARKS / f"quality-{name}.json").read_text(encoding="utf-8"))
    seg_rows = [row for row in data["unconditional"] if row["seg_scale"] > 0]
    best = min(seg_rows, key=lambda row: sum(row["per_seed"]["fd"]) / len(row["per_seed"]["fd"]))
    combined = [row for row in data["conditional"] if row["seg_scale"] > 0 and row["cfg"] > 1]
    best_combined = min(combined, key=lambda row: sum(row["per_seed"]["fd"]) / len(row["per_seed"]["fd"]))
    measured = testbed(name).measured
    assert measured.seg == (best["seg_scale"], best["sigma"])
    assert measured.cfg_seg == (best_combined["cfg"], best_combined["seg_scale"], best_combined["sigma"])
    confirmation = json.loads((BENCHMARKS / f"confirmation-{name}.json").read_text(encoding="utf-8"))
    assert not set(confirmation["seeds"]) & set(data["seeds"]) and len(confirmation["seeds"]) >= 6
    verdicts = {(c["setting"], c["baseline"]): c["verdict"] for c in confirmation["comparisons"]}
    picked = best["setting"]
    assert measured.seg_vs_vanilla == verdicts[(picked, "vanilla")]
    assert measured.paper_vs_vanilla == verdicts[("SEG 3 σ=∞", "vanilla")]
    assert measured.cfg_seg_vs_cfg == verdicts[(best_combined["setting"], f"CFG {best_combined['cfg']:g}")]


def test_the_interface_never_starts_at_a_setting_confirmed_worse_than_its_baseline():
    from smoothed_energy_guidance.cli.demo import interface_defaults
    from smoothed_energy_guidance.toy.testbeds import TESTBEDS

    for name, bed in TESTBEDS.items():
        prompt, cfg, scale, sigma, why = interface_defaults(name)
        measured = bed.measured
        if (cfg, scale, sigma) == measured.cfg_seg:
            assert prompt and measured.cfg_seg_vs_cfg != "worse"
        else:  # the prompted pick was worse than CFG alone: SEG alone on the empty prompt
            assert measured.cfg_seg_vs_cfg == "worse" and prompt == "" and cfg == 1.0
            assert (scale, sigma) == measured.seg and measured.seg_vs_vanilla != "worse"
            assert "worse than CFG" in why
        assert scale > 0  # the page's comparison always shows SEG


def test_committed_quality_tables_and_plots_come_from_the_committed_results(tmp_path):
    """QUALITY.md is exactly what `seg eval` writes from the committed JSON files (one command each)."""
    from smoothed_energy_guidance.toy.report import write_reports

    files = sorted(BENCHMARKS.glob("quality-*.json"))
    assert {path.stem for path in files} >= {"quality-seg-toy", "quality-seg-clutter"}
    for path in files:
        results = json.loads(path.read_text(encoding="utf-8"))
        assert results["command"].startswith(f"seg eval --testbed {results['testbed']}")
        assert len(results["seeds"]) >= 3
        write_reports(results, tmp_path, results["command"])
        assert (BENCHMARKS / f"{path.stem}.png").exists()
    confirmations = sorted(BENCHMARKS.glob("confirmation-*.json"))
    assert {path.stem for path in confirmations} >= {"confirmation-seg-toy", "confirmation-seg-clutter"}
    for path in confirmations:
        results = json.loads(path.read_text(encoding="utf-8"))
        assert results["command"].startswith(f"seg eval --testbed {results['testbed']} --confirm")
        write_reports(results, tmp_path, results["command"])
    assert (tmp_path / "QUALITY.md").read_text(encoding="utf-8") == (BENCHMARKS / "QUALITY.md").read_text(
        encoding="utf-8"
    )


def _sweep_row(setting: str, method: str, fd: list[float], **fields) -> dict:
    return {"setting": setting, "method": method, "per_seed": {"fd": fd}, "cfg": 1.0, "sigma": math.inf, **fields}


def test_confirmation_picks_on_the_sweep_and_refuses_its_seeds_before_loading_anything(tmp_path):
    from smoothed_energy_guidance.toy.confirm import ConfirmationPlan, confirm

    sweep = {
        "seeds": [0, 1, 2],
        "unconditional": [
            _sweep_row("vanilla", "vanilla", [10, 10, 10]),
            _sweep_row("SEG 1 σ=2", "SEG", [9, 9, 9.5], seg_scale=1.0, sigma=2.0),
            _sweep_row("SEG 3 σ=2", "SEG", [12, 5, 9], seg_scale=3.0, sigma=2.0),  # lowest mean, not lowest max
            _sweep_row("PAG 3", "PAG", [1, 1, 1], seg_scale=0.0),  # PAG never picked as SEG
        ],
        "conditional": [
            _sweep_row("CFG 5", "CFG", [3, 3, 3], cfg=5.0, seg_scale=0.0),
            _sweep_row("CFG 5 + SEG 3 σ=1", "CFG + SEG", [4, 4, 4], cfg=5.0, seg_scale=3.0, sigma=1.0),
            _sweep_row("CFG 5 + SEG 3 σ=∞", "CFG + SEG", [5, 5, 5], cfg=5.0, seg_scale=3.0),
        ],
    }
    plan = ConfirmationPlan.from_sweep(sweep)
    assert plan.seg == (3.0, 2.0) and plan.cfg_seg == (5.0, 3.0, 1.0)
    assert [s.name for s in plan.unconditional()] == ["vanilla", "SEG 3 σ=2", "SEG 3 σ=∞"]  # σ=∞ at 3 is the paper's
    assert [s.name for s in plan.conditional()] == ["CFG 5", "CFG 5 + SEG 3 σ=1"]
    assert plan.comparisons() == [
        ("unconditional", "SEG 3 σ=2", "vanilla"),
        ("unconditional", "SEG 3 σ=∞", "SEG 3 σ=2"),
        ("unconditional", "SEG 3 σ=∞", "vanilla"),
        ("conditional", "CFG 5 + SEG 3 σ=1", "CFG 5"),
    ]
    missing = tmp_path / "no-model"
    with pytest.raises(ValueError, match=r"Seeds \[2\] picked the settings"):
        confirm(missing, missing, sweep, range(2, 8))
    with pytest.raises(ValueError, match="at least 6 fresh seeds; got 5"):
        confirm(missing, missing, sweep, range(10, 15))


def test_confirmation_tests_the_declared_comparisons_on_fresh_seeds(smoke_model, tmp_path):
    """The comparisons recomputed independently (SciPy's paired t-test, Holm by hand), and the report's words."""
    from scipy.stats import ttest_rel

    from smoothed_energy_guidance.toy.confirm import confirm
    from smoothed_energy_guidance.toy.evaluate import SweepPlan, evaluate
    from smoothed_energy_guidance.toy.report import write_reports

    features = smoke_model.parent / "seg-toy-features.safetensors"
    plan = SweepPlan(scales=(2.0,), sigmas=(2.0,), pag_scales=(), combined_scale=2.0)
    sweep = evaluate(smoke_model, features, samples=8, steps=2, seeds=(0, 1), plan=plan, batch=8, references=8)
    sweep["command"] = "seg eval --testbed seg-toy --seeds 2"
    write_reports(sweep, tmp_path, sweep["command"])
    results = confirm(smoke_model, features, sweep, range(10, 16), batch=8, progress=False)
    assert results["seeds"] == list(range(10, 16)) and (results["samples"], results["steps"]) == (8, 2)
    assert [row["setting"] for row in results["unconditional"]] == [
        "real scenes (held out)",
        "vanilla",
        "SEG 2 σ=2",
        "SEG 2 σ=∞",
        "SEG 3 σ=∞",
    ]
    rows = {row["setting"]: row for row in results["unconditional"] + results["conditional"]}
    raw = []
    for comparison in results["comparisons"]:
        a, b = (rows[comparison[key]]["per_seed"]["fd"] for key in ("setting", "baseline"))
        raw.append(ttest_rel(a, b).pvalue)
        assert comparison["p"] == pytest.approx(raw[-1])
        assert comparison["difference"]["mean"] == pytest.approx(sum(a) / 6 - sum(b) / 6)
    assert len(raw) == 4
    order = sorted(range(4), key=raw.__getitem__)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * raw[index]))
        assert results["comparisons"][index]["p_holm"] == pytest.approx(running)
        words = results["comparisons"][index]["verdict"]
        mean = results["comparisons"][index]["difference"]["mean"]
        assert words == ("no difference detected" if running >= 0.05 else "better" if mean < 0 else "worse")
    (data, table) = write_reports(results, tmp_path, "seg eval --testbed seg-toy --confirm --seed 10 --seeds 6")
    assert data.name == "confirmation-seg-toy.json"
    text = table.read_text(encoding="utf-8")
    assert text.index("## seg-toy") < text.index("### seg-toy: confirmation on fresh seeds")
    assert "| SEG 2 σ=2 vs vanilla |" in text and "| CFG 5 + SEG 2 σ=2 vs CFG 5 |" in text
