"""Writes examples/artwork.png: a small procedural "painting" (brush-stroke field over a warm gradient) that the
README's run command cloaks. Deterministic; rerun to regenerate. Usage: python tools/make_sample_art.py"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

W, H = 200, 152


def main():
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:H, 0:W] / np.array([H, W]).reshape(2, 1, 1)
    base = np.stack([0.95 - 0.4 * y, 0.55 + 0.3 * x * (1 - y), 0.25 + 0.6 * y * x], -1)
    img = Image.fromarray((base.clip(0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(260):
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        ang = np.sin(cx / 23.0) + np.cos(cy / 17.0)
        length = rng.uniform(6, 16)
        dx, dy = np.cos(ang) * length, np.sin(ang) * length
        hue = rng.integers(0, 3)
        col = [(40, 70, 160), (230, 190, 60), (170, 40, 50)][hue]
        col = tuple(int(c + rng.integers(-25, 25)) for c in col)
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=col, width=int(rng.integers(2, 5)))
    img = img.filter(ImageFilter.SMOOTH)
    out = Path(__file__).resolve().parents[1] / "examples" / "artwork.png"
    out.parent.mkdir(exist_ok=True)
    img.save(out, optimize=True)
    print(out, img.size)


if __name__ == "__main__":
    main()
