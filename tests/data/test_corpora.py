"""Text corpora (stitchkit.data.corpora): the built-in offline corpus and local Hugging Face datasets."""

import pytest

from stitchkit import InvalidArgumentError
from stitchkit.data import builtin_corpus

pytest.importorskip("transformer_lens")


def test_builtin_corpus_is_deterministic_and_chunked():
    a, b = builtin_corpus(max_chars=20_000), builtin_corpus(max_chars=20_000)
    assert a == b and len(a) >= 10
    assert all(40 <= len(t) <= 600 + 2000 for t in a)
    assert sum(map(len, a)) >= 20_000 - 2000


def test_hf_dataset_texts_from_a_local_text_dataset(tmp_path):
    pytest.importorskip("datasets")
    from stitchkit.data import hf_dataset_texts

    f = tmp_path / "corpus.txt"
    f.write_text("first line\n\nsecond line\nthird line\n")
    assert hf_dataset_texts("text", data_files=str(f)) == ["first line", "second line", "third line"]
    with pytest.raises(InvalidArgumentError, match="no column 'body'"):
        hf_dataset_texts("text", data_files=str(f), column="body")
