import os

import torch

# Kernel tests run the Triton code on the CPU through the interpreter when there is no GPU.
# It must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def poison_empty(monkeypatch):
    """Call it to make torch.empty hand out NaN (floats) or -7 (integers) buffers, so a kernel
    that skips one of its outputs fails; call its .undo (monkeypatch's) to stop."""
    real_empty = torch.empty

    def poisoned(*shape, dtype=None, device=None, **kw):
        t = real_empty(*shape, dtype=dtype, device=device, **kw)
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-7)

    def start():
        monkeypatch.setattr(torch, "empty", poisoned)
        return monkeypatch

    return start


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


def random_sae(activation="relu", d_in=7, d_sae=11, seed=0, **kw):
    from stitchkit import SAE

    g = torch.Generator().manual_seed(seed)
    if activation in ("topk", "batchtopk"):
        kw.setdefault("k", 3)
    sae = SAE(d_in, d_sae, activation, generator=g, name=kw.pop("name", f"{activation}-{seed}"), **kw)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g))
        if activation == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.5)
        if activation == "batchtopk":
            sae.threshold.fill_(0.3)
    return sae
