"""Train the toy world's model and judge from scratch, seeded, on CPU.

    python -m protect_core.toy.train --out DIR [--steps-vae N --steps-unet N --steps-clf N --size 32 --quick]

1. VAE (``AutoencoderKL``, tiny config): L1 + MSE reconstruction and a small KL term, on fresh renders of the
   trained (non-held-out) styles, half of them hue-rotated, plus style-less random colour fields
   (:func:`.styles.render_generic`), so that it is a generic codec that also encodes the held-out style it never
   saw (as SD's VAE encodes any artist); then ``scaling_factor`` = 1 / std of the latents.
2. UNet + CLIP text encoder, jointly: eps-prediction DDPM loss with the SD schedule, 10% of captions dropped to ""
   (for classifier-free guidance), on a fixed pool of encoded renders of the trained styles; EMA weights are saved.
   The text encoder is trained jointly (it is 35k parameters and learns the 9 captions in a few hundred steps,
   faster than the UNet learns to read a frozen random encoder).
3. Style classifier (:mod:`.classifier`) on fresh renders of ALL styles, the held-out one included.

Writes a diffusers pipeline folder (safetensors only) plus ``classifier.safetensors``, ``config.json`` (the toy
world: size, styles, held-out style) and ``train_log.json`` (losses, seconds), then prints the prompt-control table
of :func:`protect_core.toy.evaluate.evaluate_toy`. Budgets are in steps, not seconds. On a busy machine use
``--threads 1``: two OpenMP threads competing with other processes for two cores ran 5-10x slower per step.
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
from .styles import HELD_OUT, PROMPT_TEMPLATE, STYLES, TRAINED, prompt_for, render_generic, render_mixed

FULL = dict(steps_vae=1800, steps_unet=2000, steps_clf=300, vae_per_style=2, vae_generic=6, unet_batch=144,
            pool_per_style=512, lr_vae=2e-3, lr_unet=1e-3, kl_weight=1e-4, ema=0.999)
QUICK = dict(FULL, steps_vae=3, steps_unet=3, steps_clf=3, vae_per_style=1, vae_generic=2, unet_batch=18,
             pool_per_style=4)


def _lr_lambda(total: int, warmup: int, floor: float = 0.1):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    return f


def recolour_half(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Hue-rotate (about the grey axis) and re-saturate a random half of ``x``: the VAE must be a generic codec
    that also encodes palettes it never saw (the held-out style's), as SD's VAE does, while the UNet only ever
    learns the trained styles' own palettes."""
    b = x.shape[0]
    pick = torch.rand(b, generator=g) < 0.5
    th = torch.rand(b, generator=g) * 2 * math.pi
    sat = 0.7 + 0.6 * torch.rand(b, generator=g)
    n = torch.full((3,), 3 ** -0.5)
    cross = torch.tensor([[0.0, -n[2], n[1]], [n[2], 0.0, -n[0]], [-n[1], n[0], 0.0]])
    rot = (torch.cos(th)[:, None, None] * torch.eye(3) + torch.sin(th)[:, None, None] * cross
           + (1 - torch.cos(th))[:, None, None] * torch.outer(n, n))
    y = torch.einsum("bij,bjhw->bihw", rot, x)
    grey = y.mean(1, keepdim=True)
    y = (grey + sat.view(-1, 1, 1, 1) * (y - grey)).clamp(0, 1)
    return torch.where(pick.view(-1, 1, 1, 1), y, x)


def train_vae(steps: int, size: int, per_style: int, lr: float = 1e-3, kl_weight: float = 1e-4,
              seed: int = 0, device="cpu", recolour: bool = True, generic: int = 0, log=print):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**configs.toy_vae_config(size)).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, min(100, steps // 10 + 1)))
    g = torch.Generator().manual_seed(seed + 1)
    history, t0 = [], time.time()
    for step in range(steps):
        x, _ = render_mixed(TRAINED, per_style, size, seed=seed * 7_777 + step)
        if generic:
            x = torch.cat([x, render_generic(generic, size, seed=seed * 7_777 + step)])
        if recolour:
            x = recolour_half(x, g)
        x = x.to(device) * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        loss = mse + F.l1_loss(rec, x) + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, "mse": round(mse.item(), 6), "kl": round(kl.item(), 4),
                            "seconds": round(time.time() - t0, 1)})
            log(f"vae step {step}/{steps} mse {mse.item():.5f} kl {kl.item():.3f} ({time.time() - t0:.0f} s)")
    return vae.eval().requires_grad_(False), history


