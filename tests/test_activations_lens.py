"""Activations from TransformerLens: a tiny random BERT built locally, and one short test on the
embedded default (all-MiniLM-L6-v2, offline)."""

import json

import pytest
import torch

from stitchkit import SAE, InvalidArgumentError, ShapeError
from stitchkit.activations import ActivationStore, LensSource, builtin_corpus, default_model_dir
from stitchkit.evaluate import splice_similarity
from stitchkit.train import train_family

pytest.importorskip("transformer_lens")
transformers = pytest.importorskip("transformers")

TEXTS = [f"Sentence number {i} says something about {w}." for i, w in enumerate("abcdefghijklmnopqrst")]


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT with random weights and MiniLM's tokenizer, saved like a HF model."""
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
    return LensSource.load(tiny_dir, "blocks.1.hook_resid_pre", context_length=16, batch_size=4)


def hf_hidden(model_dir, texts, layer, context_length):
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=context_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states[layer]
    return hidden[enc["attention_mask"].bool()]


def test_builtin_corpus_is_deterministic_and_chunked():
    a, b = builtin_corpus(max_chars=20_000), builtin_corpus(max_chars=20_000)
    assert a == b and len(a) >= 10
    assert all(40 <= len(t) <= 600 + 2000 for t in a)
    assert sum(map(len, a)) >= 20_000 - 2000


def test_hf_dataset_texts_from_a_local_text_dataset(tmp_path):
    pytest.importorskip("datasets")
    from stitchkit.activations import hf_dataset_texts

    f = tmp_path / "corpus.txt"
    f.write_text("first line\n\nsecond line\nthird line\n")
    assert hf_dataset_texts("text", data_files=str(f)) == ["first line", "second line", "third line"]
    with pytest.raises(InvalidArgumentError, match="no column 'body'"):
        hf_dataset_texts("text", data_files=str(f), column="body")


def test_lens_source_reads_the_hooked_residual_exactly(tiny, tiny_dir):
    got = torch.cat(list(tiny.activations(TEXTS[:6])))
    ref = hf_hidden(tiny_dir, TEXTS[:6], 1, 16)
    assert got.shape == ref.shape and got.shape[1] == 32
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert tiny.stop_at_layer == 2
    with pytest.raises(InvalidArgumentError, match="no hook 'blocks.9.hook_resid_pre'"):
        LensSource(tiny.model, "blocks.9.hook_resid_pre")


def test_activation_store_collects_resumes_and_streams(tiny, tmp_path):
    full = ActivationStore.collect(tiny, TEXTS, tmp_path / "full", max_tokens=150, shard_tokens=40)
    assert full.n_tokens == 150 and len(full.manifest["shards"]) >= 3
    seen = []

    def stop_after_two_shards(n):
        seen.append(n)
        if n >= 80:
            raise Interrupt

    with pytest.raises(Interrupt):
        ActivationStore.collect(tiny, TEXTS, tmp_path / "part", max_tokens=150, shard_tokens=40,
                                progress=stop_after_two_shards)  # fmt: skip
    partial = json.loads((tmp_path / "part" / "manifest.json").read_text())
    assert not partial["complete"] and partial["shards"]
    resumed = ActivationStore.collect(tiny, TEXTS, tmp_path / "part", max_tokens=150, shard_tokens=40)
    a = torch.cat(list(full.batches(64, shuffle=False)))
    b = torch.cat(list(resumed.batches(64, shuffle=False)))
    assert torch.equal(a, b)
    shuffled = torch.cat(list(full.batches(32, seed=3, window=2)))
    assert not torch.equal(shuffled, a)
    assert torch.equal(torch.sort(shuffled.sum(1)).values, torch.sort(a.sum(1)).values)  # each row once
    assert [len(x) for x in full.stream(32, 7, seed=1)] == [32] * 7  # loops over epochs
    with pytest.raises(InvalidArgumentError, match="holds another collection"):
        ActivationStore.collect(tiny, TEXTS, tmp_path / "full", max_tokens=151, shard_tokens=40)
    with pytest.raises(InvalidArgumentError, match="no manifest.json"):
        ActivationStore(tmp_path / "nothing")


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


def test_embedded_default_model_offline():
    src = LensSource.load(default_model_dir(), "blocks.3.hook_resid_pre", context_length=32, batch_size=4)
    assert src.model_name == "all-MiniLM-L6-v2" and src.d_in == 384
    got = torch.cat(list(src.activations(TEXTS[:4])))
    torch.testing.assert_close(got, hf_hidden(default_model_dir(), TEXTS[:4], 3, 32), rtol=1e-4, atol=1e-4)


def test_cli_subcommands_end_to_end(tiny_dir, tmp_path, capsys):
    from stitchkit import load_sae
    from stitchkit.cli import main

    text = tmp_path / "texts.txt"
    text.write_text("\n\n".join(TEXTS * 3))
    store, saes = tmp_path / "store", tmp_path / "saes"
    common = ["--acts", str(store)]
    hook = "blocks.1.hook_resid_pre"
    assert main(["collect", "--model", str(tiny_dir), "--hook", hook, "--texts", str(text),
                 "--tokens", "600", "--context", "16", "--out", str(store)]) == 0  # fmt: skip
    assert main(["train", *common, "--widths", "16", "64", "--out", str(saes), "--steps", "20",
                 "--batch-size", "100", "--l1", "0.5"]) == 0  # fmt: skip
    assert main(["stitch", str(saes / "sae-16"), str(saes / "sae-64"), "--out", str(tmp_path / "st")]) == 0
    st = load_sae(tmp_path / "st")
    assert st.d_sae > 16 and set(st.provenance.sources) == {"sae-16", "sae-64"}
    assert main(["interpolate", str(saes / "sae-16"), str(saes / "sae-64"), *common, "--tokens", "300",
                 "--out", str(tmp_path / "path.json")]) == 0  # fmt: skip
    assert main(["frankenstein", str(saes / "sae-16"), str(saes / "sae-64"), *common, "--retrain", "lstsq",
                 "--out", str(tmp_path / "fr")]) == 0  # fmt: skip
    assert load_sae(tmp_path / "fr" / "frankenstein").d_sae >= 16
    assert main(["report", str(tmp_path / "path.json")]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "Interpolation path" in report and (tmp_path / "interpolation.png").exists()
    out = capsys.readouterr().out
    assert "600 tokens" in out and "features" in out
    assert main(["report", str(tmp_path / "missing.json")]) == 2


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
