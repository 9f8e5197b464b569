"""CPU benchmarks of the similarity engine (pytest-benchmark).

    python -m pytest bench/test_similarity_cpu.py --benchmark-enable [--benchmark-json out.json]

torch (chunked reference) vs FAISS-CPU exact search, at 24,576 x 12,288 x 384 (max cosine) and
parent links at threshold 0.7, on decoder rows with planted parent structure.
"""

import pytest
import torch

from stitchkit import max_cosine, parent_links
from stitchkit.ops.dispatch import faiss_installed

FQ, FK, D = 24_576, 12_288, 384
BACKENDS = ["torch"] + (["faiss"] if faiss_installed() else [])


def structured_decoders(fq, fk, d, seed=0):
    """Half of the large rows are noisy copies (cos ~0.8) of a small row, as in real SAE families."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randn(fk, d, generator=g)
    large = torch.randn(fq, d, generator=g)
    parents = torch.randint(fk, (fq // 2,), generator=g)
    large[: fq // 2] = small[parents] / small[parents].norm(dim=1, keepdim=True) + torch.randn(
        fq // 2, d, generator=g
    ) * (0.75 / d**0.5)
    return large, small


@pytest.fixture(scope="module")
def decoders():
    return structured_decoders(FQ, FK, D)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_cosine_cpu(benchmark, decoders, backend):
    large, small = decoders
    values, _ = benchmark.pedantic(
        max_cosine, (large, small), {"backend": backend}, rounds=3, warmup_rounds=1
    )
    assert (values > 0.7).sum() >= FQ // 2 * 0.99


@pytest.mark.parametrize("backend", BACKENDS)
def test_parent_links_cpu(benchmark, decoders, backend):
    large, small = decoders
    links = benchmark.pedantic(
        parent_links, (large, small, 0.7), {"backend": backend}, rounds=3, warmup_rounds=1
    )
    assert len(links.child) >= FQ // 2 * 0.99
