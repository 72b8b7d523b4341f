"""Train a testbed end to end: VAE, then text encoders + UNet with caption dropout, then the
scene-feature network used by the quality evaluation (on its own stream of scenes, held out from
the denoiser's). Deterministic for a fixed seed.

    python scripts/train_toy_model.py                         # seg-toy (about 35 minutes on 2 cores)
    python scripts/train_toy_model.py --testbed seg-clutter   # the harder testbed (about an hour)
    python scripts/train_toy_model.py --features-only         # retrain only the feature network
    python scripts/train_toy_model.py --smoke --out DIR       # seconds, for tests
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .features import train_features
from .model import encode_captions, time_ids, toy_components, training_noise_scheduler
from .testbeds import TESTBEDS, Testbed, testbed


@dataclass(frozen=True)
class TrainConfig:
    testbed: str = "seg-toy"
    seed: int = 0
    vae_steps: int = 800
    text_steps: int = 0  # caption → attribute pretraining of the text encoders before the denoiser
    unet_steps: int = 3500
    feature_steps: int = 800
    batch: int = 32
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4
    caption_dropout: float = 0.15
    out: Path | None = None  # default: the testbed's bundled folder

    @classmethod
    def shipped(cls, name: str, seed: int = 0, out: Path | None = None) -> TrainConfig:
        """The configuration the bundled weights of testbed ``name`` were trained with."""
        return cls(testbed=name, seed=seed, out=out, **testbed(name).training)

    @classmethod
    def smoke(cls, out: Path, name: str = "seg-toy") -> TrainConfig:
        return cls(testbed=name, vae_steps=15, text_steps=5, unet_steps=15, feature_steps=15, batch=8, out=out)

    @property
    def bed(self) -> Testbed:
        return testbed(self.testbed)

    @property
    def model_dir(self) -> Path:
        return self.out or self.bed.model_dir

    @property
    def features_path(self) -> Path:
        return self.bed.features_beside(self.model_dir)


def _batches(bed: Testbed, rng: np.random.Generator, batch: int):
    while True:
        images, scenes = bed.domain.make_batch(rng, batch)
        yield torch.from_numpy(images), scenes


def train_vae(vae, config: TrainConfig, rng: np.random.Generator, progress: bool) -> float:
    """Reconstruction + a small KL term; returns the latent scaling factor (1 / latent std)."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    batches = _batches(config.bed, rng, config.batch)
    for _ in tqdm(range(config.vae_steps), desc="vae", disable=not progress):
        images, _ = next(batches)
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, images) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        images, _ = config.bed.domain.make_batch(rng, 256)
        latents = vae.encode(torch.from_numpy(images)).latent_dist.mean
    return float(1.0 / latents.std())


