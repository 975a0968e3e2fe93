"""Cross-attention layer names across hosts: diffusers (canonical) <-> ldm / ComfyUI / A1111, as pure functions.

StyleCloak's canonical name of a cross-attention layer is its diffusers module path, e.g.
``down_blocks.1.attentions.0.transformer_blocks.0.attn2``. The original Stable Diffusion code (ldm), and with it
ComfyUI and A1111/Forge, numbers the UNet's sub-blocks in flat lists instead:

* ``input_blocks.0`` is ``conv_in``; down block ``b`` (0-based), layer ``j`` sits at
  ``input_blocks.{1 + b * (L + 1) + j}`` (each down block has ``L = layers_per_block`` res/attention layers plus one
  downsampler), and its spatial transformer is sub-module ``.1`` (``.0`` is the ResBlock);
* ``mid_block.attentions.0`` is ``middle_block.1``;
* up block ``b``, layer ``j`` (``L + 1`` layers per up block) sits at ``output_blocks.{b * (L + 1) + j}``, again
  with the transformer at ``.1``;
* everything below the transformer (``transformer_blocks.K.attn2``) is spelled the same in both.

So for SD 1.5 (L = 2, 4 blocks) ``down_blocks.1.attentions.0`` <-> ``input_blocks.4.1`` and ``up_blocks.1.attentions.0``
<-> ``output_blocks.3.1``; SDXL (L = 2, 3 blocks) uses the same formulas; the tiny test model (L = 1, 2 blocks) maps
``down_blocks.1.attentions.0`` <-> ``input_blocks.3.1``. Per-block layer counts (a sequence, as diffusers allows)
work too; up blocks then use the reversed sequence, as diffusers builds them.

Host module paths carry prefixes (``model.diffusion_model.`` in A1111 / ldm checkpoints, ``diffusion_model.`` in
ComfyUI, ``unet.`` in some diffusers wrappers): :func:`strip_prefix` removes them and :func:`canonical_name`
accepts any of these spellings.
"""
from __future__ import annotations

import re
from typing import Sequence

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "unet.")

_DIFFUSERS = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.(.+)$")
_DIFFUSERS_MID = re.compile(r"^mid_block\.attentions\.0\.(.+)$")
_LDM = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.1\.(.+)$")
_LDM_MID = re.compile(r"^middle_block\.1\.(.+)$")

LayersPerBlock = int | Sequence[int]


def strip_prefix(name: str) -> str:
    """``name`` without a host's module-path prefix (``diffusion_model.``, ``model.diffusion_model.``, ``unet.``)."""
    for p in PREFIXES:
        if name.startswith(p) and (name[len(p):].split(".", 1)[0] in
                                   ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks",
                                    "middle_block")):
            return name[len(p):]
    return name


def _per_block(layers_per_block: LayersPerBlock, block: int) -> int:
    if isinstance(layers_per_block, int):
        n = layers_per_block
    else:
        if block >= len(layers_per_block):
            raise ValueError(f"block {block} is beyond the {len(layers_per_block)} blocks of this UNet")
        n = int(layers_per_block[block])
    if n < 1:
        raise ValueError(f"layers_per_block must be >= 1, got {n}")
    return n


def _up_counts(layers_per_block: LayersPerBlock, block: int) -> int:
    """Layers in up block ``block`` (one more than the mirrored down block)."""
    if isinstance(layers_per_block, int):
        return _per_block(layers_per_block, 0) + 1
    rev = list(layers_per_block)[::-1]
    return _per_block(rev, block) + 1


def _input_start(layers_per_block: LayersPerBlock, block: int) -> int:
    """``input_blocks`` index of down block ``block``'s first layer."""
    return 1 + sum(_per_block(layers_per_block, b) + 1 for b in range(block))


def _output_start(layers_per_block: LayersPerBlock, block: int) -> int:
    return sum(_up_counts(layers_per_block, b) for b in range(block))


