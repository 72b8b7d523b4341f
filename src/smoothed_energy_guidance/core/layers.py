"""Which self-attention layers SEG perturbs: the layer-spec grammar, resolved against a model.

Specs (strings, in any mix):

- ``"down"``, ``"mid"``, ``"up"``: every self-attention in that part of a UNet;
- index names ``"d4"``, ``"m0"``, ``"u30"``: the n-th self-attention of that part, in
  ``named_modules()`` order (the official SEG-SDXL names);
- ranges ``"d4-d9"`` (or ``"d4-9"``), inclusive;
- a module name, matched exactly or as a dotted prefix: ``"mid_block.attentions.0"`` selects
  the self-attentions inside it, and ``"blocks.1"`` never matches ``"blocks.10"``.

Pure Python over module names: nothing here touches a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PART_PREFIXES = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}
PART_LETTERS = {"d": "down", "m": "mid", "u": "up"}
_INDEX = re.compile(r"^([dmu])(\d+)$")
_RANGE = re.compile(r"^([dmu])(\d+)-([dmu]?)(\d+)$")


@dataclass(frozen=True)
class AttentionInventory:
    """The self-attention modules of one model, in ``named_modules()`` order, grouped by part."""

    parts: dict[str, tuple[str, ...]]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for names in self.parts.values() for name in names)

    def describe(self) -> str:
        """A one-line summary of the valid specs, for error messages."""
        pieces = []
        for part, names in self.parts.items():
            if names:
                letter = part[0]
                pieces.append(f"'{part}' ({letter}0-{letter}{len(names) - 1})")
        return ", ".join(pieces) if pieces else "none"


def unet_self_attention_inventory(module_names: Iterable[str]) -> AttentionInventory:
    """Group a UNet's ``*.attn1`` module names into down / mid / up parts, order kept."""
    parts: dict[str, list[str]] = {"down": [], "mid": [], "up": []}
    for name in module_names:
        # motion modules (AnimateDiff) attend along frames, not over the image grid
        if not name.endswith(".attn1") or ".motion_modules." in name:
            continue
        part = PART_PREFIXES.get(name.split(".", 1)[0])
        if part is not None:
            parts[part].append(name)
    return AttentionInventory({part: tuple(names) for part, names in parts.items()})


def _by_index(inventory: AttentionInventory, letter: str, first: int, last: int, spec: str) -> list[str]:
    part = PART_LETTERS[letter]
    names = inventory.parts.get(part, ())
    if not names:
        raise ValueError(
            f"Layer {spec!r} names the '{part}' part, which has no self-attention here; "
            f"valid layers: {inventory.describe()}."
        )
    if first > last or last >= len(names):
        raise ValueError(
            f"Layer {spec!r} is out of range: '{part}' has {len(names)} self-attention layers "
            f"({letter}0-{letter}{len(names) - 1}). Valid layers: {inventory.describe()}."
        )
    return list(names[first : last + 1])


def _resolve_one(spec: object, inventory: AttentionInventory) -> list[str]:
    if not isinstance(spec, str):
        raise ValueError(
            f"Layer spec {spec!r} must be a string such as 'mid', 'd4', 'u0-u5' or a module name; "
            f"valid layers: {inventory.describe()}."
        )
    spec = spec.strip()
    if spec in inventory.parts:
        if not inventory.parts[spec]:
            raise ValueError(
                f"Layer {spec!r} has no self-attention in this model; valid layers: {inventory.describe()}."
            )
        return list(inventory.parts[spec])
    if match := _INDEX.match(spec):
        index = int(match.group(2))
        return _by_index(inventory, match.group(1), index, index, spec)
    if match := _RANGE.match(spec):
        letter, first, end_letter, last = match.groups()
        if end_letter and end_letter != letter:
            raise ValueError(
                f"Layer range {spec!r} spans two parts; write one range per part, "
                f"e.g. '{letter}{first}-{letter}{last}'."
            )
        return _by_index(inventory, letter, int(first), int(last), spec)
    matched = [name for name in inventory.names if name == spec or name.startswith(spec + ".")]
    if matched:
        return matched
    examples = ", ".join(inventory.names[:3])
    raise ValueError(
        f"Unknown layer {spec!r}. Valid layers: {inventory.describe()}, ranges such as 'd4-d9', "
        f"or module names such as {examples}."
    )


def parse_layer_text(text: str) -> tuple[str, ...]:
    """Layer specs typed as one string: ``"mid"``, ``"mid+up"``, ``"d4-d9 + u0"``, ``"double.9, single.0"``
    (``+``, commas or spaces between specs). Empty text gives no specs (the family's default).

    >>> parse_layer_text("d4-d9 + u0, mid")
    ('d4-d9', 'u0', 'mid')
    """
    return tuple(part for part in text.replace("+", " ").replace(",", " ").split() if part)