@torch.no_grad()
def encode_pool(vae, size: int, per_style: int, seed: int = 0, chunk: int = 128, device="cpu"):
    """Posterior (mean, std) of a fixed pool of renders of the trained styles, and their style indices."""
    x, labels = render_mixed(TRAINED, per_style, size, seed=50_000 + seed)
    means, stds = [], []
    for part in x.split(chunk):
        post = vae.encode(part.to(device) * 2 - 1).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means).cpu(), torch.cat(stds).cpu(), labels


def train_unet(pool, scale: float, tokenizer, steps: int, size: int, batch: int, lr: float = 1e-3, drop: float = 0.1,
               ema_decay: float = 0.999, seed: int = 0, device="cpu", log=print):
    """Joint UNet + text-encoder training on scaled latents; returns EMA copies of both and the loss history."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..diffusion import add_noise, sd_alphas_cumprod

    means, stds, labels = pool
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(**configs.toy_unet_config(size)).to(device).train()
    te = CLIPTextModel(CLIPTextConfig(**configs.toy_text_config(len(tokenizer)))).to(device).train()
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, min(200, steps // 10 + 1)))
    ema_u = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    ema_t = {k: v.detach().clone() for k, v in te.state_dict().items()}
    prompts = [prompt_for(s) for s in TRAINED] + [""]
    caption_of = torch.full((len(STYLES),), len(prompts) - 1, dtype=torch.long)  # label (STYLES) -> caption
    for i, s in enumerate(TRAINED):
        caption_of[STYLES.index(s)] = i
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    ac = sd_alphas_cumprod().to(device)
    g = torch.Generator().manual_seed(seed + 3)
    history, t0 = [], time.time()
    for step in range(steps):
        idx = torch.randint(0, means.shape[0], (batch,), generator=g)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * scale
        which = caption_of[labels[idx]]
        which = torch.where(torch.rand(batch, generator=g) < drop, len(prompts) - 1, which).to(device)
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g).to(device)
        z0, t = z0.to(device), t.to(device)
        ctx = te(ids).last_hidden_state[which]
        out = unet(add_noise(z0, noise, t, ac), t, ctx).sample
        loss = F.mse_loss(out, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        d = min(ema_decay, (1 + step) / (10 + step))  # ema_decay 0: plain final weights
        for ema, mod in ((ema_u, unet), (ema_t, te)):
            for k, v in mod.state_dict().items():
                ema[k].lerp_(v.detach(), 1 - d) if v.is_floating_point() else ema[k].copy_(v)
        if step % 100 == 0 or step == steps - 1:
            value = float(loss.detach())
            history.append({"step": step, "loss": round(value, 5), "seconds": round(time.time() - t0, 1)})
            log(f"unet step {step}/{steps} loss {value:.4f} ({time.time() - t0:.0f} s)")
    unet.load_state_dict(ema_u)
    te.load_state_dict(ema_t)
    return unet.eval().requires_grad_(False), te.eval().requires_grad_(False), history


@torch.no_grad()
def measure_scaling(means: torch.Tensor) -> float:
    """SD's recipe: the factor that gives the latents unit standard deviation."""
    return float(1.0 / means.std().clamp(min=1e-6))


def save_toy(out: Path, unet, vae, te, tokenizer, clf_net, world: dict, log_data: dict) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tokenizer,
                                   scheduler=DDIMScheduler(**configs.toy_scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)
    clf_state = {k: v.detach().cpu().contiguous() for k, v in clf_net.state_dict().items()}
    save_file(clf_state, str(out / configs.WEIGHT_FILES["classifier"]))
    (out / configs.CONFIG_FILE).write_text(json.dumps(world, indent=2))
    (out / configs.LOG_FILE).write_text(json.dumps(log_data, indent=2))


def make_plan(quick: bool = False, **overrides) -> dict:
    """The step/batch/learning-rate plan: FULL or QUICK, with ``overrides`` (None values ignored)."""
    plan = dict(QUICK if quick else FULL)
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in plan:
            raise ValueError(f"unknown plan entry {k!r}; known: {', '.join(plan)}")
        plan[k] = type(plan[k])(v)
    return plan


