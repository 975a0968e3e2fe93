"""Scores of the mimicry test: style similarity, attribution, protection success, imperceptibility, sanity check.

Definitions (all per condition, over its generated images G and the artist's clean references R):

* style similarity = mean over g in G of cos(e(g), c_R), where e is the style embedding and c_R the normalised mean
  embedding of R (peers' "CLIP cosine to the mean embedding of the clean art").
* attribution (nearest centroid) = for each g, the reference set whose normalised mean embedding is closest in
  cosine; reference sets are the artist's clean set and >= 1 "other" sets (other styles the user supplied, or
  base-model generations made with seeds the scored samples never use).
* protection success rate = share of G *not* attributed to the artist. With a supplied classifier
  ``probs(images) -> (B, K)`` and the artist's class index, it is also reported from the classifier's argmax, with
  the mean artist probability as a softer style score.
* protection effect = (sim_clean - sim_cond) / (sim_clean - sim_base): 0 = the cloak changed nothing, 1 = the
  fine-tune learned no more style than the base model had (only meaningful when the sanity check passed).
* sanity check: the fine-tune on clean art must raise style similarity over the base model by at least ``margin``
  AND by more than two standard errors of that difference; otherwise the test is inconclusive.
* ceiling: the same scores for the clean art passed through the model's VAE (encode, decode). When the sanity check
  fails and even the ceiling does not beat the base model by ``margin``, the report diagnoses a VAE that cannot
  represent the art (no UNet fine-tune can copy it); otherwise a fine-tune that is too weak. When fewer than half of
  the round-tripped clean images are attributed to the artist (nearest centroid), the test is inconclusive even if
  the gain passes: the model cannot represent the art, so "protection" could not be told from incapacity.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import metrics

INCONCLUSIVE = "inconclusive: the fine-tune did not learn the style"


def centroid(embeddings: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeddings.mean(0), dim=0)


def similarity_to(embeddings: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Cosine of each (normalised) embedding to a normalised centre, (B,)."""
    return F.normalize(embeddings, dim=1) @ centre


def summary(values: torch.Tensor) -> dict:
    v = values.double()
    n = v.numel()
    std = float(v.std(unbiased=True)) if n > 1 else 0.0
    return {"mean": round(float(v.mean()), 6), "std": round(std, 6), "n": n,
            "stderr": round(std / math.sqrt(n), 6) if n else 0.0}


class NearestCentroid:
    """Attribute embeddings to the closest reference-set centroid (cosine)."""

    def __init__(self, reference_embeddings: dict[str, torch.Tensor], artist: str):
        if artist not in reference_embeddings or len(reference_embeddings) < 2:
            raise ValueError("nearest-centroid attribution needs the artist's set and at least one other set")
        self.names = list(reference_embeddings)
        self.artist = artist
        self.centres = torch.stack([centroid(reference_embeddings[n]) for n in self.names])

    def predict(self, embeddings: torch.Tensor) -> list[str]:
        sims = F.normalize(embeddings, dim=1) @ self.centres.T
        return [self.names[i] for i in sims.argmax(1).tolist()]

    def training_accuracy(self, reference_embeddings: dict[str, torch.Tensor]) -> float:
        """Share of the reference images themselves attributed to their own set (how separable the sets are)."""
        right = total = 0
        for name, emb in reference_embeddings.items():
            pred = self.predict(emb)
            right += sum(p == name for p in pred)
            total += len(pred)
        return right / max(total, 1)


def attribution_scores(classifier: NearestCentroid, embeddings: torch.Tensor) -> dict:
    pred = classifier.predict(embeddings)
    counts = {n: pred.count(n) for n in classifier.names}
    artist_share = counts[classifier.artist] / len(pred)
    return {"attributed_to": counts, "artist_share": round(artist_share, 6),
            "protection_success_rate": round(1.0 - artist_share, 6)}


