"""Co-activation similarity: for each feature of one SAE, the feature of another whose activations
over the tokens are most alike (cosine of the two activation vectors)."""

from __future__ import annotations

import torch

from ..data.streams import ActsLike, as_activations
from ..ops.codes import coactivation
from ..ops.dispatch import csrc_available, memory_budget, sae_route
from ..ops.max_cosine import MaxCosine
from ..sae.model import SAE, check_same_input, feature_index
from .accumulator import Batch, Sums, check_tokens, run_pass


def query_block(query: SAE, key: SAE) -> int:
    """How many query features one pass may take: their float64 [block, key.d_sae] co-activation
    matrix fits the memory budget."""
    return max(1, memory_budget(query.device) // (8 * max(key.d_sae, 1)))


class CoactivationAccumulator(Sums):
    """E[f_i g_j], E[f_i^2], E[g_j^2] for query features `features` (default all) against every key
    feature, float64. With every query feature, on the "triton" route with the csrc extension
    built, the co-activations come from both SAEs' sparse codes (the fused forward + the atomic
    co-activation kernel), never the dense features."""

    summed = ("co", "q2", "k2")

    def __init__(self, query: SAE, key: SAE, features=None):
        check_same_input(query, key, "activation_similarity")
        self.query, self.key = query, key
        dev = query.device
        self.idx = feature_index(query, features, "activation_similarity")
        self.co = torch.zeros(len(self.idx), key.d_sae, dtype=torch.float64, device=dev)
        self.q2 = torch.zeros(len(self.idx), dtype=torch.float64, device=dev)
        self.k2 = torch.zeros(key.d_sae, dtype=torch.float64, device=dev)
        eval_mode = not (query.training or key.training)
        self.codes = (
            len(self.idx) == query.d_sae
            and sae_route(dev, query.dtype, eval_mode=eval_mode) == "triton"
            and csrc_available()
        )
        self.width = len(self.idx) + key.d_sae
        self.reads = [] if self.codes else [(query, self.idx), (key, None)]

    def update(self, batch: Batch) -> None:
        query, key = self.query, self.key
        if self.codes:
            cq, ck = batch.sparse_forward(query), batch.sparse_forward(key)
            self.co += coactivation(
                cq.indices, cq.values, ck.indices, ck.values, query.d_sae, key.d_sae
            ).double()
            for acc, c in ((self.q2, cq), (self.k2, ck)):
                ok = c.indices >= 0
                acc.index_add_(
                    0, c.indices[ok].long().to(acc.device), c.values[ok].double().pow(2).to(acc.device)
                )
        else:
            f = batch.columns(query, self.idx, query)
            g = batch.features(key).to(query.device, f.dtype)
            self.co += (f.T @ g).double()
            self.q2 += f.double().pow(2).sum(0)
            self.k2 += g.double().pow(2).sum(0)
        self.n += batch.x.shape[0]

    def result(self) -> MaxCosine:
        """MaxCosine over this accumulator's query features (values float32 [m], indices int64 [m],
        on the CPU); a feature that never fires, or a key with no live feature: NaN and -1."""
        check_tokens(self.n, self.query, "activation_similarity")
        cos = self.co / (self.q2.sqrt()[:, None] * self.k2.sqrt()[None, :])
        best, arg = cos.nan_to_num(nan=-float("inf")).max(1)
        ok = torch.isfinite(best)
        values = torch.full((len(self.idx),), float("nan"), dtype=torch.float32)
        indices = torch.full((len(self.idx),), -1, dtype=torch.int64)
        values[ok.cpu()] = best[ok].float().cpu()
        indices[ok.cpu()] = arg[ok].cpu()
        return MaxCosine(values, indices)


@torch.no_grad()
def activation_similarity(query: SAE, key: SAE, acts: ActsLike) -> MaxCosine:
    """For each feature of `query`, the feature of `key` whose activations are most alike:
    cosine of the two activation vectors over tokens, E[f_i g_j] / sqrt(E[f_i^2] E[g_j^2]).

    Returns MaxCosine(values float32 [Fq], indices int64 [Fq]) on the CPU; a query feature that
    never fires (or a key with no live feature) gets NaN and index -1. One pass per block of query
    features whose co-activation matrix fits the memory budget (query_block; one pass in all at
    demo sizes, and then `acts` may be a one-shot iterator).
    """
    check_same_input(query, key, "activation_similarity")
    block = query_block(query, key)
    stream = as_activations(acts, multi_pass=query.d_sae > block, what="acts")
    parts = []
    for start in range(0, query.d_sae, block):
        acc = CoactivationAccumulator(query, key, torch.arange(start, min(start + block, query.d_sae)))
        run_pass([acc], stream, d_in=query.d_in, device=query.device)
        parts.append(acc.result())
    if not parts:
        empty = torch.empty(0)
        return MaxCosine(empty.float(), empty.long())
    return MaxCosine(torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts]))
