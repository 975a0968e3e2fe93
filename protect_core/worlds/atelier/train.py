"""Train the atelier world from scratch, seeded, in resumable phases, on CPU (or a GPU).

    python -m protect_core.worlds.atelier.train --out protect_core/assets/atelier [--work DIR] [--threads 1]
        [--phases vae,decoder,unet,judge] [--device cpu|cuda] [--quick] [--set KEY=VALUE ...]

Phases (each checkpoints into ``--work`` every ``ckpt_every`` steps and resumes from there when run again with
the same arguments; a finished phase is never redone):

1. ``vae``: the codec, on a fixed pool of renders of the twelve trained artists (half hue-rotated) plus artist-less
   collages and fractal colour fields, with flips and quarter turns; L1 + MSE + a small KL term on posterior
   samples, on whole images and (most steps) 32 px random crops (four times the images per step at the same
   cost). Then ``scaling_factor`` = 1 / std of the latents (SD's recipe). Unseen artists are never shown.
1b. ``decoder``: decoder-only fine-tuning with the encoder frozen (SD's ft-MSE VAE recipe). The latent space does
   not change, so it may run at the same time as ``unet`` in another process (``--phases decoder``).
2. ``unet``: UNet and CLIP text encoder jointly, eps-prediction with SD's schedule, captions "a painting in
   {artist} style" (10% dropped to "" for guidance), on posterior draws of the encoded pool; EMA weights saved.
3. ``judge``: the style classifier over all sixteen artists (held-outs and dev included: it is the judge, not the
   model), on fresh augmented clean renders, never on model outputs. Independent of 2: it may run at the same
   time in another process (``--phases judge``).
2b. ``--set unet_init=DIR/unet_done.pt`` continues a finished ``unet`` phase (in a new ``--work`` holding the old
   ``vae_done.pt``, ``latents.pt`` and ``judge_done.pt``) for ``unet_steps`` more steps with a fresh schedule.

``--out`` receives a diffusers pipeline folder (safetensors only), ``classifier.safetensors``, ``config.json`` and
``train_log.json`` once every phase is done. ``--from WORLD_DIR`` starts the work folder from a finished world's
weights (:mod:`.rework`): ``--phases decoder --set decoder_steps=N`` then fine-tunes the shipped copy's decoder alone.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import configs
from .styles import ARTISTS, DEV, HELD_OUT, PROMPT_TEMPLATE, TRAINED, prompt_for, render_generic, render_mixed

FULL = dict(vae_steps=3000, vae_batch=8, vae_crop=32, vae_crop_batch=32, vae_full_share=0.25, vae_lr=2e-3, kl_weight=1e-6, vae_pool_per=224, vae_generic=768,
            decoder_steps=0, decoder_lr=5e-4,
            unet_steps=1800, unet_batch=32, unet_lr=1e-3, unet_pool_per=320, drop=0.1, ema=0.999,
            unet_init="", unet_warmup=200,
            judge_steps=400, judge_batch=4, judge_lr=2e-3, judge_pool_per=160, ckpt_every=100, seed=0)
QUICK = dict(FULL, vae_steps=4, decoder_steps=3, vae_pool_per=2, vae_generic=4, unet_steps=4, unet_batch=4,
             unet_pool_per=2, judge_steps=4, judge_batch=1, judge_pool_per=2, ckpt_every=2)


#: The mimic's fine-tunes in this world (batch 4, "a painting in sks style"), chosen on the DEV artist only
#: (benchmarks/world_fidelity.py --artists gouache, 24 samples, share judged gouache by the classifier): LoRA at
#: 3e-3 made 58% after 100 steps, 62% after 300, 83% after 1000; the full fine-tune at 1e-3 50% after 100, 58%
#: after 300, 29% after 600 (it overfits). So LoRA 1000 steps and full 300.
ATTACKER = {"lora": {"lr": 3e-3, "steps": 1000}, "full": {"lr": 1e-3, "steps": 300}}


def _lr(total: int, warmup: int):
    """The toy trainer's warm-up + cosine schedule, decaying to 5% (one implementation for both worlds)."""
    from ...toy.train import _lr_lambda

    return _lr_lambda(total, warmup, floor=0.05)


def _save(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)  # our own checkpoint, read back with weights_only=True
    os.replace(tmp, path)


def _load(path: Path):
    return torch.load(path, weights_only=True) if path.is_file() else None


def _resume(ck: Path, name: str, models: dict, opt, sched, g: torch.Generator, log):
    """Load a phase's checkpoint (if any) into its models (key -> module), optimiser, schedule and generator;
    return (next step, history, the whole checkpoint or None)."""
    state = _load(ck)
    if not state:
        return 0, [], None
    for key, m in models.items():
        m.load_state_dict(state[key])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    g.set_state(state["rng"])
    log(f"{name}: resuming at step {state['step']}")
    return state["step"], state["hist"], state


