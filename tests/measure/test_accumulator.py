"""The accumulator protocol (stitchkit.measure.accumulator): one pass feeds many accumulators, merging
shards equals one pass over their union, and every measurement refuses bad input."""

import pytest
import torch

from stitchkit import (
    InvalidArgumentError,
    ShapeError,
    marginal_delta_mse,
)
from stitchkit.measure import (
    ActiveInactiveAccumulator,
    CoactivationAccumulator,
    GramAccumulator,
    InsertionAccumulator,
    MetricsAccumulator,
    PathAccumulator,
    SwapAccumulator,
    measure,
    run_pass,
)
from tests.helpers import pair, random_sae

F64 = dict(dtype=torch.float64)


def test_measurements_refuse_bad_input():
    base, donor, x = pair()
    other = random_sae(d_in=8, d_sae=5, name="narrow", **F64)
    with pytest.raises(ShapeError, match="'narrow' has d_in=8"):
        marginal_delta_mse(base, other, x)
    hooked = random_sae(d_in=9, d_sae=5, hook_name="blocks.1.hook_resid_pre", name="h", **F64)
    base.hook_name = "blocks.0.hook_resid_pre"
    with pytest.raises(InvalidArgumentError, match="reads hook"):
        marginal_delta_mse(base, hooked, x)
    base.hook_name = None
    with pytest.raises(InvalidArgumentError, match="empty"):
        marginal_delta_mse(base, donor, x, features=[])
    with pytest.raises(InvalidArgumentError, match=r"\[0, 29\)"):
        marginal_delta_mse(base, donor, x, features=[29])
    with pytest.raises(ShapeError, match=r"batch 1 has shape \(4, 8\), expected \[n, 9\]"):
        marginal_delta_mse(base, donor, [x[:4], torch.zeros(4, 8, **F64)])
    with pytest.raises(InvalidArgumentError, match="empty"):
        marginal_delta_mse(base, donor, [])


def accumulators(base, donor):
    groups = [([0, 1], [2]), ([5], [0, 1]), (list(range(6, 20)), list(range(3, 13)))]
    steps = [([3, 4], []), ([], [5]), ([7], [6])]
    return [
        MetricsAccumulator(base),
        InsertionAccumulator(base, donor),
        GramAccumulator(base, donor, [1, 4, 8]),
        ActiveInactiveAccumulator(base, donor, [0, 2, 7]),
        PathAccumulator(base, donor, steps),
        SwapAccumulator(base, donor, groups),
        CoactivationAccumulator(donor, base),
    ]


def flat(result):
    """Every number a result holds, as one float64 vector."""
    if isinstance(result, torch.Tensor):
        return result.double().flatten()
    if isinstance(result, (int, float)):
        return torch.tensor([float(result)], dtype=torch.float64)
    if isinstance(result, (tuple, list)):
        return torch.cat([flat(r) for r in result]) if result else torch.zeros(0, dtype=torch.float64)
    return flat([v for v in vars(result).values() if isinstance(v, (torch.Tensor, int, float))])


def test_one_pass_feeds_every_accumulator_as_its_own_pass_would():
    base, donor, x = pair()
    batches = list(x.split(64))
    calls = []

    def stream():  # a stream that counts the passes made over it
        calls.append(1)
        return iter(batches)

    together = accumulators(base, donor)
    assert run_pass(together, stream, d_in=9, device=base.device) == 700
    assert len(calls) == 1
    for acc_together, acc_alone in zip(together, accumulators(base, donor)):
        alone = measure(acc_alone, batches, base)
        torch.testing.assert_close(flat(acc_together.result()), flat(alone), equal_nan=True, rtol=0, atol=0)


def test_merging_shards_is_one_pass_over_their_union():
    base, donor, x = pair(seed=3)
    whole = accumulators(base, donor)
    run_pass(whole, [x[:250], x[250:]], d_in=9, device=base.device)
    left, right = accumulators(base, donor), accumulators(base, donor)
    run_pass(left, [x[:250]], d_in=9, device=base.device)
    run_pass(right, [x[250:]], d_in=9, device=base.device)
    for w, a, b in zip(whole, left, right):
        a.merge(b)
        torch.testing.assert_close(flat(a.result()), flat(w.result()), equal_nan=True, rtol=1e-12, atol=1e-12)
    with pytest.raises(InvalidArgumentError, match="expected another MetricsAccumulator"):
        left[0].merge(left[1])


def test_an_empty_stream_and_no_accumulators_are_refused():
    base, donor, x = pair()
    for acc in accumulators(base, donor):
        with pytest.raises(InvalidArgumentError, match="was empty"):
            measure(acc, [], base)
    with pytest.raises(InvalidArgumentError, match="no accumulators"):
        run_pass([], [x], d_in=9, device=base.device)


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
def test_batch_columns_take_wide_feature_sets_from_the_whole_features(activation):
    """Batch.columns gives encode_features' values for a narrow index set (a slice of the encoder)
    and for a wide one (gathered from the SAE's whole features, with no encoder slice kept)."""
    from stitchkit.measure.accumulator import SLICE_MAX_FRACTION, Batch
    from stitchkit.ops.dispatch import cpu_screen
    from stitchkit.sae.model import _SLICES

    sae = random_sae(activation, d_in=9, d_sae=40, seed=3)
    x = torch.randn(50, 9, generator=torch.Generator().manual_seed(1))
    narrow = torch.tensor([3, 17, 5])
    wide = torch.randperm(40, generator=torch.Generator().manual_seed(2))[: int(40 * SLICE_MAX_FRACTION) + 1]
    every = torch.arange(40)
    batch = Batch(x)
    screened = activation != "topk" and cpu_screen(x.device, sae.dtype)  # where slices are kept
    with torch.no_grad():  # as in run_pass
        for idx in (narrow, wide, every):
            before = len(_SLICES.entries)
            got = batch.columns(sae, idx, sae)
            made = len(_SLICES.entries) - before
            assert made == (1 if screened and idx is narrow else 0)  # a slice for a narrow set only
            assert got.shape == (50, len(idx))
            torch.testing.assert_close(got, sae.encode_features(x, idx), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(got, sae.encode(x)[:, idx], rtol=1e-6, atol=1e-6)
        assert batch.columns(sae, every, sae) is batch.features(sae)  # every feature: no copy at all


def test_batch_row_bytes_is_what_the_batch_keeps():
    """Batch.row_bytes (what run_pass sizes chunks by, beside the widest temporary) equals the
    bytes the Batch then holds per token for those reads: whole features once per SAE (with its
    reconstruction and residual), wide column sets gathered, narrow ones computed alone."""
    from stitchkit.measure.accumulator import Batch

    a = random_sae("relu", d_in=9, d_sae=40, seed=1)
    b = random_sae("jumprelu", d_in=9, d_sae=24, seed=2)
    x = torch.randn(30, 9, generator=torch.Generator().manual_seed(0))
    wide, narrow, every = torch.arange(0, 40, 2)[:20], torch.tensor([1, 3]), torch.arange(24)
    reads = [(a, None), (a, wide), (b, narrow), (b, every), (a, wide), (b, None)]
    batch = Batch(x)
    with torch.no_grad():
        for sae, idx in reads:
            if idx is None:
                batch.residual(sae)
            else:
                batch.columns(sae, idx, sae)
    kept = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes()
            for k, v in batch._cache.items() if k[0] != "x" and isinstance(v, torch.Tensor)}  # fmt: skip
    assert sum(kept.values()) == Batch.row_bytes(reads) * x.shape[0]