def resolve_layers(specs: str | Sequence[str], inventory: AttentionInventory) -> tuple[str, ...]:
    """Turn user layer specs into module names, in model order, without duplicates.

    >>> inv = unet_self_attention_inventory(["mid_block.a.attn1", "mid_block.b.attn1", "up_blocks.0.attn1"])
    >>> resolve_layers(["m1", "up"], inv)
    ('mid_block.b.attn1', 'up_blocks.0.attn1')
    """
    if isinstance(specs, str):
        specs = [specs]
    if len(specs) == 0:
        raise ValueError(f"No SEG layers given; pass e.g. ['mid']. Valid layers: {inventory.describe()}.")
    chosen = {name for spec in specs for name in _resolve_one(spec, inventory)}
    return tuple(name for name in inventory.names if name in chosen)


@dataclass(frozen=True)
class BlockInventory:
    """Attention modules over image tokens in a transformer's blocks, by stack, in execution order.

    ``stacks`` maps a stack name used in specs (``"blocks"``, or ``"double"`` / ``"single"`` for
    Flux) to ``(block module name, attention module names)`` pairs.
    """

    stacks: dict[str, tuple[tuple[str, tuple[str, ...]], ...]]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for blocks in self.stacks.values() for _, names in blocks for name in names)

    def block_names(self) -> list[str]:
        return [f"{stack}.{i}" for stack, blocks in self.stacks.items() for i in range(len(blocks))]

    def describe(self) -> str:
        pieces = [f"'{stack}' ({stack}.0-{stack}.{len(blocks) - 1})" for stack, blocks in self.stacks.items()]
        return ", ".join(pieces)

    def default_layers(self) -> tuple[str, ...]:
        """The middle block of the whole stack: the DiT counterpart of a UNet's mid block."""
        blocks = self.block_names()
        return (blocks[len(blocks) // 2],)


_BLOCK_RANGE = re.compile(r"^(?:([a-z_]+)\.)?(\d+)(?:-(?:[a-z_]+\.)?(\d+))?$")


def _resolve_block_spec(spec: object, inventory: BlockInventory) -> list[str]:
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = str(spec)
    if not isinstance(spec, str):
        raise ValueError(
            f"Layer spec {spec!r} must be a string such as 'blocks.7' or '7-9'; valid layers: {inventory.describe()}."
        )
    spec = spec.strip()
    if spec in inventory.stacks:
        return [name for _, names in inventory.stacks[spec] for name in names]
    if match := _BLOCK_RANGE.match(spec):
        stack, first, last = match[1], int(match[2]), int(match[3] if match[3] is not None else match[2])
        if stack is None:
            if len(inventory.stacks) != 1:
                raise ValueError(
                    f"Layer {spec!r} is ambiguous here: write the stack, e.g. "
                    f"{' or '.join(f'{s}.{first}' for s in inventory.stacks)}."
                )
            stack = next(iter(inventory.stacks))
        if stack in inventory.stacks:
            blocks = inventory.stacks[stack]
            if first > last or last >= len(blocks):
                raise ValueError(
                    f"Layer {spec!r} is out of range: '{stack}' has {len(blocks)} blocks "
                    f"({stack}.0-{stack}.{len(blocks) - 1})."
                )
            return [name for _, names in blocks[first : last + 1] for name in names]
    matched = [name for name in inventory.names if name == spec or name.startswith(spec + ".")]
    if matched:
        return matched
    raise ValueError(
        f"Unknown layer {spec!r}. Valid layers: {inventory.describe()}, ranges such as "
        f"'{next(iter(inventory.stacks))}.2-4', or module names such as {inventory.names[0]}."
    )


def resolve_block_layers(specs: str | int | Sequence[str | int], inventory: BlockInventory) -> tuple[str, ...]:
    """Transformer layer specs → attention module names, in model order, without duplicates.

    >>> inv = BlockInventory({"blocks": (("t.0", ("t.0.attn",)), ("t.1", ("t.1.attn", "t.1.attn2")))})
    >>> resolve_block_layers(["blocks.1"], inv)
    ('t.1.attn', 't.1.attn2')
    >>> resolve_block_layers("0-1", inv)
    ('t.0.attn', 't.1.attn', 't.1.attn2')
    """
    if isinstance(specs, (str, int)):
        specs = [specs]
    if len(specs) == 0:
        raise ValueError(f"No SEG layers given. Valid layers: {inventory.describe()}.")
    chosen = {name for spec in specs for name in _resolve_block_spec(spec, inventory)}
    return tuple(name for name in inventory.names if name in chosen)