def train_all(out: Path, plan: dict, size: int = configs.DEFAULT_SIZE, seed: int = 0, device="cpu",
              init_vae: Path | None = None, log=print) -> dict:
    """Train VAE, UNet + text encoder and classifier per ``plan``; save everything into ``out``.

    ``init_vae``: a toy folder whose VAE is reused as is (VAE training skipped), to retrain only the rest."""
    from ..tiny_models import load_tiny_tokenizer
    from .classifier import StyleClassifier, classifier_accuracy, train_classifier

    size = configs.check_size(size)
    times, t_all = {}, time.time()
    t = time.time()
    if init_vae is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(Path(init_vae) / "vae"), local_files_only=True, use_safetensors=True)
        vae, vae_hist = vae.to(device).eval().requires_grad_(False), [{"from": str(init_vae)}]
    else:
        vae, vae_hist = train_vae(plan["steps_vae"], size, plan["vae_per_style"], plan["lr_vae"],
                                  plan["kl_weight"], seed=seed, device=device, generic=plan["vae_generic"], log=log)
    times["vae"] = time.time() - t
    t = time.time()
    means, stds, labels = encode_pool(vae, size, plan["pool_per_style"], seed=seed, device=device)
    scale = measure_scaling(means)
    vae.register_to_config(scaling_factor=scale)
    tok = load_tiny_tokenizer()
    unet, te, unet_hist = train_unet((means, stds, labels), scale, tok, plan["steps_unet"], size,
                                     plan["unet_batch"], plan["lr_unet"], ema_decay=plan["ema"], seed=seed,
                                     device=device, log=log)
    times["unet"] = time.time() - t
    t = time.time()
    clf_net, clf_hist = train_classifier(plan["steps_clf"], size, seed=seed, device=device, log=log)
    times["classifier"] = time.time() - t
    clf = StyleClassifier(clf_net, STYLES, size, HELD_OUT)
    acc = classifier_accuracy(clf, n_per_style=64 if plan["steps_clf"] > 50 else 4, size=size)
    times["total_train"] = time.time() - t_all
    world = {"format": 1, "size": size, "styles": list(STYLES), "held_out": HELD_OUT, "trained": list(TRAINED),
             "prompt_template": PROMPT_TEMPLATE, "classifier": {"size": size, "width": 32}, "seed": seed}
    log_data = {"plan": plan, "size": size, "seed": seed, "device": str(device),
                "seconds": {k: round(v, 1) for k, v in times.items()},
                "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                "scaling_factor": scale, "vae": vae_hist, "unet": unet_hist, "classifier": clf_hist,
                "classifier_accuracy": {k: round(v, 4) for k, v in acc.items()}}
    for m in (unet, vae, te):
        m.cpu()
    save_toy(Path(out), unet, vae, te, tok, clf_net, world, log_data)
    log(f"classifier accuracy on fresh renders: {acc['mean']:.3f}; training took {times['total_train']:.0f} s")
    return log_data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m protect_core.toy.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (e.g. protect_core/assets/toy)")
    ap.add_argument("--size", type=int, default=configs.DEFAULT_SIZE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps-vae", type=int)
    ap.add_argument("--steps-unet", type=int)
    ap.add_argument("--steps-clf", type=int)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help=f"override a plan entry ({', '.join(FULL)})")
    ap.add_argument("--quick", action="store_true", help="a few steps of everything (smoke test)")
    ap.add_argument("--eval-per-style", type=int, default=32, help="samples per style for the final table (0: skip)")
    ap.add_argument("--guidance", type=float, default=4.0, help="CFG scale of the final table")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--init-vae", help="reuse the VAE of this toy folder (skip VAE training)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    extra = dict(kv.split("=", 1) for kv in a.set)
    plan = make_plan(a.quick, steps_vae=a.steps_vae, steps_unet=a.steps_unet, steps_clf=a.steps_clf, **extra)
    log_data = train_all(Path(a.out), plan, a.size, a.seed, a.device, a.init_vae, log=print)
    if a.eval_per_style > 0:
        from .evaluate import evaluate_toy, format_table
        from .model import build_toy_host, load_style_classifier

        t = time.time()
        res = evaluate_toy(build_toy_host(a.device, path=a.out), load_style_classifier(a.out), a.eval_per_style,
                           seed=a.seed, guidance=a.guidance)
        print(format_table(res))
        log_data["prompt_control"] = res
        log_data["seconds"]["evaluation"] = round(time.time() - t, 1)
        (Path(a.out) / configs.LOG_FILE).write_text(json.dumps(log_data, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
