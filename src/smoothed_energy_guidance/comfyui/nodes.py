"""The ComfyUI nodes (ComfyUI's ``io.ComfyNode`` API). Imported only inside ComfyUI."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from ..core.guidance import SegConfig
from ..core.layers import parse_layer_text
from .patch import SegPatch
from .prefix import PrefixReplay

PREFIX_WRAPPER_KEY = "smoothed_energy_guidance.prefix"

INFINITE_SIGMA = 10000.0  # any σ > 9999 is the official SEG's ∞ (uniform queries); JSON has no inf


class SmoothedEnergyGuidance(io.ComfyNode):
    """MODEL → MODEL with Smoothed Energy Guidance on top of whatever guidance the sampler runs."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SmoothedEnergyGuidance",
            display_name="Smoothed Energy Guidance (SEG)",
            category="model_patches/unet",
            description=(
                "Smoothed Energy Guidance: adds scale·(cond − perturbed), where the perturbed prediction blurs "
                "the queries of the chosen self-attention layers with a Gaussian of blur_sigma. Composes with "
                "CFG (also CFG 1) and other model patches."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Float.Input(
                    "scale",
                    default=3.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="SEG guidance scale; 0 returns the model unpatched. About 3 works well.",
                ),
                io.Float.Input(
                    "blur_sigma",
                    default=INFINITE_SIGMA,
                    min=0.01,
                    max=1e9,
                    step=0.1,
                    round=0.01,
                    tooltip="Gaussian σ over the attention grid, in tokens; any value > 9999 means ∞ (uniform "
                    "queries, SEG's default). Vary it exponentially: 1, 4, 16, …",
                ),
                io.String.Input(
                    "layers",
                    default="",
                    tooltip="Layers to blur, e.g. 'mid', 'd4-d9+u0' (UNets) or 'double.9', 'single.0-3' (Flux); "
                    "empty: the family's default (the UNet mid block, or the middle transformer block).",
                ),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001),
                io.Float.Input(
                    "temporal_sigma",
                    default=0.0,
                    min=0.0,
                    max=1e9,
                    step=0.1,
                    round=0.01,
                    tooltip="Video models: σ along time, in latent frames (0: none; > 9999: the mean over frames).",
                ),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(
        cls,
        model,
        scale: float,
        blur_sigma: float,
        layers: str,
        start_percent: float,
        end_percent: float,
        temporal_sigma: float = 0.0,
    ) -> io.NodeOutput:
        if scale == 0:
            return io.NodeOutput(model)  # the model as it came, bit for bit
        patch = seg_patch(model, scale, blur_sigma, layers, start_percent, end_percent, temporal_sigma)
        patched = model.clone()
        patched.set_model_sampler_post_cfg_function(patch)
        # first of the pre-CFG functions, whichever node adds its own before or after this one
        earlier = patched.model_options.get("sampler_pre_cfg_function", [])
        patched.model_options["sampler_pre_cfg_function"] = [patch.keep_model_cond, *earlier]
        share_prefix(patched, patch)
        return io.NodeOutput(patched)


def seg_patch(
    model,
    scale: float,
    blur_sigma: float,
    layers: str = "",
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    temporal_sigma: float = 0.0,
) -> SegPatch:
    """The SEG patch for a ComfyUI ``ModelPatcher``, checked against its model now (family, layer specs)."""
    specs = parse_layer_text(layers) or None
    config = SegConfig(scale=scale, blur_sigma=blur_sigma, layers=specs, temporal_sigma=temporal_sigma)
    sampling = model.get_model_object("model_sampling")
    patch = SegPatch(
        config,
        sigma_start=sampling.percent_to_sigma(start_percent),
        sigma_end=sampling.percent_to_sigma(end_percent),
    )
    patch.resolve(model.model.diffusion_model, type(model.model.model_config).__name__)
    return patch


def share_prefix(model, patch: SegPatch) -> PrefixReplay | None:
    """Let the perturbed pass replay the layers before the first SEG layer (where the family says which they
    are): an object patch on each such layer's forward and an ``APPLY_MODEL`` wrapper, both ComfyUI's own
    patch points on the ``ModelPatcher`` ``model``."""
    from comfy.patcher_extension import WrappersMP

    diffusion_model = model.model.diffusion_model
    family, layers = patch.resolve(diffusion_model, type(model.model.model_config).__name__)
    pairs = family.prefix(diffusion_model, layers) if family.prefix is not None else ()
    if not pairs:
        return None
    replay = PrefixReplay(patch.active_at)
    for name, source in pairs:
        key = f"diffusion_model.{name}.forward"
        model.add_object_patch(key, replay.layer_forward(name, model.get_model_object(key), source))
    model.add_wrapper_with_key(WrappersMP.APPLY_MODEL, PREFIX_WRAPPER_KEY, replay.apply_model_wrapper)
    patch.prefix = replay
    return replay


class SegExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [SmoothedEnergyGuidance]


async def comfy_entrypoint() -> SegExtension:
    return SegExtension()


NODE_CLASS_MAPPINGS = {"SmoothedEnergyGuidance": SmoothedEnergyGuidance}
NODE_DISPLAY_NAME_MAPPINGS = {"SmoothedEnergyGuidance": "Smoothed Energy Guidance (SEG)"}
