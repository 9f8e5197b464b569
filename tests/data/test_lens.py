"""The TransformerLens source (stitchkit.data.lens): a tiny random BERT built locally against
Hugging Face, and one short test on the embedded default (all-MiniLM-L6-v2, offline)."""

import pytest
import torch

from stitchkit import InvalidArgumentError
from stitchkit.data import LensSource, default_model_dir
from tests.helpers import TEXTS

transformers = pytest.importorskip("transformers")


pytest.importorskip("transformer_lens")


def hf_hidden(model_dir, texts, layer, context_length):
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=context_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states[layer]
    return hidden[enc["attention_mask"].bool()]


def test_lens_source_reads_the_hooked_residual_exactly(tiny, tiny_dir):
    got = torch.cat(list(tiny.activations(TEXTS[:6])))
    ref = hf_hidden(tiny_dir, TEXTS[:6], 1, 16)
    assert got.shape == ref.shape and got.shape[1] == 32
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert tiny.stop_at_layer == 2
    with pytest.raises(InvalidArgumentError, match="no hook 'blocks.9.hook_resid_pre'"):
        LensSource(tiny.model, "blocks.9.hook_resid_pre")


def test_embedded_default_model_offline():
    src = LensSource.load(default_model_dir(), "blocks.3.hook_resid_pre", context_length=32, batch_size=4)
    assert src.model_name == "all-MiniLM-L6-v2" and src.d_in == 384
    got = torch.cat(list(src.activations(TEXTS[:4])))
    torch.testing.assert_close(got, hf_hidden(default_model_dir(), TEXTS[:4], 3, 32), rtol=1e-4, atol=1e-4)