def _checkpoint(ck: Path, models: dict, opt, sched, g: torch.Generator, step: int, hist: list, **extra) -> None:
    _save(ck, {**{key: m.state_dict() for key, m in models.items()}, "opt": opt.state_dict(),
               "sched": sched.state_dict(), "rng": g.get_state(), "step": step, "hist": hist, **extra})


def augment_codec(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Flips and quarter turns for all; hue rotation and re-saturation for a random half."""
    from ...toy.train import recolour_half

    k = int(torch.randint(0, 4, (), generator=g))
    x = torch.rot90(x, k, (2, 3))
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(3)
    return recolour_half(x, g)


def codec_batch(pool: torch.Tensor, plan: dict, g: torch.Generator) -> torch.Tensor:
    """A training batch: with probability ``vae_full_share`` ``vae_batch`` whole images, else ``vae_crop_batch``
    random ``vae_crop``-px crops (the same cost per step, four times the images: the codec is convolutional)."""
    if torch.rand((), generator=g) < plan["vae_full_share"] or plan["vae_crop"] >= pool.shape[-1]:
        return pool[torch.randint(0, pool.shape[0], (plan["vae_batch"],), generator=g)]
    c, n = plan["vae_crop"], plan["vae_crop_batch"]
    idx = torch.randint(0, pool.shape[0], (n,), generator=g)
    ys = torch.randint(0, pool.shape[-2] - c + 1, (n,), generator=g).tolist()
    xs = torch.randint(0, pool.shape[-1] - c + 1, (n,), generator=g).tolist()
    return torch.stack([pool[i, :, y:y + c, x:x + c] for i, y, x in zip(idx.tolist(), ys, xs)])


def codec_pool(plan: dict) -> torch.Tensor:
    x, _ = render_mixed(TRAINED, plan["vae_pool_per"], configs.SIZE, seed=plan["seed"] * 31 + 1)
    return torch.cat([x, render_generic(plan["vae_generic"], configs.SIZE, seed=plan["seed"] * 31 + 2)])


def phase_vae(plan: dict, work: Path, device, log) -> None:
    from diffusers import AutoencoderKL

    done = work / "vae_done.pt"
    if done.is_file():
        return
    ck = work / "vae_ckpt.pt"
    torch.manual_seed(plan["seed"])
    vae = AutoencoderKL(**configs.vae_config()).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=plan["vae_lr"], weight_decay=0.0)
    steps = plan["vae_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr(steps, min(100, steps // 10 + 1)))
    g = torch.Generator().manual_seed(plan["seed"] + 1)
    start, hist, _ = _resume(ck, "vae", {"model": vae}, opt, sched, g, log)
    t0 = time.time()
    pool = codec_pool(plan)
    log(f"vae: pool of {pool.shape[0]} renders ({time.time() - t0:.0f} s)")
    for step in range(start, steps):
        x = augment_codec(codec_batch(pool, plan, g), g).to(device) * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        loss = mse + 0.5 * F.l1_loss(rec, x) + plan["kl_weight"] * kl * x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-10))
            hist.append({"step": step, "mse": round(mse.item(), 6), "psnr": round(psnr, 2), "kl": round(kl.item(), 4),
                         "seconds": round(time.time() - t0, 1)})
            log(f"vae {step}/{steps} psnr {psnr:.2f} dB kl {kl.item():.3f} ({time.time() - t0:.0f} s)")
        if (step + 1) % plan["ckpt_every"] == 0 or step == steps - 1:
            _checkpoint(ck, {"model": vae}, opt, sched, g, step + 1, hist)
    _save(done, {"model": vae.state_dict(), "hist": hist, "seconds": time.time() - t0})
    ck.unlink(missing_ok=True)


def phase_decoder(plan: dict, work: Path, device, log) -> None:
    """Decoder-only fine-tuning (SD's ft-MSE recipe): the encoder is frozen, so the latent space the UNet learns
    is unchanged and this phase may run at the same time as ``unet``, in another process."""
    if (work / "decoder_done.pt").is_file() or plan["decoder_steps"] <= 0:
        return
    vae = load_vae(work, device)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    steps = plan["decoder_steps"]
    opt = torch.optim.AdamW(params, lr=plan["decoder_lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr(steps, min(50, steps // 10 + 1)))
    g = torch.Generator().manual_seed(plan["seed"] + 9)
    ck = work / "decoder_ckpt.pt"
    start, hist, _ = _resume(ck, "decoder", {"model": vae}, opt, sched, g, log)
    t0 = time.time()
    pool = codec_pool(plan)
    for step in range(start, steps):
        x = augment_codec(codec_batch(pool, plan, g), g).to(device) * 2 - 1
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        loss = mse + 0.5 * F.l1_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-10))
            hist.append({"step": step, "mse": round(mse.item(), 6), "psnr": round(psnr, 2),
                         "seconds": round(time.time() - t0, 1)})
            log(f"decoder {step}/{steps} psnr {psnr:.2f} dB ({time.time() - t0:.0f} s)")
        if (step + 1) % plan["ckpt_every"] == 0 or step == steps - 1:
            _checkpoint(ck, {"model": vae}, opt, sched, g, step + 1, hist)
    _save(work / "decoder_done.pt", {"model": vae.state_dict(), "hist": hist, "seconds": time.time() - t0})
    ck.unlink(missing_ok=True)


def load_vae(work: Path, device):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**configs.vae_config())
    vae.load_state_dict(_load(work / "vae_done.pt")["model"])
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_pool(vae, plan: dict, work: Path, device):
    f = work / "latents.pt"
    if f.is_file():
        return _load(f)
    x, labels = render_mixed(TRAINED, plan["unet_pool_per"], configs.SIZE, seed=plan["seed"] * 31 + 5)
    means, stds = [], []
    for part in x.split(64):
        post = vae.encode(part.to(device) * 2 - 1).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    m, s = torch.cat(means), torch.cat(stds)
    out = {"mean": m, "std": s, "labels": labels, "scale": float(1.0 / m.std().clamp(min=1e-6))}
    _save(f, out)
    return out


def phase_unet(plan: dict, work: Path, tokenizer, device, log) -> None:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ...diffusion import add_noise, sd_alphas_cumprod

    if (work / "unet_done.pt").is_file():
        return
    pool = encode_pool(load_vae(work, device), plan, work, device)
    means, stds, labels, scale = pool["mean"], pool["std"], pool["labels"], pool["scale"]
    torch.manual_seed(plan["seed"] + 2)
    unet = UNet2DConditionModel(**configs.unet_config()).to(device).train()
    te = CLIPTextModel(CLIPTextConfig(**configs.text_config(len(tokenizer)))).to(device).train()
    if plan["unet_init"]:  # continue a finished UNet phase (its EMA weights) with a fresh schedule
        init = _load(Path(plan["unet_init"]))
        unet.load_state_dict(init["unet"])
        te.load_state_dict(init["te"])
        log(f"unet: starting from {plan['unet_init']} ({init['hist'][-1]['step'] + 1} steps)")
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=plan["unet_lr"], weight_decay=1e-4)
    steps = plan["unet_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr(steps, min(plan["unet_warmup"], steps // 10 + 1)))
    ema = {"unet": {k: v.detach().clone() for k, v in unet.state_dict().items()},
           "te": {k: v.detach().clone() for k, v in te.state_dict().items()}}
    g = torch.Generator().manual_seed(plan["seed"] + 3 + (1000 if plan["unet_init"] else 0))  # new draws
    ck = work / "unet_ckpt.pt"
    start, hist, state = _resume(ck, "unet", {"unet": unet, "te": te}, opt, sched, g, log)
    if state:
        ema = state["ema"]
    prompts = [prompt_for(a) for a in TRAINED] + [""]
    caption_of = torch.full((len(ARTISTS),), len(prompts) - 1, dtype=torch.long)
    for i, a in enumerate(TRAINED):
        caption_of[ARTISTS.index(a)] = i
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    ac = sd_alphas_cumprod().to(device)
    t0 = time.time()
    for step in range(start, steps):
        b = plan["unet_batch"]
        idx = torch.randint(0, means.shape[0], (b,), generator=g)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * scale
        if torch.rand((), generator=g) < 0.5:
            z0 = z0.flip(3)  # horizontal flip in latent space (the VAE is trained flip-equivariant by augmentation)
        which = caption_of[labels[idx]]
        which = torch.where(torch.rand(b, generator=g) < plan["drop"], len(prompts) - 1, which).to(device)
        t = torch.randint(0, 1000, (b,), generator=g).to(device)
        noise = torch.randn(z0.shape, generator=g).to(device)
        z0 = z0.to(device)
        out = unet(add_noise(z0, noise, t, ac), t, te(ids).last_hidden_state[which]).sample
        loss = F.mse_loss(out, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        d = min(plan["ema"], (1 + step) / (10 + step))
        for key, mod in (("unet", unet), ("te", te)):
            for k, v in mod.state_dict().items():
                ema[key][k].lerp_(v.detach(), 1 - d) if v.is_floating_point() else ema[key][k].copy_(v)
        if step % 25 == 0 or step == steps - 1:
            hist.append({"step": step, "loss": round(float(loss.detach()), 5), "seconds": round(time.time() - t0, 1)})
            log(f"unet {step}/{steps} loss {float(loss.detach()):.4f} ({time.time() - t0:.0f} s)")
        if (step + 1) % plan["ckpt_every"] == 0 or step == steps - 1:
            _checkpoint(ck, {"unet": unet, "te": te}, opt, sched, g, step + 1, hist, ema=ema)
    _save(work / "unet_done.pt", {"unet": ema["unet"], "te": ema["te"], "hist": hist, "scale": scale,
                                  "seconds": time.time() - t0})
    ck.unlink(missing_ok=True)


def phase_judge(plan: dict, work: Path, device, log) -> None:
    from .judge import train_judge

    if (work / "judge_done.pt").is_file():
        return
    t0 = time.time()
    net, hist = train_judge(plan["judge_steps"], plan["judge_batch"], plan["judge_lr"], seed=plan["seed"],
                            device=device, pool_per=plan["judge_pool_per"], log=log)
    _save(work / "judge_done.pt", {"model": net.state_dict(), "hist": hist, "seconds": time.time() - t0})


def assemble(plan: dict, work: Path, out: Path, tokenizer, log) -> dict:
    """Write the finished phases into ``out`` as a diffusers folder plus judge, world config and log."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    v, u, j = (_load(work / f"{p}_done.pt") for p in ("vae", "unet", "judge"))
    dec = _load(work / "decoder_done.pt")
    vae = AutoencoderKL(**configs.vae_config(u["scale"]))
    vae.load_state_dict(v["model"])
    if dec is not None:  # the fine-tuned decoder; the encoder (and so the UNet's latent space) is the same
        vae.load_state_dict(dec["model"])
    unet = UNet2DConditionModel(**configs.unet_config())
    unet.load_state_dict(u["unet"])
    te = CLIPTextModel(CLIPTextConfig(**configs.text_config(len(tokenizer))))
    te.load_state_dict(u["te"])
    out.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tokenizer,
                                   scheduler=DDIMScheduler(**configs.scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)
    save_file({k: t.contiguous() for k, t in j["model"].items()}, str(out / configs.CLASSIFIER_FILE))
    world = {"format": 1, "world": "atelier", "size": configs.SIZE, "styles": list(ARTISTS), "held_out": list(HELD_OUT),
             "dev": DEV, "trained": list(TRAINED), "prompt_template": PROMPT_TEMPLATE,
             "classifier": {"size": configs.SIZE, "width": 32}, "seed": plan["seed"],
             "attacker": ATTACKER}
    (out / configs.CONFIG_FILE).write_text(json.dumps(world, indent=2))
    data = {"plan": plan, "scaling_factor": u["scale"], "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "seconds": {p: round(d["seconds"], 1) for p, d in (("vae", v), ("decoder", dec), ("unet", u),
                                                               ("judge", j)) if d is not None},
            "vae": v["hist"], "decoder": dec["hist"] if dec else [], "unet": u["hist"], "judge": j["hist"]}
    (out / configs.LOG_FILE).write_text(json.dumps(data, indent=1))
    log(f"wrote {out}")
    return data


