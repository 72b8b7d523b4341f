"""Where an attention module's queries really come from, told by its live attention processor's class.

diffusers' ``unfuse_qkv_projections()`` restores the processors of classic ``Attention`` modules
but leaves ``fused_projections=True`` and an unused ``to_qkv`` behind, so neither flag says which
projection runs. The processor does: diffusers' fused processors (``Fused…``) call ``to_qkv``, and
the processors of its newer attention classes (which have ``unfuse_projections``) follow the
module's own flag, which those classes keep true.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class QuerySource:
    """The module whose output holds an attention's queries, and how they are laid out there."""

    attribute: str  # "norm_q", "to_q" or "to_qkv"
    module: nn.Module
    parts: int  # 3 when the queries are the first third of a fused projection
    token_dim: int  # 1: (B, N, …); 2: per-head (B, heads, N, head_dim)


def reads_fused_qkv(attention: nn.Module) -> bool:
    """Whether the attention's processor takes Q, K and V from one fused ``to_qkv`` projection."""
    if getattr(attention, "to_qkv", None) is None:
        return False
    if type(getattr(attention, "processor", None)).__name__.startswith("Fused"):
        return True
    keeps_flag_true = hasattr(attention, "unfuse_projections")
    return keeps_flag_true and bool(getattr(attention, "fused_projections", False))


# diffusers' processors that leave an attention's ``norm_q`` unused (SD3's fused joint processor, the classic
# and IP-Adapter processors of ``Attention``); every other processor of a module with ``norm_q`` applies it.
PROCESSORS_WITHOUT_QUERY_NORM = frozenset(
    {
        "AttnProcessor",
        "AttnProcessorNPU",
        "FusedJointAttnProcessor2_0",
        "IPAdapterAttnProcessor",
        "IPAdapterAttnProcessor2_0",
        "IPAdapterXFormersAttnProcessor",
        "SlicedAttnProcessor",
        "XFormersAttnProcessor",
    }
)


def applies_query_norm(attention: nn.Module) -> bool:
    """Whether the attention's processor normalises the queries with ``attention.norm_q``."""
    if getattr(attention, "norm_q", None) is None:
        return False
    return type(getattr(attention, "processor", None)).__name__ not in PROCESSORS_WITHOUT_QUERY_NORM


def query_source(attention: nn.Module, norm_token_dim: int = 1) -> QuerySource:
    """The last module the queries pass through before attention: the query norm, else the projection.

    ``norm_token_dim`` is the token axis of ``norm_q``'s output in this model family.
    """
    if applies_query_norm(attention):
        return QuerySource("norm_q", attention.norm_q, 1, norm_token_dim)
    if reads_fused_qkv(attention):
        return QuerySource("to_qkv", attention.to_qkv, 3, 1)
    return QuerySource("to_q", attention.to_q, 1, 1)
