"""Training SAEs (stitchkit.fit.train): loss, directions found, checkpoint/resume, families."""

import pytest
import torch

from stitchkit import InvalidArgumentError, make_toy, max_cosine, train_sae
from stitchkit.data import ActivationStore
from stitchkit.fit.train import train_family
from tests.helpers import TEXTS, Interrupt

pytest.importorskip("transformer_lens")


def test_train_family_saves_loads_and_resumes(tiny, tmp_path):
    store = ActivationStore.collect(tiny, TEXTS, tmp_path / "acts", max_tokens=200)
    calls = []

    def family():
        return train_family(
            lambda seed, steps: store.stream(50, steps, seed=seed), 32, [16, 64], tmp_path / "saes",
            n_steps=lambda width: 5 if width == 16 else 7,
            l1_coefficient=0.5, progress=lambda w, s, loss: calls.append(w),
        )  # fmt: skip

    fam = family()
    assert [s.d_sae for s in fam] == [16, 64] and calls == [16] * 5 + [64] * 7
    assert (tmp_path / "saes" / "sae-64" / "cfg.json").exists()
    calls.clear()
    again = family()
    assert calls == [] and torch.equal(again[1].W_dec, fam[1].W_dec)
    # Normalisation is folded back: the SAE acts on raw activations.
    x = torch.cat(list(store.batches(shuffle=False)))
    assert fam[1](x).shape == x.shape and torch.isfinite(fam[1](x)).all()
    # Another recipe does not take the saved SAEs for its own: it names the directory and the change.
    with pytest.raises(
        InvalidArgumentError, match=r"sae-16 was trained with another recipe or data: n_steps 5 \(this run: 9"
    ):
        train_family(lambda seed, steps: store.stream(50, steps, seed=seed), 32, [16, 64], tmp_path / "saes",
                     n_steps=9, l1_coefficient=0.5)  # fmt: skip
    # A directory without a record (an SAE put there by hand, or by an older stitchkit) loads as it is.
    (tmp_path / "saes" / "sae-16" / "stitchkit_train.json").unlink()
    with pytest.warns(UserWarning, match="has no stitchkit_train.json"):
        (old,) = train_family(lambda seed, steps: store.stream(50, steps, seed=seed), 32, [16],
                              tmp_path / "saes", n_steps=9, l1_coefficient=0.5)  # fmt: skip
    assert torch.equal(old.W_dec, fam[0].W_dec)


def test_training_lowers_loss_keeps_unit_decoder_and_finds_directions():
    toy = make_toy(d_in=16, n_parents=8, children_per_parent=0, n_rare=0, p_parent=0.1, seed=0)
    losses = []
    sae = train_sae(
        toy.batches(150_000, 512, seed=1),
        16,
        32,
        l1_coefficient=0.05,
        lr=1e-2,
        progress=lambda step, loss: losses.append(loss),
    )
    assert not sae.training
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)
    assert sum(losses[-20:]) / 20 < 0.2 * sum(losses[:5]) / 5
    # Independent parents only: each ground-truth direction should have a near-copy.
    assert (max_cosine(toy.directions, sae).values > 0.95).all()


def test_train_sae_checkpoint_resume_warmup_and_dead_features(tmp_path):
    from stitchkit.fit.train import TrainLog

    toy = make_toy(d_in=8, n_parents=4, children_per_parent=0, n_rare=0, p_parent=0.2, seed=2)
    batches = list(toy.batches(40 * 64, 64, seed=1))
    kw = dict(l1_coefficient=0.05, lr=1e-2, n_steps=40, warmup_steps=5, seed=3)
    log = TrainLog()
    full = train_sae(batches, 8, 12, log=log, dead_tokens=640, **kw)
    assert log.steps == 40 and log.tokens_since_fired.shape == (12,)
    fired_last = (full.encode(batches[-1]) > 0).any(0)
    assert (log.tokens_since_fired[fired_last] == 0).all()
    assert 0.0 <= log.dead_fraction <= 1.0

    ck = tmp_path / "train.pt"

    def stop(step, loss):
        if step == 25:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_sae(batches, 8, 12, checkpoint=ck, checkpoint_every=10, progress=stop, **kw)
    log2 = TrainLog()
    resumed = train_sae(batches, 8, 12, checkpoint=ck, checkpoint_every=10, log=log2, **kw)
    assert log2.resumed_from == 20 and log2.steps == 40
    torch.testing.assert_close(resumed.W_dec, full.W_dec, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(resumed.b_enc, full.b_enc, rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="belongs to another run"):
        train_sae(batches, 8, 12, checkpoint=ck, **dict(kw, lr=5e-3))


def test_watch_sees_the_sae_in_eval_mode_at_its_steps_and_lr_decay_is_checked():
    toy = make_toy(d_in=16, n_parents=4, n_rare=4, seed=2)
    seen = {}

    def look(step):
        def fn(sae):
            seen[step] = (sae.training, sae.W_dec.detach().clone())

        return fn

    watch = {3: look(3), 10: look(10)}
    sae = train_sae(toy.batches(2000, 100), 16, 24, l1_coefficient=0.1, n_steps=20, lr_decay=0.5, watch=watch)
    assert sorted(seen) == [3, 10] and not seen[3][0] and not seen[10][0]  # eval mode for the call
    assert not torch.equal(seen[3][1], seen[10][1]) and not torch.equal(seen[10][1], sae.W_dec.detach())
    for bad in (0.0, 1.5):
        with pytest.raises(InvalidArgumentError, match="lr_decay"):
            train_sae(toy.batches(200, 100), 16, 24, l1_coefficient=0.1, n_steps=2, lr_decay=bad)


def test_training_inside_cpu_autocast_takes_bf16_steps_from_the_current_weights():
    """torch.autocast around train_sae: bf16 products on the torch route (the fused CPU loss does
    not implement autocast), and each step computed from the weights the last step wrote (autocast
    caches its bf16 weight copies until its block exits; train_sae drops them after every step)."""
    from stitchkit.ops.dispatch import sae_route

    toy = make_toy(d_in=16, n_parents=8, children_per_parent=0, n_rare=0, p_parent=0.1, seed=0)
    runs = {}
    for bf16 in (False, True):
        losses = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            assert sae_route(torch.device("cpu"), torch.float32) == ("torch" if bf16 else "cpu")
            train_sae(toy.batches(60_000, 512, seed=1), 16, 32, l1_coefficient=0.05, lr=1e-2,
                      progress=lambda step, loss, out=losses: out.append(loss))  # fmt: skip
        runs[bf16] = sum(losses[-10:]) / 10
        assert runs[bf16] < 0.3 * sum(losses[:5]) / 5, f"bf16={bf16}: the loss did not fall"
    assert runs[True] == pytest.approx(runs[False], rel=0.1)
