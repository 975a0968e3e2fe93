"""The mimicry test's report card: every number and setting as JSON, and a PNG (sample grid + bar chart).

The PNG is drawn with Pillow only: one row of thumbnails per condition (the artist's clean references first), then
a bar chart of style similarity, nearest-centroid protection success rate and, when a classifier was supplied,
classifier protection success rate per condition. Both files are written atomically (temporary file + rename), so
a reader never sees a half-written report.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

THUMB = 64
LABEL_W = 110
BAR_COLOURS = [(70, 110, 200), (220, 120, 50), (80, 160, 90)]


@dataclass
class MimicryReport:
    settings: dict
    model: dict
    embedder: str
    references: dict
    conditions: dict
    sanity: dict
    verdict: str
    seconds: float
    images: dict = field(default_factory=dict, repr=False)       # name -> (N, 3, S, S) in [0, 1]
    clean_preview: torch.Tensor | None = field(default=None, repr=False)
    ceiling: dict = field(default_factory=dict)                  # scores of the clean art's VAE round trip
    ceiling_images: torch.Tensor | None = field(default=None, repr=False)
    memory: dict | None = None                                   # memory mode used, out-of-memory fallbacks
    style_embedding: dict | None = None                          # the judge: {"judge", "source", "dimensions"}

    @property
    def inconclusive(self) -> bool:
        return not self.sanity.get("passed", False)

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "sanity_check": self.sanity, "conditions": self.conditions,
                "ceiling_clean_vae_roundtrip": self.ceiling, "references": self.references,
                "embedder": self.embedder, "style_embedding": self.style_embedding or {"judge": self.embedder},
                "settings": self.settings, "model": self.model, "memory": self.memory, "seconds": self.seconds}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def card(self, max_samples: int = 8) -> "Image.Image":  # noqa: F821
        return draw_card(self, max_samples)

    def save(self, out_dir, samples: bool = False) -> dict:
        """Write ``report.json`` and ``report.png`` (and, with ``samples``, every generated image) into out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": str(out / "report.json"), "png": str(out / "report.png")}
        _atomic_write(out / "report.json", (self.to_json() + "\n").encode())
        _atomic_write(out / "report.png", _png_bytes(self.card()))
        if samples:
            for name, imgs in self.images.items():
                for i, img in enumerate(imgs):
                    _atomic_write(out / "samples" / f"{_safe(name)}_{i:03d}.png", _png_bytes(_to_pil(img)))
            paths["samples"] = str(out / "samples")
        return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "set"


def _atomic_write(path: Path, data: bytes) -> None:
    from ..images import atomic_write_bytes

    atomic_write_bytes(path, data)


def _to_pil(img: torch.Tensor):
    from PIL import Image

    arr = (img.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr, "RGB")


def _png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _rows(report: MimicryReport) -> list[tuple[str, torch.Tensor]]:
    rows = []
    if report.clean_preview is not None:
        rows.append(("artist (clean)", report.clean_preview))
    if report.ceiling_images is not None:
        rows.append(("clean via VAE", report.ceiling_images))
    rows += [(name, imgs) for name, imgs in report.images.items()]
    return rows


def _bars(report: MimicryReport) -> list[tuple[str, list[float | None]]]:
    """(condition, [style similarity, NC protection success, classifier protection success or None])."""
    out = []
    for name, row in report.conditions.items():
        cls = row.get("classifier", {}).get("protection_success_rate")
        out.append((name, [row["style_similarity"]["mean"], row["nearest_centroid"]["protection_success_rate"], cls]))
    if report.ceiling:
        cls = report.ceiling.get("classifier", {}).get("protection_success_rate")
        out.append(("ceiling: clean via VAE", [report.ceiling["style_similarity"]["mean"],
                                               report.ceiling["nearest_centroid"]["protection_success_rate"], cls]))
    return out


def draw_card(report: MimicryReport, max_samples: int = 8):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    rows = _rows(report)
    cols = max(1, min(max_samples, max((len(imgs) for _, imgs in rows), default=1)))
    grid_h = len(rows) * (THUMB + 6)
    bars = _bars(report)
    chart_h = 80 + len(bars) * 3 * 14 + len(bars) * 10 + 30
    width = max(LABEL_W + cols * (THUMB + 4) + 10, 560)
    header_h = 46
    im = Image.new("RGB", (width, header_h + grid_h + chart_h), "white")
    d = ImageDraw.Draw(im)
    d.text((8, 6), "StyleCloak mimicry test", fill="black", font=font)
    d.text((8, 20), _fit(report.verdict, width // 6), fill=(180, 0, 0) if report.inconclusive else (0, 90, 0),
           font=font)
    s = report.settings
    d.text((8, 32), _fit(f"{s['method']} rank {s['rank']} lr {s['lr']:g} steps {s['steps']} | style embedding: "
                         f"{report.embedder} | {s['samples']} samples, seed {s['seed']}", width // 6), fill="gray",
           font=font)
    y = header_h
    for name, imgs in rows:
        d.text((6, y + THUMB // 2 - 6), _fit(name, 17), fill="black", font=font)
        for j, img in enumerate(imgs[:cols]):
            thumb = _to_pil(img).resize((THUMB, THUMB), Image.NEAREST if img.shape[-1] < THUMB else Image.BILINEAR)
            im.paste(thumb, (LABEL_W + j * (THUMB + 4), y))
        y += THUMB + 6
    _draw_chart(d, font, bars, y + 10, width)
    return im


def _fit(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _draw_chart(d, font, bars, top: int, width: int) -> None:
    names = ["style similarity (cosine)", "protection success (nearest centroid)",
             "protection success (classifier)"]
    x0, x1 = LABEL_W + 40, width - 50
    shown = [k for k in range(3) if k < 2 or any(v[2] is not None for _, v in bars)]
    for row, k in enumerate(shown):
        d.rectangle((8, top + row * 14, 18, top + row * 14 + 10), fill=BAR_COLOURS[k])
        d.text((22, top + row * 14), names[k], fill="black", font=font)
    y = top + len(shown) * 14 + 10
    zero = x0 + (x1 - x0) // 2  # bars span [-1, 1]: similarity can be negative, rates are in [0, 1]
    d.line((zero, y - 4, zero, y + len(bars) * 52), fill="gray")
    for name, values in bars:
        d.text((8, y + 12), _fit(name, 17), fill="black", font=font)
        for k, v in enumerate(values):
            if v is None:
                continue
            end = zero + int(max(-1.0, min(1.0, v)) * (x1 - x0) / 2)
            d.rectangle((min(zero, end), y + k * 14, max(zero, end), y + k * 14 + 11), fill=BAR_COLOURS[k])
            d.text((max(zero, end) + 4, y + k * 14), f"{v:.2f}", fill="black", font=font)
        y += 3 * 14 + 10
