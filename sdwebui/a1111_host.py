"""The Automatic1111 adapter of :class:`protect_core.host.HostModel`: ``shared.sd_model``, borrowed.

Facts of A1111 it respects (SD 1.x / 2.x ``LatentDiffusion`` and the SDXL ``DiffusionEngine`` alike):

* the UNet is ``sd_model.model.diffusion_model`` (ldm layout); it runs through non-inference views with the
  engine's weight overrides, under the host's own autocast (``modules.devices.autocast``), so fp16 checkpoints and
  ``--no-half`` both work;
* ``encode_first_stage`` / ``decode_first_stage`` are wrapped in ``no_grad``: the first-stage model's encoder,
  decoder and quant convs are called directly; latents are scaled with ``sd_model.scale_factor``;
* text goes through ``sd_model.get_learned_conditioning`` (textual inversion, emphasis and long prompts work as in
  txt2img); for SDXL it returns ``{"crossattn", "vector"}`` and the vector (pooled text + size embeddings, built for
  ``sdxl_size`` x ``sdxl_size``) is the UNet's ``y``;
* the training schedule is ``sd_model.alphas_cumprod_original`` when A1111 keeps one (it may rewrite
  ``alphas_cumprod`` for a zero-terminal-SNR or downcast option), else ``alphas_cumprod``; ``parameterization`` says
  eps or v;
* ``--lowvram`` / ``--medvram`` keep only one part of the model on the GPU at a time, which a backward pass through
  VAE and UNet together cannot work with: such a model is refused with a clear message.

Nothing here imports A1111: :meth:`A1111Host.from_shared` does, so the adapter is testable on stand-in objects.
"""
from __future__ import annotations

from protect_core.backends.ldm_host import LdmHost
from protect_core.errors import ModelError


class SizedPrompts(list):
    """A list of prompts carrying the size an SDXL conditioner reads (as A1111's ``SdConditioning`` does)."""

    def __init__(self, prompts, width: int, height: int):
        super().__init__(prompts)
        self.width, self.height, self.is_negative_prompt = int(width), int(height), False


def model_family(sd_model) -> str:
    for attr, name in (("is_sdxl", "sdxl"), ("is_sd2", "sd2"), ("is_sd1", "sd15")):
        if getattr(sd_model, attr, False):
            return name
    return "sd"


class A1111Host(LdmHost):
    def __init__(self, sd_model, autocast=None, sdxl_size: int = 1024):
        if sd_model is None:
            raise ModelError("no Stable Diffusion checkpoint is loaded; choose one at the top of the page first")
        if getattr(sd_model, "lowvram", False):
            raise ModelError("this model runs with --lowvram/--medvram (one part on the GPU at a time); a cloak "
                             "needs VAE and UNet together: restart without those flags, or use the stylecloak CLI")
        unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
        if unet is None:
            raise ModelError(f"the loaded model ({type(sd_model).__name__}) is not an SD 1.x / 2.x / XL checkpoint "
                             "(no model.diffusion_model)")
        if not hasattr(sd_model, "get_learned_conditioning"):
            raise ModelError("the loaded model has no text conditioner (get_learned_conditioning)")
        ac = getattr(sd_model, "alphas_cumprod_original", None)
        if ac is None:
            ac = getattr(sd_model, "alphas_cumprod", None)
        if ac is None:
            raise ModelError("the loaded model has no alphas_cumprod (not a discrete-time diffusion model)")
        text = getattr(sd_model, "conditioner", None)  # SDXL; SD 1.x / 2.x keep theirs in cond_stage_model
        if text is None:
            text = getattr(sd_model, "cond_stage_model", None)
        super().__init__(unet, getattr(sd_model, "first_stage_model", None), text, alphas_cumprod=ac,
                         prediction_type=getattr(sd_model, "parameterization", "eps"),
                         latent_scale=float(getattr(sd_model, "scale_factor", 0.18215)),
                         family=model_family(sd_model), autocast=autocast)
        self.sd_model, self.sdxl_size = sd_model, int(sdxl_size)

    @classmethod
    def from_shared(cls, sdxl_size: int = 1024) -> "A1111Host":
        """The model A1111 has loaded now, run under A1111's autocast."""
        from modules import devices, shared  # type: ignore

        opts = getattr(shared, "cmd_opts", None)
        if opts is not None and (getattr(opts, "lowvram", False) or getattr(opts, "medvram", False)):
            raise ModelError("A1111 runs with --lowvram/--medvram; a cloak needs the VAE and UNet on the GPU "
                             "together: restart without those flags, or use the stylecloak CLI")
        return cls(shared.sd_model, autocast=devices.autocast, sdxl_size=sdxl_size)

    def _encode_text(self, prompts):
        batch = SizedPrompts(prompts, self.sdxl_size, self.sdxl_size)
        with self._autocast():
            out = self.sd_model.get_learned_conditioning(batch)
        return self.conditioning_from(out)

    def describe(self) -> dict:
        return {**super().describe(), "host": "automatic1111"}
