"""Quality of SEG on a trained testbed: Fréchet distance and precision / recall in the feature space
of the testbed's scene network, and caption adherence read by its attribute heads.

A sweep (:class:`SweepPlan`) measures, unconditionally, vanilla sampling, PAG (diffusers' PAG pipeline)
and SEG over scales × blur σ, and conditionally CFG alone and combined with SEG or PAG; every metric is
measured on several seeds and reported with 95 % intervals (:mod:`.statistics`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .features import SceneFeatures
from .statistics import Interval, seed_interval


def sigma_label(sigma: float) -> str:
    return "∞" if math.isinf(sigma) else f"{sigma:g}"


@dataclass(frozen=True)
class Setting:
    name: str
    cfg: float = 1.0
    seg_scale: float = 0.0
    sigma: float = math.inf
    pag_scale: float = 0.0

    @property
    def method(self) -> str:
        """What the setting adds to plain sampling: vanilla, CFG, SEG, PAG, CFG + SEG or CFG + PAG."""
        extra = "SEG" if self.seg_scale else "PAG" if self.pag_scale else ""
        guidance = " + ".join(part for part in ("CFG" if self.cfg > 1 else "", extra) if part)
        return guidance or "vanilla"


def seg_setting(scale: float, sigma: float, cfg: float = 1.0) -> Setting:
    prefix = f"CFG {cfg:g} + " if cfg > 1 else ""
    return Setting(f"{prefix}SEG {scale:g} σ={sigma_label(sigma)}", cfg=cfg, seg_scale=scale, sigma=sigma)


def pag_setting(scale: float, cfg: float = 1.0) -> Setting:
    prefix = f"CFG {cfg:g} + " if cfg > 1 else ""
    return Setting(f"{prefix}PAG {scale:g}", cfg=cfg, pag_scale=scale)


@dataclass(frozen=True)
class SweepPlan:
    """The settings a sweep measures.

    Unconditional (empty prompt): vanilla, PAG at each of ``pag_scales``, SEG at every ``scales`` × ``sigmas``.
    Conditional (captions of fresh scenes): vanilla, CFG, CFG + SEG at ``combined_scale`` for every σ of
    ``combined_sigmas`` (default: ``sigmas``), and CFG + PAG at ``combined_scale``.
    """

    scales: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 5.0)
    sigmas: tuple[float, ...] = (1.0, 4.0, 16.0, math.inf)
    pag_scales: tuple[float, ...] = (1.0, 3.0)
    cfg: float = 5.0
    combined_scale: float = 3.0
    combined_sigmas: tuple[float, ...] | None = None

    def unconditional(self) -> list[Setting]:
        seg = [seg_setting(scale, sigma) for sigma in self.sigmas for scale in self.scales]
        return [Setting("vanilla"), *(pag_setting(scale) for scale in self.pag_scales), *seg]

    def conditional(self) -> list[Setting]:
        sigmas = self.sigmas if self.combined_sigmas is None else self.combined_sigmas
        combined = [seg_setting(self.combined_scale, sigma, self.cfg) for sigma in sigmas]
        return [
            Setting("vanilla"),
            Setting(f"CFG {self.cfg:g}", cfg=self.cfg),
            *combined,
            pag_setting(self.combined_scale, self.cfg),
        ]


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (Heusel et al. 2017)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle)


class Support:
    """A point set's estimated support for improved precision / recall (Kynkäänniemi et al. 2019): the union of
    balls around each point reaching its k-th nearest neighbour. The radii are computed once, in chunks, so a
    large real reference set can be queried many times (bootstrap)."""

    def __init__(self, points: torch.Tensor, k: int = 5, chunk: int = 2048) -> None:
        self.points, self.chunk = points, chunk
        self.radii = torch.cat(
            [
                torch.cdist(points[start : start + chunk], points).kthvalue(k + 1, dim=1).values
                for start in range(0, len(points), chunk)
            ]
        )

    def share_inside(self, queries: torch.Tensor) -> float:
        """The share of ``queries`` inside some ball."""
        inside = [
            (torch.cdist(queries[start : start + self.chunk], self.points) <= self.radii[None]).any(dim=1)
            for start in range(0, len(queries), self.chunk)
        ]
        return float(torch.cat(inside).float().mean())


def kernel_distance(
    real: torch.Tensor, fake: torch.Tensor, subsets: int = 20, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: the unbiased squared MMD with the cubic kernel ``(xᵀy / d + 1)³`` on the same features as FD,
    averaged over ``subsets`` random subsets of ``min(subset_size, n)`` points of each set; returns the mean and
    its standard error over the subsets. Unbiased: two samples of one distribution score 0 on average."""
    real, fake = real.double(), fake.double()
    size = min(subset_size, len(real), len(fake))
    dim = real.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = real[torch.from_numpy(rng.choice(len(real), size, replace=False))]
        y = fake[torch.from_numpy(rng.choice(len(fake), size, replace=False))]
        kxx, kyy, kxy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (size * (size - 1))
        values.append(float(within - 2 * kxy.mean()))
    spread = float(np.std(values, ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return float(np.mean(values)), spread


def coverage(reference: torch.Tensor, queries: torch.Tensor, k: int = 5) -> float:
    """Share of ``queries`` inside some k-NN ball of ``reference`` (radius: distance to the k-th neighbour)."""
    return Support(reference, k).share_inside(queries)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """Improved precision / recall (Kynkäänniemi et al. 2019): k-NN balls around each set."""
    return coverage(real, fake, k), coverage(fake, real, k)


def attribute_hits(heads: dict[str, torch.Tensor], scenes: list[Any]) -> torch.Tensor:
    """(images, attributes) booleans: which caption attributes the heads read back from each image."""
    return torch.stack(
        [heads[name].argmax(1) == torch.tensor([s.labels()[name] for s in scenes]) for name in heads], dim=1
    )


def adherence(heads: dict[str, torch.Tensor], scenes: list[Any]) -> tuple[float, float]:
    """Mean per-attribute accuracy and the share of images with every attribute right."""
    hits = attribute_hits(heads, scenes)
    return float(hits.float().mean()), float(hits.all(1).float().mean())


def sample(pipe: Any, pag: Any, setting: Setting, prompts: list[str], steps: int, seed: int, batch: int, size: int):
    """Images (N, 3, size, size) in [-1, 1] for ``prompts`` under ``setting``."""
    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
        common = dict(
            prompt=chunk,
            num_inference_steps=steps,
            guidance_scale=setting.cfg,
            generator=generator,
            height=size,
            width=size,
            output_type="pt",
        )
        if setting.pag_scale:
            out = pag(**common, pag_scale=setting.pag_scale).images
        else:
            out = pipe(**common, seg_scale=setting.seg_scale, seg_blur_sigma=setting.sigma).images
        images.append(out * 2 - 1)
    return torch.cat(images)


def _interval_dict(interval: Interval) -> dict[str, float]:
    return {"mean": interval.mean, "low": interval.low, "high": interval.high}


def summarize(per_seed: dict[str, list[float]]) -> dict[str, Any]:
    """The per-seed values and the seed interval of every metric."""
    summary: dict[str, Any] = {"per_seed": per_seed}
    for metric, values in per_seed.items():
        summary[metric] = _interval_dict(seed_interval(values))
    return summary


@dataclass
class _Seeded:
    """What one seed of a sweep compares against: real reference features (and their support), fresh real
    scenes held out from the reference (the ceiling row), and captions for conditional runs."""

    seed: int
    support: Support  # of the real reference features (``support.points``)
    held_out: torch.Tensor
    scenes: list[Any]

    @property
    def real(self) -> torch.Tensor:
        return self.support.points

    def metrics(self, fake: torch.Tensor, samples: int) -> dict[str, float]:
        """FD, KID (with its subset standard error) and precision against the whole reference; recall of an
        equally large part of it, as the method defines it (k-NN balls of the generated set)."""
        kid, kid_se = kernel_distance(self.real, fake, seed=self.seed)
        return {
            "fd": frechet_distance(self.real, fake),
            "kid": kid,
            "kid_subset_se": kid_se,
            "precision": self.support.share_inside(fake),
            "recall": coverage(fake, self.real[:samples]),
        }


def evaluate(
    model_dir: Path,
    features_file: Path,
    samples: int = 128,
    steps: int = 20,
    seeds: Sequence[int] = (0, 1, 2),
    plan: SweepPlan = SweepPlan(),
    batch: int = 64,
    references: int = 4096,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Every metric for every setting of ``plan``, per seed, with 95 % intervals over seeds.

    Each seed draws its own noise, its own real reference scenes (``references`` of them: real scenes cost
    nothing, and with only as many as the samples the k-NN balls of precision are so wide in 64 dimensions
    that nearly any image lands inside), its own captions and ``samples`` further real scenes measured like
    a setting (the "real scenes" row: what a perfect sampler scores). ``device`` runs the sampling there; the
    noise is drawn on the CPU, so a GPU run sees the same noise as a CPU run.
    """
    from diffusers import StableDiffusionXLPAGPipeline

    from ..pipelines import StableDiffusionXLSEGPipeline
    from .testbeds import testbed_of

    if len(seeds) < 2:
        raise ValueError("The sweep needs at least two seeds for its intervals (three or more recommended).")
    if references < samples:
        raise ValueError(f"references ({references}) must be at least samples ({samples}).")
    bed = testbed_of(model_dir)
    pipe = StableDiffusionXLSEGPipeline.from_pretrained(model_dir, torch_dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    pag = StableDiffusionXLPAGPipeline.from_pipe(pipe, pag_applied_layers=["mid"])
    pag.set_progress_bar_config(disable=True)
    network = SceneFeatures.load(features_file, bed)

    def features_of_scenes(rng: np.random.Generator, count: int) -> torch.Tensor:
        images, _ = bed.domain.make_batch(rng, count)
        with torch.no_grad():
            return network.features(torch.from_numpy(images))

    seeded = []
    for seed in seeds:
        real = features_of_scenes(np.random.default_rng([seed, 3]), references)
        held_out = features_of_scenes(np.random.default_rng([seed, 5]), samples)
        captions_rng = np.random.default_rng([seed, 2])
        scenes = [bed.domain.random_scene(captions_rng) for _ in range(samples)]
        seeded.append(_Seeded(seed, Support(real), held_out, scenes))
    runs = [("unconditional", plan.unconditional()), ("conditional", plan.conditional())]
    bar = tqdm(total=sum(len(settings) for _, settings in runs) * len(seeds), desc=bed.name, disable=not progress)
    results: dict[str, Any] = {
        "testbed": bed.name,
        "samples": samples,
        "references": references,
        "steps": steps,
        "seeds": list(seeds),
        "device": str(device),
        "plan": asdict(plan),
    }
    for kind, settings in runs:
        rows = []
        if kind == "unconditional":
            real_metrics = [run.metrics(run.held_out, samples) for run in seeded]
            per_seed = {metric: [m[metric] for m in real_metrics] for metric in real_metrics[0]}
            rows.append(_row(REAL_SCENES, "real", per_seed))
        for setting in settings:
            per_seed: dict[str, list[float]] = {}
            for run in seeded:
                prompts = [s.caption for s in run.scenes] if kind == "conditional" else [""] * samples
                with torch.no_grad():
                    images = sample(pipe, pag, setting, prompts, steps, run.seed, batch, bed.size)
                    fake = network.features(images.cpu())
                    heads = {name: head(fake) for name, head in network.heads.items()}
                for metric, value in run.metrics(fake, samples).items():
                    per_seed.setdefault(metric, []).append(value)
                if kind == "conditional":
                    hit = attribute_hits(heads, run.scenes)
                    per_seed.setdefault("attribute_accuracy", []).append(float(hit.float().mean()))
                    per_seed.setdefault("all_correct", []).append(float(hit.all(1).float().mean()))
                bar.update()
            rows.append(_row(setting, setting.method, per_seed))
        results[kind] = rows
    return results


#: The ceiling row of the unconditional table: fresh real scenes measured like a sampler's images.
REAL_SCENES = Setting("real scenes (held out)")


def _row(setting: Setting, method: str, per_seed: dict[str, list[float]]) -> dict[str, Any]:
    """One table row: the setting and its per-seed metrics with their seed intervals."""
    return {"setting": setting.name, **asdict(setting), "method": method, **summarize(per_seed)}
