"""A serialisable choice of cross-attention layers: what the Cloak and Mimicry Test blocks take as ``layers``.

JSON layout (``version`` 1)::

    {"format": "stylecloak-layer-selection", "version": 1, "stylecloak_version": "0.1.0",
     "layers": ["up_blocks.1.attentions.0.transformer_blocks.0.attn2", ...],   # selected, best first, canonical
     "ldm_layers": ["output_blocks.3.1.transformer_blocks.0.attn2", ...],     # the same in ldm/ComfyUI spelling
     "model_family": "sd15", "source": "analysis" | "preset:styleprotect",
     "timesteps": [200, 500, 800], "descriptor": "vae-gram", "settings": {...},
     "table": [{"name", "ldm_name", "rank", "score", "sensitivity", "relative_sensitivity", "correlation",
                "strength", "per_timestep"}, ...]}                            # every analysed layer, best first

``layers`` is a plain list of canonical names, so ``CloakSettings.layers = LayerSelection.load(p).names`` works and
the cloak/mimicry CLIs (which read ``layers`` from any JSON object) take the file as is. :meth:`LayerSelection.load`
also accepts a bare JSON list of names, and names in ldm / ComfyUI spelling, which :meth:`LayerSelection.resolve`
maps to the host's canonical names.

Presets (:data:`PRESETS`): ``styleprotect`` -- the four SD 1.5 layers StyleProtect perturbs
(``up_blocks.1.attentions.0``, ``up_blocks.1.attentions.2``, ``up_blocks.2.attentions.2``,
``down_blocks.2.attentions.1``, each ``.transformer_blocks.0.attn2``); ``all``, ``down``, ``mid``, ``up`` -- every
cross-attention layer of the host, or those of one part of the UNet.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import StyleCloakError
from .naming import canonical_name, infer_layers_per_block, order_key, to_ldm

FORMAT = "stylecloak-layer-selection"
VERSION = 1
_TB = ".transformer_blocks.0.attn2"
STYLEPROTECT_SD15 = tuple(f"{b}{_TB}" for b in ("up_blocks.1.attentions.0", "up_blocks.1.attentions.2",
                                               "up_blocks.2.attentions.2", "down_blocks.2.attentions.1"))
PRESETS = {
    "styleprotect": "StyleProtect's four style-sensitive SD 1.5 layers (Table/code of the paper)",
    "all": "every cross-attention layer of the model",
    "down": "the cross-attention layers of the down (encoder) blocks",
    "mid": "the cross-attention layer(s) of the mid block",
    "up": "the cross-attention layers of the up (decoder) blocks",
}


@dataclass
class LayerSelection:
    layers: list[str]                                   # selected canonical names, best first
    table: list[dict] = field(default_factory=list)     # every analysed layer (see module doc)
    model_family: str = "unknown"
    source: str = "manual"
    timesteps: list[int] = field(default_factory=list)
    descriptor: str | None = None
    settings: dict = field(default_factory=dict)
    ldm_layers: list[str] = field(default_factory=list)
    version: int = VERSION

    @property
    def names(self) -> list[str]:
        """The selected canonical layer names (a copy), ready for ``CloakSettings.layers``."""
        return list(self.layers)

    # ---- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_analysis(cls, analysis, top_k: int) -> "LayerSelection":
        if not 1 <= int(top_k) <= len(analysis.layers):
            raise ValueError(f"top-k must lie in 1..{len(analysis.layers)} (the model's cross-attention layers), "
                             f"got {top_k}")
        table = [asdict(r) for r in analysis.layers]
        chosen = analysis.layers[:int(top_k)]
        return cls([r.name for r in chosen], table, analysis.model_family, "analysis", list(analysis.timesteps),
                   analysis.descriptor, {**analysis.settings, "top_k": int(top_k), "notes": list(analysis.notes)},
                   [r.ldm_name for r in chosen])

    @classmethod
    def from_preset(cls, name: str, host) -> "LayerSelection":
        """A preset resolved against ``host``'s layers (clear error when the model lacks a preset's layers)."""
        available = sorted((l.name for l in host.cross_attention_layers()), key=order_key)
        if name == "styleprotect":
            missing = [n for n in STYLEPROTECT_SD15 if n not in available]
            if missing:
                raise StyleCloakError(
                    f"preset 'styleprotect' names SD 1.5 layers this model ({getattr(host, 'family', '?')}) lacks: "
                    f"{missing[0]}...; run `stylecloak layers` to select layers for this model instead")
            names = list(STYLEPROTECT_SD15)
        elif name == "all":
            names = available
        elif name in ("down", "mid", "up"):
            names = [n for n in available if n.startswith(f"{name}_block")]
        else:
            raise ValueError(f"unknown layer preset {name!r}; choose from {', '.join(PRESETS)}")
        if not names:
            raise StyleCloakError(f"preset {name!r} selects no layer of this model")
        return cls(names, model_family=getattr(host, "family", "unknown"), source=f"preset:{name}",
                   ldm_layers=_ldm_names(names, available))

    # ---- use --------------------------------------------------------------------------------------------------
    def resolve(self, host) -> list[str]:
        """The selected names as ``host``'s canonical names (ldm/ComfyUI spellings mapped); errors name unknowns."""
        available = [l.name for l in host.cross_attention_layers()]
        try:
            lpb = infer_layers_per_block(available)
        except ValueError:
            lpb = 1
        out = []
        for n in self.layers:
            try:
                c = canonical_name(n, lpb)
            except ValueError:
                c = n
            if c not in available:
                raise StyleCloakError(f"layer {n!r} of the selection does not exist in this model "
                                      f"({getattr(host, 'family', '?')}); it has: {', '.join(sorted(available))}")
            out.append(c)
        return list(dict.fromkeys(out))

    # ---- files ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": self.version, "stylecloak_version": __version__,
                "layers": list(self.layers), "ldm_layers": list(self.ldm_layers), "model_family": self.model_family,
                "source": self.source, "timesteps": list(self.timesteps), "descriptor": self.descriptor,
                "settings": dict(self.settings), "table": [dict(r) for r in self.table]}

    def save(self, path) -> Path:
        from ..atomic import atomic_write_text

        path = Path(path)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data, where: str = "selection") -> "LayerSelection":
        if isinstance(data, list):
            data = {"layers": data}
        if not isinstance(data, dict):
            raise StyleCloakError(f"{where}: expected a JSON object or a list of layer names")
        version = data.get("version", VERSION)
        if not isinstance(version, int) or version > VERSION:
            raise StyleCloakError(f"{where}: selection format version {version!r} is newer than this StyleCloak "
                                  f"reads ({VERSION}); update StyleCloak")
        raw = data.get("layers")
        names = [x.get("name") if isinstance(x, dict) else x for x in (raw or [])]
        if not names or not all(isinstance(n, str) and n for n in names):
            raise StyleCloakError(f"{where}: expected a non-empty 'layers' list of cross-attention layer names")
        return cls(names, list(data.get("table") or []), str(data.get("model_family", "unknown")),
                   str(data.get("source", "manual")), [int(t) for t in data.get("timesteps") or []],
                   data.get("descriptor"), dict(data.get("settings") or {}), list(data.get("ldm_layers") or []),
                   version)

    @classmethod
    def load(cls, path) -> "LayerSelection":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StyleCloakError(f"cannot read layer selection '{path}': {e}") from None
        return cls.from_dict(data, str(path))


def _ldm_names(names: list[str], available: list[str]) -> list[str]:
    try:
        lpb = infer_layers_per_block(available)
        return [to_ldm(n, lpb) for n in names]
    except ValueError:
        return []