def to_ldm(name: str, layers_per_block: LayersPerBlock) -> str:
    """ldm / ComfyUI name (no prefix) of a canonical (diffusers) cross-attention name."""
    name = strip_prefix(name)
    m = _DIFFUSERS_MID.match(name)
    if m:
        return f"middle_block.1.{m.group(1)}"
    m = _DIFFUSERS.match(name)
    if not m:
        raise ValueError(f"not a diffusers UNet attention name: {name!r} (expected down_blocks.B.attentions.J..., "
                         "mid_block.attentions.0... or up_blocks.B.attentions.J...)")
    kind, b, j, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    if kind == "down_blocks":
        if j >= _per_block(layers_per_block, b):
            raise ValueError(f"{name}: attention {j} does not exist with {layers_per_block} layers per block")
        return f"input_blocks.{_input_start(layers_per_block, b) + j}.1.{rest}"
    if j >= _up_counts(layers_per_block, b):
        raise ValueError(f"{name}: attention {j} does not exist in an up block of this layout")
    return f"output_blocks.{_output_start(layers_per_block, b) + j}.1.{rest}"


def _locate(index: int, starts_and_sizes: list[tuple[int, int]], name: str) -> tuple[int, int]:
    for b, (start, size) in enumerate(starts_and_sizes):
        if start <= index < start + size:
            return b, index - start
    raise ValueError(f"{name}: index {index} is not an attention layer of this UNet layout")


def from_ldm(name: str, layers_per_block: LayersPerBlock, num_blocks: int = 8) -> str:
    """Canonical (diffusers) name of an ldm / ComfyUI cross-attention name (a host prefix is allowed).

    ``num_blocks`` bounds the search for the down/up block an index falls in (any value >= the UNet's block count).
    """
    name = strip_prefix(name)
    m = _LDM_MID.match(name)
    if m:
        return f"mid_block.attentions.0.{m.group(1)}"
    m = _LDM.match(name)
    if not m:
        raise ValueError(f"not an ldm UNet attention name: {name!r} (expected input_blocks.N.1..., "
                         "middle_block.1... or output_blocks.N.1...)")
    kind, index, rest = m.group(1), int(m.group(2)), m.group(3)
    if not isinstance(layers_per_block, int):
        num_blocks = min(num_blocks, len(layers_per_block))
    if kind == "input_blocks":
        spans = [(_input_start(layers_per_block, b), _per_block(layers_per_block, b)) for b in range(num_blocks)]
        b, j = _locate(index, spans, name)
        return f"down_blocks.{b}.attentions.{j}.{rest}"
    spans = [(_output_start(layers_per_block, b), _up_counts(layers_per_block, b)) for b in range(num_blocks)]
    b, j = _locate(index, spans, name)
    return f"up_blocks.{b}.attentions.{j}.{rest}"


def is_ldm_name(name: str) -> bool:
    name = strip_prefix(name)
    return bool(_LDM.match(name) or _LDM_MID.match(name))


def canonical_name(name: str, layers_per_block: LayersPerBlock) -> str:
    """The canonical name of ``name`` written in any supported spelling (diffusers or ldm, with or without prefix)."""
    name = strip_prefix(name.strip())
    return from_ldm(name, layers_per_block) if is_ldm_name(name) else name


def infer_layers_per_block(names: Sequence[str]) -> int:
    """``layers_per_block`` of a UNet from its canonical cross-attention names (attentions per up block minus one,
    which also holds for UNets whose first down block has no attention, like SDXL)."""
    up, down = [], []
    for n in names:
        m = _DIFFUSERS.match(strip_prefix(n))
        if m:
            (down if m.group(1) == "down_blocks" else up).append(int(m.group(3)))
    if up:
        return max(up)
    if down:
        return max(down) + 1
    raise ValueError("cannot infer layers_per_block: no down/up block attention names given")


def order_key(name: str) -> tuple:
    """Sort key placing canonical names in the UNet's data-flow order: down blocks, mid block, up blocks."""
    name = strip_prefix(name)
    m = _DIFFUSERS.match(name)
    nums = [int(x) for x in re.findall(r"\d+", name)]
    if m:
        return (0 if m.group(1) == "down_blocks" else 2, *nums)
    if _DIFFUSERS_MID.match(name):
        return (1, *nums)
    return (3, name)


def short_name(name: str) -> str:
    """A compact label: ``up_blocks.1.attentions.0`` for ``...transformer_blocks.0.attn2``, else with ``.tbK``."""
    name = strip_prefix(name)
    m = re.match(r"^(.*)\.transformer_blocks\.(\d+)\.attn2$", name)
    if not m:
        return name
    return m.group(1) if m.group(2) == "0" else f"{m.group(1)}.tb{m.group(2)}"
