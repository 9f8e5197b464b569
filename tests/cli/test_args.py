"""The command line's argument checks (stitchkit.cli.args): every bad argument is refused before
any work starts, in one line on stderr, with exit status 2."""

import pytest

from stitchkit.cli import main


@pytest.fixture
def dirs(tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "sae").mkdir()
    return tmp_path


BAD = [
    (["compare", "{t}/missing", "{t}/also-missing"], "missing does not exist"),
    (["compare", "hf://only-owner", "{t}"], "expected hf://OWNER/REPO"),
    (["compare", "saelens:no-slash", "{t}"], "expected saelens:RELEASE/SAE_ID"),
    (["frankenstein", "{t}/a_{{1..8:x1}}", "--acts", "{t}", "--out", "{t}/o"], "factor >= 2"),
    (["convert", "{t}/missing", "{t}/o"], "missing does not exist"),
    (["verify", "{t}", "--library", "nope"], "invalid choice"),
    (["compare", "{t}/sae", "{t}/sae", "--out", "{t}/sae"], "is a directory, expected a file"),
    (["compare", "{t}/sae", "{t}/sae", "--device", "tpu:9"], "torch device"),
    (["demo", "--toy", "--threshold", "1.2"], "threshold in (0, 1)"),
    (["demo", "--toy", "--threshold", "zero"], "threshold in (0, 1)"),
    (["demo", "--toy", "--n-widths", "0"], "positive integer"),
    (["demo", "--toy", "--eval-tokens", "-5"], "positive integer"),
    (["demo", "--toy", "--lr", "nan"], "positive finite number"),
    (["demo", "--toy", "--path-rows", "2"], "at least 3 rows"),
    (["demo", "--toy", "--out", "{t}/a-file"], "exists and is not a directory"),
    (["demo", "--toy", "--n-widths", "3", "--small", "5"], "--small/--large must index the 3 widths"),
    (["demo", "--toy", "--n-widths", "3", "--small", "2", "--large", "1"], "narrower SAE"),
    (["demo", "--toy", "--n-widths", "1"], "at least 2"),
    (["train", "--acts", "{t}/missing", "--widths", "8", "--out", "{t}/o"], "missing is not a directory"),
    (["train", "--acts", "{t}/sae", "--widths", "8", "0", "--out", "{t}/o"], "positive integer"),
    (["train", "--acts", "{t}/sae", "--widths", "8", "8", "--out", "{t}/o"], "--widths has repeats"),
    (["stitch", "{t}/sae", "{t}/sae", "--features", "1,x", "--out", "{t}/o"], "feature indices"),
    (["interpolate", "{t}/sae", "{t}/sae", "--acts", "{t}/sae", "--rows", "1"], "at least 3 rows"),
    (["frankenstein", "{t}/sae", "--acts", "{t}/sae", "--out", "{t}/o"], "expected at least two SAEs, got 1"),
    (
        ["frankenstein", "{t}/sae", "{t}/sae", "--acts", "{t}/sae", "--retrain", "sgd", "--out", "{t}/o"],
        "invalid choice",
    ),
    (["report", "{t}/missing.json"], "missing.json is not a file"),
    (["report", "{t}/a-file"], "not a readable results JSON"),
    (["no-such-command"], "invalid choice"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_bad_arguments_are_one_line_and_exit_2(argv, message, dirs, capsys):
    rc = main([a.format(t=dirs) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("stitchkit: error: ") and "Traceback" not in err
    assert not (dirs / "o").exists()  # refused before any work started


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
