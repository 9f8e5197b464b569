"""The on-disk activation store (stitchkit.data.store): collect, resume, stream, and each row's
context (the token it came from)."""

import json

import pytest
import torch

from stitchkit import CorruptFileError, InvalidArgumentError, RunMismatchError, ShapeError
from stitchkit.data import ActivationStore
from stitchkit.data.lens import token_strings
from stitchkit.data.toy import TOY_TOKENIZER, toy_contexts
from tests.helpers import TEXTS, Interrupt

pytest.importorskip("transformer_lens")


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
    every = torch.arange(full.n_tokens)
    assert all(torch.equal(x, y) for x, y in zip(full.contexts(every), resumed.contexts(every)))
    shuffled = torch.cat(list(full.batches(32, seed=3, window=2)))
    assert not torch.equal(shuffled, a)
    assert torch.equal(torch.sort(shuffled.sum(1)).values, torch.sort(a.sum(1)).values)  # each row once
    assert [len(x) for x in full.stream(32, 7, seed=1)] == [32] * 7  # loops over epochs
    with pytest.raises(InvalidArgumentError, match="holds another collection"):
        ActivationStore.collect(tiny, TEXTS, tmp_path / "full", max_tokens=151, shard_tokens=40)
    with pytest.raises(InvalidArgumentError, match="no manifest.json"):
        ActivationStore(tmp_path / "nothing")


def test_store_files_follow_the_umask(tmp_path):
    """Shards and manifests take the user's umask (safetensors alone writes 0600)."""
    import os
    import stat

    from stitchkit.data.store import ActivationStore

    old = os.umask(0o022)
    try:
        store = ActivationStore.from_tensor(torch.randn(30, 4), tmp_path / "s", model="m", hook_name="h",
                                            shard_tokens=10)  # fmt: skip
    finally:
        os.umask(old)
    for f in store.path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def own_tokens(tokenizer_dir, texts, context_length):
    """Each token of `texts` as the tokenizer makes it: (token_ids, text_index, position)."""
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids, text, pos = [], [], []
    for i, t in enumerate(texts):
        got = tok(t, truncation=True, max_length=context_length)["input_ids"]
        ids += got
        text += [i] * len(got)
        pos += range(len(got))
    return torch.tensor(ids), torch.tensor(text), torch.tensor(pos), tok


def test_collect_records_each_rows_token(tiny, tiny_dir, tmp_path):
    store = ActivationStore.collect(tiny, TEXTS, tmp_path / "s", max_tokens=150, shard_tokens=40)
    assert store.has_contexts and store.tokenizer == str(tiny_dir.resolve())
    ids, text, pos, tok = own_tokens(tiny_dir, TEXTS, tiny.context_length)
    assert len(ids) > 150  # the cut falls inside a text
    ctx = store.contexts(torch.arange(150))
    assert ctx.token_ids.dtype == torch.int32 and ctx.text_index.dtype == torch.int64
    assert ctx.position.dtype == torch.int32
    assert torch.equal(ctx.token_ids.long(), ids[:150]) and torch.equal(ctx.text_index, text[:150])
    assert torch.equal(ctx.position.long(), pos[:150])
    rows = torch.tensor([149, 3, 77, 3])  # any order, repeats, several shards
    picked = store.contexts(rows)
    assert torch.equal(picked.token_ids.long(), ids[rows]) and torch.equal(picked.text_index, text[rows])
    names = token_strings(store.tokenizer, ids[:12])
    # the tokenizer's own pieces (WordPiece: shown spaced before a word, "##" joined on)
    assert [n.strip() for n in names] == [tok.decode([i]).removeprefix("##") for i in ids[:12].tolist()]
    assert names[0] == "[CLS]" and " sentence" in names
    with pytest.raises(InvalidArgumentError, match=r"row 150 is outside .*0\.\.149"):
        store.contexts(torch.tensor([0, 150]))
    with pytest.raises(InvalidArgumentError, match="row -1 is outside"):
        store.window(-1)
    with pytest.raises(InvalidArgumentError, match="integer row indices"):
        store.contexts(torch.tensor([1.0]))


def test_windows_stay_in_the_rows_text(tiny, tmp_path, monkeypatch):
    store = ActivationStore.collect(tiny, TEXTS, tmp_path / "s", max_tokens=150, shard_tokens=40)
    every = store.contexts(torch.arange(store.n_tokens))
    rows = torch.tensor([0, 1, 5, 39, 40, 41, 100, 148, 149] + list(range(10, 150, 13)))
    read = []
    real = store._shard_contexts
    monkeypatch.setattr(store, "_shard_contexts", lambda i: read.append(i) or real(i))
    wins = store.windows(rows, before=6, after=3)
    assert sorted(read) == sorted(set(read))  # each shard read once
    for row, w in zip(rows.tolist(), wins):
        assert w.rows[w.mark] == row and torch.equal(w.rows, torch.arange(w.rows[0], w.rows[-1] + 1))
        assert (every.text_index[w.rows] == every.text_index[row]).all()  # one text
        assert torch.equal(w.token_ids, every.token_ids[w.rows])
        assert w.mark <= 6 and len(w.rows) - 1 - w.mark <= 3
        # Cut only at the text's ends (or the store's): the row before / after is another text.
        first, last = int(w.rows[0]), int(w.rows[-1])
        assert w.mark == 6 or first == 0 or every.text_index[first - 1] != every.text_index[row]
        assert (
            len(w.rows) - 1 - w.mark == 3
            or last == store.n_tokens - 1
            or (every.text_index[last + 1] != every.text_index[row])
        )
        assert every.position[first] == every.position[row] - w.mark
        one = store.window(row, before=6, after=3)
        assert torch.equal(one.rows, w.rows) and one.mark == w.mark
    assert store.window(0).mark == 0 and every.position[0] == 0
    assert len(store.window(5, before=0, after=0).rows) == 1


