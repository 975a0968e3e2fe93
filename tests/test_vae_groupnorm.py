"""Whole-image GroupNorm statistics for tiled VAE passes (protect_core.vae_groupnorm): exact for one norm between
pointwise layers, closer to the untiled VAE than per-tile statistics otherwise, exact gradients (gradcheck), norms
shared by several layers and VAEs without GroupNorm left alone, and no hook left even after an error."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.module import _global_forward_hooks

from protect_core.vae_groupnorm import tile_stats
from protect_core.vae_tiling import run_tiled


class CastGroupNorm(torch.nn.GroupNorm):
    """A GroupNorm subclass with its own forward casting its weights at call time (as ComfyUI's ops do)."""

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class PointwiseVAE(torch.nn.Module):
    """GroupNorms (of ``norms``: ``cast`` a :class:`CastGroupNorm` at full resolution, ``group`` one at half,
    ``flat`` an attention-style one on flattened (N, C, HW) input at the end) between layers that see one latent
    cell at most: encode-like (4 px per cell in, 1x1 convs, 2x2 average pools) or decode-like (1 cell in, nearest
    2x upsampling). A tile sees exactly the whole image's activations, as far as its norms' statistics agree."""

    def __init__(self, decode: bool, norms=("cast", "group", "flat")):
        super().__init__()
        torch.manual_seed(0)
        c_in, c_out = (2, 3) if decode else (3, 2)
        self.decode = decode
        self.a, self.b, self.out = (torch.nn.Conv2d(i, o, 1) for i, o in ((c_in, 8), (8, 8), (8, c_out)))
        made = {"cast": CastGroupNorm(2, 8), "group": torch.nn.GroupNorm(4, 8), "flat": torch.nn.GroupNorm(2, 8)}
        self.n1, self.n2, self.n3 = (made[k] if k in norms else torch.nn.Identity() for k in made)
        for n in (self.n1, self.n2, self.n3):
            if isinstance(n, torch.nn.GroupNorm):
                torch.nn.init.normal_(n.weight, 1.0, 0.3)
                torch.nn.init.normal_(n.bias, 0.0, 0.3)
        self.double().requires_grad_(False)

    def forward(self, x):
        resample = (lambda t: F.interpolate(t, scale_factor=2)) if self.decode else (lambda t: F.avg_pool2d(t, 2))
        h = resample(self.b(F.silu(self.n1(self.a(x) * 1.5 + 0.2))))
        h = resample(F.silu(self.n2(h)))
        n, c, hh, ww = h.shape
        return self.out(F.silu(self.n3(h.flatten(2) * 1.5 + 0.2).view(n, c, hh, ww)))


def _no_groupnorm_hooks(net):
    return all(not m._forward_hooks for m in net.modules() if isinstance(m, torch.nn.GroupNorm))


def _pointwise_case(decode, norms=("cast", "group", "flat")):   # 13 x 10 cells: 4 x 3 tiles of 4 cells
    i, o = (1, 4) if decode else (4, 1)
    x = torch.randn(2, 2 if decode else 3, 13 * i, 10 * i, generator=torch.Generator().manual_seed(1)).double()
    return PointwiseVAE(decode, norms), x, (i, o)


def _grad(fn, x):
    xx = x.clone().requires_grad_(True)
    return torch.autograd.grad(fn(xx).pow(2).sum(), xx)[0]


@pytest.mark.parametrize("decode", [False, True])
@pytest.mark.parametrize("norm", ["cast", "group", "flat"])
def test_one_groupnorm_between_pointwise_layers_tiles_exactly(decode, norm):
    """With a single GroupNorm (a subclass, a plain one at another resolution, an attention-style one on flattened
    input) the tiles' merged statistics are the whole image's: tiled output and gradients are the untiled ones, and
    per-tile statistics are visibly off."""
    net, x, (i, o) = _pointwise_case(decode, (norm,))
    want = net(x)
    torch.testing.assert_close(run_tiled(net, x, 4, i, o), want, rtol=1e-9, atol=1e-12)
    assert float((run_tiled(net, x, 4, i, o, norm_stats="tile") - want).abs().max()) > 1e-2
    torch.testing.assert_close(_grad(lambda t: run_tiled(net, t, 4, i, o), x), _grad(net, x), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("decode", [False, True])
def test_whole_image_statistics_are_closer_and_exactly_differentiable(decode):
    """Three GroupNorms: deeper norms' statistics come from tiles normalised upstream per tile, so tiling is no
    longer exact, but closer to the untiled output than per-tile statistics; the gradient is the exact gradient of
    the tiled function (statistics included: finite differences), with and without checkpointed tiles; the net
    comes back unchanged, no hook left."""
    net, x, (i, o) = _pointwise_case(decode)
    state, global_hooks = {k: v.clone() for k, v in net.state_dict().items()}, len(_global_forward_hooks)
    want = net(x)
    err = {s: float((run_tiled(net, x, 4, i, o, norm_stats=s) - want).abs().max()) for s in ("image", "tile")}
    assert err["image"] < 0.5 * err["tile"]
    small = torch.randn(1, x.shape[1], 2 * i, 3 * i, dtype=torch.float64, requires_grad=True)   # 2 tiles of 2 cells
    for checkpoint_tiles in (True, False):
        assert torch.autograd.gradcheck(lambda t: run_tiled(net, t, 2, i, o, checkpoint_tiles=checkpoint_tiles),
                                        (small,), fast_mode=not decode)
    assert _no_groupnorm_hooks(net) and len(_global_forward_hooks) == global_hooks
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="norm_stats"):
        run_tiled(net, x, 4, i, o, norm_stats="whole")


def test_tile_stats_skips_shared_norms_and_vaes_without_groupnorm():
    norm = torch.nn.GroupNorm(2, 4).double()
    calls = [0]

    def shared(t):       # one GroupNorm used twice: its calls cannot be told apart, so it keeps per-tile statistics
        calls[0] += 1
        return norm(norm(t) * 2)

    tiles = [(torch.randn(1, 4, 4, 4, dtype=torch.float64), torch.ones(4, 4)) for _ in range(3)]
    assert tile_stats(shared, tiles) == {} and calls[0] == 3
    calls[0] = 0

    def plain(t):
        calls[0] += 1
        return t * 2

    assert tile_stats(plain, tiles) == {} and calls[0] == 1      # no GroupNorm: found out after one tile
    stats = tile_stats(norm, tiles)                                  # the merged moments are the whole set's
    var, mean = torch.var_mean(torch.cat([p for p, _ in tiles], -1).reshape(1, 2, -1), dim=-1, correction=0)
    torch.testing.assert_close(stats[norm][0], mean)
    torch.testing.assert_close(stats[norm][1], var)


@pytest.mark.parametrize("fail_at", ["statistics", "tiles", "tiles backward", "statistics backward"])
def test_groupnorm_hooks_are_removed_on_error(fail_at):
    """An error (a cancellation) while the statistics or the tiles run, forward or backward, leaves no hook."""
    net = PointwiseVAE(decode=False)
    state, global_hooks = {k: v.clone() for k, v in net.state_dict().items()}, len(_global_forward_hooks)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    order = ["statistics", "tiles", "tiles backward", "statistics backward"]     # 3 x 3 tiles each
    calls, boom = [0], 9 * order.index(fail_at) + 2

    def fn(t):
        calls[0] += 1
        if calls[0] == boom:
            assert not _no_groupnorm_hooks(net) or len(_global_forward_hooks) > global_hooks   # some hook is on
            raise RuntimeError("cancelled")
        return net(t)

    with pytest.raises(RuntimeError, match="cancelled"):
        run_tiled(fn, x, 4, 4, 1).sum().backward()
    assert _no_groupnorm_hooks(net) and len(_global_forward_hooks) == global_hooks
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