def classifier_scores(probs_fn, images01: torch.Tensor, artist_index: int) -> dict:
    """Scores from a supplied style classifier ``probs(images01) -> (B, K)`` probabilities."""
    with torch.no_grad():
        p = torch.as_tensor(probs_fn(images01)).float().cpu()
    if p.ndim != 2 or p.shape[0] != images01.shape[0] or not 0 <= artist_index < p.shape[1]:
        raise ValueError(f"classifier returned shape {tuple(p.shape)}; expected ({images01.shape[0]}, K) with the "
                         f"artist's class index {artist_index} < K")
    hit = p.argmax(1) == artist_index
    return {"artist_share": round(float(hit.float().mean()), 6),
            "protection_success_rate": round(1.0 - float(hit.float().mean()), 6),
            "artist_probability": summary(p[:, artist_index])}


def imperceptibility(clean01: torch.Tensor, other01: torch.Tensor) -> dict:
    """PSNR, SSIM and perceptual distance (LPIPS when local, else the offline DSSIM pyramid) per image pair."""
    with torch.no_grad():
        p, s = metrics.psnr(clean01, other01), metrics.ssim(clean01, other01)
        kind = "lpips" if metrics.lpips_available(clean01.device) else "dssim_pyramid"
        d = metrics.perceptual_distance(clean01, other01, kind="auto")
        linf = (other01 - clean01).abs().flatten(1).amax(1) * 255
    return {"pairs": int(clean01.shape[0]), "psnr": summary(p), "ssim": summary(s),
            kind: summary(d), "linf_255": summary(linf)}


def sanity_check(base_sims: torch.Tensor, clean_sims: torch.Tensor, margin: float,
                 ceiling_sims: torch.Tensor | None = None, ceiling_artist_share: float | None = None) -> dict:
    """Did fine-tuning on clean art raise style similarity over the base model (see module doc)?

    ``ceiling_sims`` / ``ceiling_artist_share``: similarities and nearest-centroid artist share of the clean art after
    the model's VAE round trip. When most round-tripped images are no longer attributed to the artist, the model
    cannot represent the art at all and the test is inconclusive whatever the gain.
    """
    gain = float(clean_sims.double().mean() - base_sims.double().mean())
    var = 0.0
    for v in (base_sims, clean_sims):
        if v.numel() > 1:
            var += float(v.double().var(unbiased=True)) / v.numel()
    se = math.sqrt(var)
    vae_ok = ceiling_artist_share is None or ceiling_artist_share >= 0.5
    passed = gain >= margin and gain > 2 * se and vae_ok
    rule = "gain >= margin and gain > 2 * stderr" + (" and ceiling artist share >= 0.5" if ceiling_artist_share
                                                      is not None else "")
    out = {"passed": passed, "gain": round(gain, 6), "margin": margin, "stderr": round(se, 6), "rule": rule,
           "message": "the fine-tune on clean art learned the style" if passed else INCONCLUSIVE}
    if ceiling_sims is not None:
        ceiling_gain = float(ceiling_sims.double().mean() - base_sims.double().mean())
        out["ceiling_gain"] = round(ceiling_gain, 6)
    if ceiling_artist_share is not None:
        out["ceiling_artist_share"] = round(float(ceiling_artist_share), 6)
    if not passed and (ceiling_sims is not None or ceiling_artist_share is not None):
        vae_bound = not vae_ok or out.get("ceiling_gain", margin) < margin
        out["diagnosis"] = (
            "the model's VAE cannot reproduce this art (its encode-decode round trip of the clean images is not "
            "recognised as the artist's style), so no UNet fine-tune can copy the style" if vae_bound
            else "the fine-tune is too weak: raise steps or lr, add target layers, or use more images")
    return out


def protection_effect(sim_cond: float, sim_clean: float, sim_base: float) -> float | None:
    gain = sim_clean - sim_base
    if gain <= 0:
        return None
    return round((sim_clean - sim_cond) / gain, 6)