def pretrain_text_encoders(components, config: TrainConfig, progress: bool) -> float:
    """Teach both text encoders to read a caption's attributes from what the UNet sees of them (the pooled
    projection and the penultimate states), so the denoiser starts from captions that are already told apart
    instead of learning to parse bytes through the diffusion loss. Scenes come from their own stream
    (seed, 4). Returns the final attribute accuracy on the training captions."""
    encoders = [components["text_encoder"], components["text_encoder_2"]]
    attributes = config.bed.domain.ATTRIBUTES
    width = config.bed.text.projection + sum(config.bed.text.hidden)
    heads = torch.nn.ModuleDict({name: torch.nn.Linear(width, len(values)) for name, values in attributes.items()})
    parameters = [*heads.parameters(), *(p for e in encoders for p in e.parameters())]
    optimizer = torch.optim.AdamW(parameters, lr=2e-3)
    rng = np.random.default_rng([config.seed, 4])
    accuracy = 0.0
    for _ in tqdm(range(config.text_steps), desc="text", disable=not progress):
        scenes = [config.bed.domain.random_scene(rng) for _ in range(config.batch * 4)]
        states, pooled = encode_captions(components, [s.caption for s in scenes])
        summary = torch.cat([pooled, states.mean(1)], dim=1)
        loss = torch.zeros(())
        hits = []
        for name, head in heads.items():
            labels = torch.tensor([s.labels()[name] for s in scenes])
            logits = head(summary)
            loss = loss + F.cross_entropy(logits, labels)
            hits.append((logits.argmax(1) == labels).float().mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = float(torch.stack(hits).mean())
    return accuracy


def train_denoiser(components, config: TrainConfig, rng: np.random.Generator, progress: bool) -> None:
    """ε-prediction with SDXL's noise schedule; captions dropped to "" so CFG and unconditional work."""
    unet, vae = components["unet"], components["vae"]
    encoders = [components["text_encoder"], components["text_encoder_2"]]
    parameters = [*unet.parameters(), *(p for e in encoders for p in e.parameters())]
    optimizer = torch.optim.AdamW(parameters, lr=config.unet_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.unet_lr, total_steps=config.unet_steps, pct_start=0.05
    )
    noise_scheduler = training_noise_scheduler()
    scaling = vae.config.scaling_factor
    batches = _batches(config.bed, rng, config.batch)
    generator = torch.Generator().manual_seed(config.seed)
    bar = tqdm(range(config.unet_steps), desc="unet", disable=not progress)
    for _ in bar:
        images, scenes = next(batches)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mean * scaling
        captions = ["" if rng.random() < config.caption_dropout else s.caption for s in scenes]
        prompt_embeds, pooled = encode_captions(components, captions)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(scenes),), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        sizes = torch.tensor([time_ids(config.bed.size)]).repeat(len(scenes), 1)
        prediction = unet(
            noisy, timesteps, prompt_embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": sizes}
        ).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)


def train_feature_network(config: TrainConfig, progress: bool = True) -> Path:
    """The scene-feature network alone, from its own held-out stream of scenes (seed, 1)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 1])
    features = train_features(config.bed, config.feature_steps, config.batch * 2, rng, progress)
    config.model_dir.parent.mkdir(parents=True, exist_ok=True)
    features.save(config.features_path)
    return config.features_path


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train everything and save the pipeline (fp16 safetensors) and the feature network."""
    from diffusers import StableDiffusionXLPipeline

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    components = toy_components(config.seed, config.bed)
    started = time.time()
    components["vae"].train()
    scaling = train_vae(components["vae"], config, rng, progress)
    components["vae"].register_to_config(scaling_factor=scaling)
    components["vae"].eval().requires_grad_(False)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        components[name].train()
    text_accuracy = pretrain_text_encoders(components, config, progress) if config.text_steps else None
    train_denoiser(components, config, rng, progress)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        components[name].eval()
    pipe = StableDiffusionXLPipeline(**components, force_zeros_for_empty_prompt=False)
    out = config.model_dir
    out.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    train_feature_network(config, progress)
    minutes = (time.time() - started) / 60
    pretrained = "" if text_accuracy is None else f"; text pretraining reached attribute accuracy {text_accuracy:.3f}"
    (out.parent / f"{config.testbed}-TRAINING.txt").write_text(
        f"trained with {replace(config, out=Path(out.name))} in {minutes:.1f} minutes "
        f"on {torch.get_num_threads()} CPU threads{pretrained}\n",
        encoding="utf-8",
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a bundled SEG testbed model.")
    parser.add_argument("--testbed", default="seg-toy", choices=list(TESTBEDS))
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (for tests)")
    parser.add_argument("--features-only", action="store_true", help="retrain only the scene-feature network")
    parser.add_argument("--out", type=Path, default=None, help="model folder (default: the bundled one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.smoke:
        config = TrainConfig.smoke(args.out or Path(f"{args.testbed}-smoke"), args.testbed)
    else:
        config = TrainConfig.shipped(args.testbed, args.seed, args.out)
    print(train_feature_network(config) if args.features_only else train(config))


if __name__ == "__main__":
    main()
