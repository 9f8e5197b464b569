"""Text that activation collection runs over: the built-in offline corpus, text files, and Hugging
Face datasets."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidArgumentError


def builtin_corpus(max_chars: int | None = None, chunk_chars: int = 600) -> list[str]:
    """Text that needs no network: the docstrings of the Python standard library's modules,
    classes and functions, in sorted path order (deterministic for a given Python install;
    about 1.7M characters on CPython 3.11).

    Paragraphs are joined into texts of about `chunk_chars` characters (so a context of 128
    tokens is mostly full); max_chars stops once that many characters are gathered.
    """
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] in ("test", "idlelib", "lib2to3", "site-packages", "turtledemo") or "tests" in rel:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in [tree, *ast.walk(tree)]:
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in doc.split("\n\n"):
                para = " ".join(para.split())
                if len(para) < 40:
                    continue
                if texts and len(texts[-1]) + len(para) < chunk_chars:
                    texts[-1] += " " + para
                else:
                    texts.append(para)
                total += len(para)
                if max_chars is not None and total >= max_chars:
                    return texts
    return texts


def read_text_files(paths) -> list[str]:
    """Paragraphs (blank-line separated) of the given text files, in the given order."""
    texts = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InvalidArgumentError(f"text file {path} does not exist")
        for para in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            para = " ".join(para.split())
            if para:
                texts.append(para)
    return texts


def hf_dataset_texts(
    name: str, *, split: str = "train", column: str = "text", max_texts: int | None = None, **load_kwargs
) -> list[str]:
    """Texts of a Hugging Face dataset (needs the `datasets` package, and network access unless the
    dataset is cached or local, e.g. name="text", data_files=...). Empty texts are dropped."""
    try:
        import datasets
    except ImportError as e:
        raise InvalidArgumentError(
            "hf_dataset_texts needs the `datasets` package: pip install datasets"
        ) from e
    try:
        ds = datasets.load_dataset(name, split=split, **load_kwargs)
    except Exception as e:  # network, missing dataset, bad split: one clear error
        raise InvalidArgumentError(f"dataset {name!r} (split {split!r}) could not be loaded: {e}") from e
    if column not in ds.column_names:
        raise InvalidArgumentError(f"dataset {name!r} has no column {column!r} (columns: {ds.column_names})")
    texts = []
    for row in ds:
        t = row[column]
        if isinstance(t, str) and t.strip():
            texts.append(t.strip())
            if max_texts is not None and len(texts) >= max_texts:
                break
    return texts
