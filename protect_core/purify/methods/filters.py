"""The classic transforms an attacker tries first: JPEG, Gaussian noise, Gaussian blur, down/up resize, and an
AdverseCleaner-like bilateral + guided filter. None needs the model."""
from __future__ import annotations

import torch

from .. import ops
from ..base import Purifier, register


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@register
class Jpeg(Purifier):
    name = "jpeg"
    summary = "JPEG-compress and decode (Pillow), the most common accidental and deliberate purifier"
    source = "classic transform; REFERENCE: JPEG q75"
    defaults = {"quality": 75, "subsampling": "4:2:0"}
    param_doc = {"quality": "JPEG quality 1..95 (lower removes more)",
                 "subsampling": "chroma subsampling: 4:4:4, 4:2:2 or 4:2:0 (Pillow's default)"}

    def validate(self, params, images):
        q = params["quality"]
        _check(isinstance(q, (int, float)) and 1 <= q <= 100, f"jpeg: quality must be 1..100, got {q!r}")
        _check(params["subsampling"] in ops.JPEG_SUBSAMPLING,
               f"jpeg: subsampling must be one of {', '.join(ops.JPEG_SUBSAMPLING)}, got {params['subsampling']!r}")

    def run(self, host, images, params, generator, progress):
        out = ops.jpeg_roundtrip(images, int(params["quality"]), params["subsampling"])
        progress.step()
        return out, {}


@register
class GaussianNoise(Purifier):
    name = "gaussian_noise"
    summary = "add seeded Gaussian noise (drowns small perturbations, costs image quality)"
    source = "classic transform; Hönig et al. use sigma 0.05-0.1 before upscaling"
    defaults = {"sigma": 0.05}
    param_doc = {"sigma": "noise standard deviation in [0, 1] pixel units"}

    def validate(self, params, images):
        s = params["sigma"]
        _check(isinstance(s, (int, float)) and 0 <= s <= 1, f"gaussian_noise: sigma must be in [0, 1], got {s!r}")

    def run(self, host, images, params, generator, progress):
        out = ops.add_gaussian_noise(images, float(params["sigma"]), generator)
        progress.step()
        return out, {}


@register
class GaussianBlur(Purifier):
    name = "gaussian_blur"
    summary = "separable Gaussian blur with reflected borders"
    source = "classic transform; REFERENCE: blur 3x3"
    defaults = {"kernel": 3, "sigma": None}
    param_doc = {"kernel": "odd kernel size in pixels",
                 "sigma": "standard deviation in pixels; None = 0.3*((kernel-1)/2-1)+0.8 (0.8 for 3x3)"}

    def validate(self, params, images):
        k, s = params["kernel"], params["sigma"]
        _check(isinstance(k, int) and k >= 1 and k % 2 == 1, f"gaussian_blur: kernel must be an odd int >= 1, "
               f"got {k!r}")
        _check(s is None or (isinstance(s, (int, float)) and s > 0),
               f"gaussian_blur: sigma must be > 0 or None, got {s!r}")

    def run(self, host, images, params, generator, progress):
        out = ops.gaussian_blur(images, int(params["kernel"]), params["sigma"]).clamp(0, 1)
        progress.step()
        return out, {"sigma_used": params["sigma"] or ops.default_blur_sigma(int(params["kernel"]))}


@register
class Resize(Purifier):
    name = "resize"
    summary = "downscale by a factor and upscale back to the input size"
    source = "classic transform (users ask whether cloaks survive resizing)"
    defaults = {"factor": 0.5, "interpolation": "bilinear"}
    param_doc = {"factor": "downscale factor in (0, 1] (0.5 = half size)",
                 "interpolation": f"one of {', '.join(ops.INTERPOLATIONS)} (antialiased like Pillow)"}

    def validate(self, params, images):
        f = params["factor"]
        _check(isinstance(f, (int, float)) and 0 < f <= 1, f"resize: factor must be in (0, 1], got {f!r}")
        _check(params["interpolation"] in ops.INTERPOLATIONS, f"resize: interpolation must be one of "
               f"{', '.join(ops.INTERPOLATIONS)}, got {params['interpolation']!r}")

    def run(self, host, images, params, generator, progress):
        out = ops.resize_roundtrip(images, float(params["factor"]), params["interpolation"])
        progress.step()
        return out, {}


@register
class BilateralGuided(Purifier):
    name = "bilateral_guided"
    summary = "AdverseCleaner-like: many bilateral-filter passes, then guided filters steered by the input"
    source = "AdverseCleaner (lllyasviel): 64 bilateral passes then a guided filter; reimplemented in torch"
    defaults = {"passes": 64, "diameter": 5, "sigma_color": 8.0, "sigma_space": 8.0,
                "guided_radius": 4, "guided_eps": 16.0, "guided_passes": 4, "guide": "input"}
    param_doc = {"passes": "number of bilateral-filter passes",
                 "diameter": "bilateral window diameter in pixels (disc)",
                 "sigma_color": "bilateral colour sigma in 0..255 units (L1 colour distance)",
                 "sigma_space": "bilateral spatial sigma in pixels",
                 "guided_radius": "guided-filter box radius in pixels",
                 "guided_eps": "guided-filter regulariser in (0..255)^2 units",
                 "guided_passes": "guided-filter passes",
                 "guide": "input: guide = the input, source = the filtered image (AdverseCleaner); filtered: the "
                          "reverse (keeps more of the bilateral smoothing)"}

    def validate(self, params, images):
        for key in ("passes", "diameter", "guided_radius", "guided_passes"):
            v = params[key]
            _check(isinstance(v, int) and v >= 0, f"bilateral_guided: {key} must be an int >= 0, got {v!r}")
        for key in ("sigma_color", "sigma_space", "guided_eps"):
            v = params[key]
            _check(isinstance(v, (int, float)) and v > 0, f"bilateral_guided: {key} must be > 0, got {v!r}")
        _check(params["guide"] in ("input", "filtered"),
               f"bilateral_guided: guide must be input or filtered, got {params['guide']!r}")

    def count_steps(self, params, images, host):
        return params["passes"] + params["guided_passes"]

    def run(self, host, images, params, generator, progress):
        y = images.float()
        for _ in range(params["passes"]):
            y = ops.bilateral_filter(y, params["diameter"], params["sigma_color"] / 255, params["sigma_space"])
            progress.step()
        smooth, x = y, images.float()
        for _ in range(params["guided_passes"]):
            if params["guide"] == "input":
                y = ops.guided_filter(x, y, params["guided_radius"], params["guided_eps"] / 255 ** 2)
            else:
                x = ops.guided_filter(smooth, x, params["guided_radius"], params["guided_eps"] / 255 ** 2)
                y = x
            progress.step()
        return y.clamp(0, 1), {}
