"""Two independent judges of "whose style is this?" for a measurement world.

* the world's style classifier (a CNN trained on clean renders of every artist, never on model outputs);
* :class:`CentroidJudge`: nearest centroid (cosine) in the Mimicry Test's own style embedding
  (:class:`protect_core.mimicry.style.DescriptorEmbedder`: random-feature Gram texture, VAE latent statistics,
  palette, spectrum, orientation), fitted on clean reference renders of every artist. It shares no weights and no
  training with the classifier.

:class:`JudgePair` looks like the classifier (``probs``, ``styles``) and carries the second judge as ``second``;
the efficacy code reports both (``protect_core.toy.efficacy.judge``).
"""
from __future__ import annotations

import torch


class CentroidJudge:
    """``probs(images01)`` -> one-hot (B, K) of the nearest artist centroid, in ``styles`` order."""

    name = "centroid"

    def __init__(self, host, references: dict[str, torch.Tensor]):
        from ..mimicry.scoring import NearestCentroid
        from ..mimicry.style import DescriptorEmbedder

        self.styles = list(references)
        self.embedder = DescriptorEmbedder(host)
        self.embedder.fit(torch.cat(list(references.values())))
        emb = {k: self.embedder.embed(v) for k, v in references.items()}
        self.nc = NearestCentroid(emb, self.styles[0])
        self.reference_accuracy = self.nc.training_accuracy(emb)

    @torch.no_grad()
    def probs(self, images01: torch.Tensor) -> torch.Tensor:
        pred = self.nc.predict(self.embedder.embed(images01.detach().float().cpu().clamp(0, 1)))
        idx = torch.tensor([self.styles.index(p) for p in pred])
        return torch.nn.functional.one_hot(idx, len(self.styles)).float()

    def predict(self, images01: torch.Tensor) -> list[str]:
        return [self.styles[i] for i in self.probs(images01).argmax(-1).tolist()]


class JudgePair:
    """The classifier (first judge) with the centroid judge attached as ``second``."""

    def __init__(self, classifier, second: CentroidJudge):
        if list(second.styles) != list(classifier.styles):
            raise ValueError("both judges must know the same artists in the same order")
        self.first, self.second = classifier, second
        self.styles, self.size, self.held_out = classifier.styles, classifier.size, classifier.held_out

    def probs(self, images01):
        return self.first.probs(images01)

    def predict(self, images01):
        return self.first.predict(images01)


def world_judges(world, host, refs_per_artist: int = 16, seed: int = 7, path=None) -> JudgePair:
    """Both judges of a registered world; the centroid judge's references are fresh renders (``seed``)."""
    clf = world.load_judge(path)
    st = world.styles()
    size = int(world.config(path)["size"])
    refs = {a: st.render(a, refs_per_artist, size, seed=seed) for a in clf.styles}
    return JudgePair(clf, CentroidJudge(host, refs))
