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


@pytest.mark.parametrize(
    "argv,pair",
    [
        (["demo"], (1, 2)),  # the embedded default: 768 vs 1,536 of five widths
        (["demo", "--n-widths", "2"], (0, 1)),  # the pair follows the widths the user chose
        (["demo", "--toy"], (0, 1)),
        (["demo", "--n-widths", "4", "--large", "3"], (2, 3)),  # one index given: its neighbour
        (["demo", "--n-widths", "4", "--small", "0"], (0, 1)),
    ],
)
def test_demo_pair_follows_the_widths(argv, pair):
    from stitchkit.cli import build_parser
    from stitchkit.cli.commands import demo_settings

    args = demo_settings(build_parser().parse_args(argv))
    assert (args.small, args.large) == pair


def test_every_option_has_help_and_shows_its_default(capsys):
    import argparse

    from stitchkit.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sp in sub.choices.items():
        for action in sp._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        formatter = sp._get_formatter()
        for action in sp._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in formatter._get_help_string(action), (name, action.option_strings)
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Adam steps per SAE (default: 1000)" in out and "L1 coefficient" in out
