"""The TransformerLens source (stitchkit.data.lens): a tiny random BERT built locally against
Hugging Face, and one short test on the embedded default (all-MiniLM-L6-v2, offline)."""

import pytest
import torch

from stitchkit import InvalidArgumentError
from stitchkit.data import LensSource, default_model_dir
from stitchkit.data.lens import token_strings
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
    assert src.model_name == "all-MiniLM-L6-v2" and src.d_in == 384 and src.tokenizer_name == "default"
    tok = transformers.AutoTokenizer.from_pretrained(str(default_model_dir()))
    ids = tok(TEXTS[0])["input_ids"]
    words = token_strings("default", ids)  # WordPiece: word starts spaced, "##" pieces joined on
    spaceless = lambda t: t.replace(" ", "")  # noqa: E731  (BERT's decoder also joins punctuation)
    assert spaceless("".join(words[1:-1])) == spaceless(tok.decode(ids[1:-1]))
    assert [w.strip() for w in words] == [tok.decode([i]).removeprefix("##").strip() for i in ids]
    got = torch.cat(list(src.activations(TEXTS[:4])))
    torch.testing.assert_close(got, hf_hidden(default_model_dir(), TEXTS[:4], 3, 32), rtol=1e-4, atol=1e-4)


def test_contexts_name_each_rows_token(tiny, tiny_dir):
    """Per row: the token id, the text's index in the list given, the position in the text, in
    the rows' order; the same whichever side the tokenizer pads."""
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_dir))
    texts = TEXTS[:7] + ["a much longer sentence than the others, cut at the context length of sixteen"]
    want = [tok(t, truncation=True, max_length=16)["input_ids"] for t in texts]
    got = list(tiny.activations_and_contexts(texts))
    assert len(got) == 2  # batches of 4 texts
    acts = torch.cat([a for a, _ in got])
    assert torch.equal(acts, torch.cat(list(tiny.activations(texts))))
    ids, text, pos = (torch.cat(t) for t in zip(*(c for _, c in got)))
    assert len(ids) == len(acts) == sum(map(len, want))
    assert ids.dtype == torch.int32 and text.dtype == torch.int64 and pos.dtype == torch.int32
    assert ids.tolist() == [i for w in want for i in w]
    assert text.tolist() == [t for t, w in enumerate(want) for _ in w]
    assert pos.tolist() == [p for w in want for p in range(len(w))]
    side = tiny.model.tokenizer.padding_side
    try:
        tiny.model.tokenizer.padding_side = "left" if side == "right" else "right"
        flipped = [c for _, c in tiny.activations_and_contexts(texts)]
    finally:
        tiny.model.tokenizer.padding_side = side
    assert all(torch.equal(a, b) for a, b in zip((ids, text, pos), (torch.cat(t) for t in zip(*flipped))))


def test_token_strings_never_download():
    assert token_strings("toy", [3, 0]) == ["tok3", "tok0"]
    assert token_strings("no-such-owner/no-such-tokenizer-xyz", torch.tensor([5, 7])) == ["[5]", "[7]"]
    assert token_strings(None, [1]) == ["[1]"]
    assert token_strings("default", [10**9])[0] == f"[{10**9}]"