def test_a_store_without_contexts_streams_as_before(tmp_path):
    x = torch.randn(30, 4)
    old = ActivationStore.from_tensor(x, tmp_path / "old", model="m", hook_name="h", shard_tokens=10)
    assert not old.has_contexts and old.tokenizer is None
    assert torch.equal(torch.cat(list(old.batches(7, shuffle=False))), x)
    with pytest.raises(InvalidArgumentError, match="collected before contexts .*--restart"):
        old.contexts(torch.tensor([0]))
    with pytest.raises(InvalidArgumentError, match="collected before contexts"):
        old.window(3)


def test_a_partial_collection_without_contexts_is_not_resumed(tiny, tmp_path):
    def stop(n):
        if n >= 40:
            raise Interrupt

    with pytest.raises(Interrupt):
        ActivationStore.collect(tiny, TEXTS, tmp_path / "s", max_tokens=150, shard_tokens=40, progress=stop)
    mf = tmp_path / "s" / "manifest.json"
    m = json.loads(mf.read_text())
    del m["contexts"], m["tokenizer"]  # as an older stitchkit wrote it
    mf.write_text(json.dumps(m))
    with pytest.raises(RunMismatchError, match="begun before contexts"):
        ActivationStore.collect(tiny, TEXTS, tmp_path / "s", max_tokens=150, shard_tokens=40)


def test_from_tensor_keeps_given_contexts(tmp_path):
    x = torch.randn(50, 3)
    ctx = toy_contexts(50, text_len=8)
    store = ActivationStore.from_tensor(x, tmp_path / "s", model="toy", hook_name="toy", shard_tokens=16,
                                        contexts=ctx, tokenizer=TOY_TOKENIZER)  # fmt: skip
    got = store.contexts(torch.arange(50))
    assert all(torch.equal(a, b) for a, b in zip(got, ctx)) and store.tokenizer == "toy"
    w = store.window(17, before=3, after=10)  # text 2 is rows 16..23
    assert w.rows.tolist() == list(range(16, 24)) and w.mark == 1
    assert token_strings(store.tokenizer, w.token_ids[:2]) == [f"tok{int(i)}" for i in w.token_ids[:2]]
    with pytest.raises(ShapeError, match="position must be integer \\[50\\]"):
        ActivationStore.from_tensor(x, tmp_path / "bad", model="toy", hook_name="toy",
                                    contexts=(ctx.token_ids, ctx.text_index, ctx.position[:-1]))  # fmt: skip


def _rewrite_shard(store, i, **change):
    """Shard i of `store` rewritten with some tensors changed, the manifest's size and digest
    updated so that only the shard's own check can notice."""
    from safetensors.torch import load_file, save_file

    from stitchkit.data.store import _file_sha256

    sh = store.manifest["shards"][i]
    f = store.path / sh["file"]
    tensors = load_file(str(f))
    tensors.update(change)
    save_file(tensors, str(f))
    sh.update(bytes=f.stat().st_size, sha256=_file_sha256(f))
    (store.path / "manifest.json").write_text(json.dumps(store.manifest))
    return ActivationStore(store.path), f


@pytest.mark.parametrize("change", ["truncated", "float", "missing"])
def test_a_damaged_context_tensor_is_refused_naming_the_shard(tmp_path, change):
    from safetensors.torch import load_file

    store = ActivationStore.from_tensor(torch.randn(30, 4), tmp_path / "s", model="toy", hook_name="toy",
                                        shard_tokens=10, contexts=toy_contexts(30, text_len=4))  # fmt: skip
    f = store.path / store.manifest["shards"][1]["file"]
    ids = load_file(str(f))["token_ids"]
    if change == "missing":
        from safetensors.torch import save_file

        save_file({"activations": load_file(str(f))["activations"]}, str(f))
        store.manifest["shards"][1].pop("bytes")
        (store.path / "manifest.json").write_text(json.dumps(store.manifest))
        damaged = ActivationStore(store.path)
    else:
        damaged, f = _rewrite_shard(store, 1, token_ids=ids[:-1] if change == "truncated" else ids.float())
    with pytest.raises(CorruptFileError, match=f"{f.name}.*token_ids"):
        damaged.contexts(torch.tensor([12]))
    with pytest.raises(CorruptFileError, match=f"{f.name}.*token_ids"):
        list(damaged.batches(8, shuffle=False))
    damaged.contexts(torch.tensor([0, 29]))  # the other shards are not read
