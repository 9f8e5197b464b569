"""stitchkit.progress.resolve: what a library call's progress argument does."""

import io
import sys

from stitchkit.progress import resolve


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_speaks_only_to_a_terminal(monkeypatch):
    said = []
    assert resolve(said.append) == said.append
    resolve(None)("quiet")  # silent, and no error
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    resolve("auto")("to a pipe")
    assert pipe.getvalue() == ""
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    resolve("auto")("held-out pass: 4,096 tokens")
    line = tty.getvalue()
    assert line.startswith("[") and line.rstrip().endswith("held-out pass: 4,096 tokens")
