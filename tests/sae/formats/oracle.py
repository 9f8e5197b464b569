"""Each library's forward as its own code documents it, in float64, written here independently of
stitchkit (the tests' oracle where the library itself is not installed in this environment; the
libraries themselves are checked by scripts/check_peers.py)."""

import torch


def topk(pre, k):
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def layer_norm(x, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    c = x - mu
    std = c.std(-1, keepdim=True)
    return c / (std + eps), mu, std + eps


def rand(*shape, gen, scale=0.3):
    return torch.randn(*shape, generator=gen) * scale


def batch(d_in, n=32, seed=5):
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 + 0.3


def stitchkit_outputs(sae, x):
    from stitchkit.peers import outputs

    o = outputs(sae, x.float())
    return o["f"].double(), o["x_hat"].double()
