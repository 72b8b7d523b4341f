"""Write a diffusers SDXL pipeline as an original (LDM / SGM) single-file checkpoint, for loading tests.

The layout is the one SDXL checkpoints on the hub use: ``model.diffusion_model.*`` (UNet),
``first_stage_model.*`` (VAE), ``conditioner.embedders.0.transformer.*`` (CLIP ViT-L in HF naming) and
``conditioner.embedders.1.model.*`` (OpenCLIP ViT-bigG naming). The tests check the mapping by loading
the file back with diffusers' own converter and comparing every weight.
"""

from __future__ import annotations

import re

import torch

RESNET_UNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
RESNET_VAE = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPENCLIP_BLOCK = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _rename(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def unet_key(key: str, unet) -> str:
    layers = unet.config.layers_per_block
    if match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = 1 + i * (layers + 1) + j
        return (
            f"input_blocks.{index}.0.{_rename(rest, RESNET_UNET)}"
            if kind == "resnets"
            else f"input_blocks.{index}.1.{rest}"
        )
    if match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(match[1]) + 1) * (layers + 1)}.0.op.{match[2]}"
    if match := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = i * (layers + 1) + j
        return (
            f"output_blocks.{index}.0.{_rename(rest, RESNET_UNET)}"
            if kind == "resnets"
            else f"output_blocks.{index}.1.{rest}"
        )
    if match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        i = int(match[1])
        slot = 2 if unet.up_blocks[i].attentions is not None and hasattr(unet.up_blocks[i], "attentions") else 1
        return f"output_blocks.{i * (layers + 1) + layers}.{slot}.{match[2]}"
    if match := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(match[1])}.{_rename(match[2], RESNET_UNET)}"
    if key.startswith("mid_block.attentions.0."):
        return "middle_block.1." + key[len("mid_block.attentions.0.") :]
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    return _rename(key, fixed)


def vae_key(key: str, blocks: int) -> str:
    if match := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        side, kind, i, j, rest = match.groups()
        level = int(i) if kind == "down" else blocks - 1 - int(i)
        return f"{side}.{kind}.{level}.block.{j}.{_rename(rest, RESNET_VAE)}"
    if match := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(.*)", key):
        side, kind, i, _, rest = match.groups()
        level = int(i) if kind == "down" else blocks - 1 - int(i)
        return f"{side}.{kind}.{level}.{'downsample' if kind == 'down' else 'upsample'}.conv.{rest}"
    if match := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{_rename(match[3], RESNET_VAE)}"
    if match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        return f"{match[1]}.mid.attn_1.{_rename(match[2], VAE_ATTENTION)}"
    return key.replace("conv_norm_out", "norm_out")


def openclip_state(text_encoder) -> dict[str, torch.Tensor]:
    state = text_encoder.state_dict()
    out = {
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        "text_projection": state["text_projection.weight"].T.contiguous(),
    }
    for index in range(text_encoder.config.num_hidden_layers):
        layer = f"text_model.encoder.layers.{index}."
        block = f"transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            out[block + f"attn.in_proj_{kind}"] = torch.cat(
                [state[layer + f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
        for key, value in state.items():
            if key.startswith(layer) and ".self_attn." not in key.replace("self_attn.out_proj", "out_proj_"):
                out[block + _rename(key[len(layer) :], OPENCLIP_BLOCK)] = value
            elif key.startswith(layer + "self_attn.out_proj."):
                out[block + "attn.out_proj." + key.rsplit(".", 1)[1]] = value
    return out


def sdxl_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """Every weight of an SDXL pipeline under its original single-file name."""
    checkpoint = {}
    for key, value in pipe.unet.state_dict().items():
        checkpoint["model.diffusion_model." + unet_key(key, pipe.unet)] = value
    blocks = len(pipe.vae.config.block_out_channels)
    for key, value in pipe.vae.state_dict().items():
        if ".mid_block.attentions." in key and value.ndim == 2:
            value = value[:, :, None, None]  # LDM stores these projections as 1×1 convolutions
        checkpoint["first_stage_model." + vae_key(key, blocks)] = value
    for key, value in pipe.text_encoder.state_dict().items():
        # checkpoints on the hub use the transformers-4 names, with the text_model. prefix
        key = key if key.startswith("text_model.") else "text_model." + key
        checkpoint["conditioner.embedders.0.transformer." + key] = value
    for key, value in openclip_state(pipe.text_encoder_2).items():
        checkpoint["conditioner.embedders.1.model." + key] = value
    return {key: value.contiguous() for key, value in checkpoint.items()}