def make_plan(quick: bool, sets) -> dict:
    plan = dict(QUICK if quick else FULL)
    for kv in sets:
        k, _, val = kv.partition("=")
        if k not in plan:
            raise SystemExit(f"unknown plan entry {k!r}; known: {', '.join(plan)}")
        plan[k] = type(plan[k])(val)
    return plan


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m protect_core.worlds.atelier.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(configs.ASSET_DIR))
    ap.add_argument("--work", default=None, help="checkpoint folder (default: OUT.work)")
    ap.add_argument("--phases", default="vae,decoder,unet,judge")
    ap.add_argument("--quick", action="store_true", help="a few steps of everything (smoke test)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=f"plan entries: {', '.join(FULL)}")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--from", dest="start_from", default=None, metavar="WORLD_DIR",
                    help="start the work folder from a finished world's weights (see rework.py)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ...tiny_models import load_tiny_tokenizer

    plan = make_plan(a.quick, a.set)
    out = Path(a.out)
    work = Path(a.work) if a.work else out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    (work / "plan.json").write_text(json.dumps(plan, indent=1))
    tok = load_tiny_tokenizer()

    def log(msg):
        print(msg, flush=True)

    if a.start_from:
        from .rework import seed_work

        seed_work(Path(a.start_from), work, log)

    phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    for p in phases:
        if p == "vae":
            phase_vae(plan, work, a.device, log)
        elif p == "unet":
            phase_unet(plan, work, tok, a.device, log)
        elif p == "decoder":
            phase_decoder(plan, work, a.device, log)
        elif p == "judge":
            phase_judge(plan, work, a.device, log)
        else:
            raise SystemExit(f"unknown phase {p!r}; use vae, decoder, unet, judge")
    if all((work / f"{p}_done.pt").is_file() for p in ("vae", "unet", "judge")) and (
            plan["decoder_steps"] <= 0 or (work / "decoder_done.pt").is_file()):
        assemble(plan, work, out, tok, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
