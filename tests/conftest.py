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


# A tiny random BERT behind TransformerLens, for every test of the model-facing code.
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT with random weights and MiniLM's tokenizer, saved like a HF model."""
    transformers = pytest.importorskip("transformers")
    from stitchkit.data import default_model_dir

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = transformers.AutoTokenizer.from_pretrained(str(default_model_dir()))
    cfg = transformers.BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from stitchkit.data import LensSource

    return LensSource.load(tiny_dir, "blocks.1.hook_resid_pre", context_length=16, batch_size=4)
