"""Splicing an SAE into its model (stitchkit.measure.splice), on a tiny BERT and a tiny causal LM."""

import pytest
import torch

from stitchkit import SAE, ShapeError
from stitchkit.data import LensSource, default_model_dir
from stitchkit.measure import splice_similarity
from tests.helpers import TEXTS

transformers = pytest.importorskip("transformers")


pytest.importorskip("transformer_lens")


def test_splice_with_an_exact_sae_changes_nothing(tiny):
    d = 32
    exact = SAE(d, 2 * d, name="exact", hook_name=tiny.hook_name)
    with torch.no_grad():  # relu(x) - relu(-x) = x
        exact.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 1))
        exact.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 0))
        exact.b_enc.zero_()
        exact.b_dec.zero_()
    r = splice_similarity(tiny, exact, TEXTS[:8])
    assert r["mean_cos"] == pytest.approx(1.0, abs=1e-5) and r["n_texts"] == 8
    assert r["zero_ablation_cos"] < 0.999
    with pytest.raises(ShapeError, match="d_in=16"):
        splice_similarity(tiny, SAE(16, 4, name="narrow"), TEXTS[:2])


def test_causal_lm_splice_reports_ce_recovered(tmp_path):
    """A tiny random GPT-2 built locally (MiniLM's tokenizer): CE loss recovered is 1 for an exact SAE."""
    tok = transformers.AutoTokenizer.from_pretrained(str(default_model_dir()))
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    torch.manual_seed(1)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    src = LensSource.load(tmp_path, "blocks.1.hook_resid_pre", context_length=16, batch_size=4)
    assert src.is_causal_lm
    exact = SAE(32, 64, name="exact")
    with torch.no_grad():
        exact.W_enc.copy_(torch.cat([torch.eye(32), -torch.eye(32)], 1))
        exact.W_dec.copy_(torch.cat([torch.eye(32), -torch.eye(32)], 0))
        exact.b_enc.zero_()
        exact.b_dec.zero_()
    r = splice_similarity(src, exact, TEXTS[:6])
    assert r["ce_spliced"] == pytest.approx(r["ce_clean"], rel=1e-5)
    assert r["ce_recovered"] == pytest.approx(1.0, abs=1e-3)
    dead = SAE(32, 64, name="dead")  # reconstructs zero: the same as ablating the site
    with torch.no_grad():
        dead.W_dec.zero_()
        dead.b_dec.zero_()
    assert splice_similarity(src, dead, TEXTS[:6])["ce_recovered"] == pytest.approx(0.0, abs=1e-4)
