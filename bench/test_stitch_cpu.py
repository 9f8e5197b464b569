"""CPU benchmarks of the one-pass stitching measurements (pytest-benchmark), so regressions show.

    python -m pytest bench/test_stitch_cpu.py --benchmark-enable [--benchmark-json out.json]

Small SAE 768 and large SAE 1,536 features at d_in 384 (the embedded model's width), 8,192 tokens,
the large SAE's rows half noisy copies of small rows so that swap groups exist.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from marginal_dmse import sparse_sae  # noqa: E402

from stitchkit import interpolate, marginal_delta_mse, swap_delta, swap_groups  # noqa: E402

D, SMALL, LARGE, TOKENS = 384, 768, 1536, 8192


@pytest.fixture(scope="module")
def study():
    small = sparse_sae(D, SMALL, 1, "small", "cpu")
    large = sparse_sae(D, LARGE, 2, "large", "cpu")
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        parents = torch.randint(SMALL, (LARGE // 2,), generator=g)
        rows = small.W_dec[parents] + 0.5 * torch.randn(LARGE // 2, D, generator=g) / D**0.5
        rows /= rows.norm(dim=1, keepdim=True)
        large.W_dec[: LARGE // 2] = rows
        large.W_enc[:, : LARGE // 2] = rows.T
    x = torch.randn(TOKENS, D, generator=torch.Generator().manual_seed(3))
    return small, large, list(x.split(4096))


def test_marginal_delta_mse_cpu(benchmark, study):
    small, large, acts = study
    out = benchmark.pedantic(marginal_delta_mse, (small, large, acts), rounds=3, warmup_rounds=1)
    assert out.shape == (LARGE,)


def test_interpolate_cpu(benchmark, study):
    small, large, acts = study
    path = benchmark.pedantic(interpolate, (small, large, acts), rounds=3, warmup_rounds=1)
    assert len(path.groups) > 100


def test_swap_delta_cpu(benchmark, study):
    small, large, acts = study
    groups = [(g.children, g.parents) for g in swap_groups(small, large)]
    dmse, _ = benchmark.pedantic(swap_delta, (small, large, groups, acts), rounds=3, warmup_rounds=1)
    assert len(dmse) == len(groups)
