"""The `stitchkit` command line: the only place that prints or draws progress bars. Every argument
is checked before work starts (cli.args); a bad one, and any StitchkitError, is one line on stderr
and exit status 2.

The error boundary (`main`): exit 0 done; 2 bad input (a StitchkitError, an argument, a file that
cannot be read or written: any OSError, disk full included), one line naming the culprit; 130
interrupted (Ctrl-C), with "re-run the same command to resume" where the command resumes; 1 only
for a bug in stitchkit, with its traceback."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys

from ..errors import StitchkitError
from ..ops.dispatch import SIMILARITY_BACKENDS
from ..peers import LIBRARIES as PEER_LIBRARIES
from ..stitch.rules import DEFAULT_THRESHOLD
from .args import (
    Parser,
    device_arg,
    existing_dir,
    existing_file,
    feature_list,
    fraction_arg,
    nonnegative_int,
    output_dir,
    output_file,
    positive_float,
    positive_int,
    rows_arg,
    sae_source,
    threshold,
)
from .commands import (
    cmd_collect,
    cmd_compare,
    cmd_convert,
    cmd_demo,
    cmd_frankenstein,
    cmd_interpolate,
    cmd_report,
    cmd_stitch,
    cmd_train,
    cmd_verify,
)

OVERWRITE_HELP = "replace an output stitchkit wrote before (never a file stitchkit did not write)"
RESTART_HELP = (
    "discard this output directory's saved state of another run (stitchkit's own files only) "
    "instead of refusing it"
)
SOURCE_HELP = "SAE directory or file (any layout), hf://REPO[@REV]/PATH or saelens:RELEASE/ID"


GUIDE = """Compare, combine and rebuild sparse autoencoders (SAEs) of different widths trained on
the same activations.

Start here:
  stitchkit demo --toy --out quickstart     the whole study in about 30 s on toy activations
                                            with known ground truth: SAEs, results.json, report.md
  stitchkit demo --out run                  the same on the embedded MiniLM model (CPU: tens of
                                            minutes); --saes "DIR_{768..98304:x2}" studies yours

Or step by step:
  collect      cache a model's activations at a hook       train        a family of SAEs on them
  compare      novel vs reconstruction features of a pair  stitch       insert one SAE's features
  interpolate  the path small -> +novel -> swaps -> large  frankenstein assemble across widths
  convert      any SAE file in the SAELens layout          verify       check a read against its writer
  report       report.md and plots from a results.json

Any SAE argument takes a directory or file in any supported layout, hf://REPO/PATH or
saelens:RELEASE/SAE_ID. `stitchkit COMMAND --help` shows each command's options and defaults.
Errors are one line and exit status 2; Ctrl-C exits 130 and long commands resume on a re-run."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="stitchkit", description=GUIDE, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo",
        help="the whole study on the embedded default model (or --toy): collect, train, stitch, report",
    )
    d.add_argument(
        "--out", type=output_dir, default="stitchkit-out", help="output directory (default: %(default)s)"
    )
    d.add_argument(
        "--toy", action="store_true", help="toy activations with known ground truth (about 30 s on 2 cores)"
    )
    d.add_argument(
        "--saes",
        type=sae_source,
        nargs="+",
        help="study these SAEs (sources, width patterns allowed) instead of training a family",
    )
    d.add_argument("--model", help="TransformerLens model name or local directory (default: embedded MiniLM)")
    d.add_argument("--hook", default="blocks.3.hook_resid_pre", help="hook name (default: %(default)s)")
    d.add_argument("--context", type=positive_int, default=128, help="tokens per text")
    d.add_argument("--text-batch", type=positive_int, default=32, help="texts per forward pass")
    d.add_argument("--tokens", type=positive_int, default=300_000, help="training tokens to collect")
    d.add_argument(
        "--train-steps",
        type=positive_int,
        default=4000,
        help="Adam steps per SAE up to 4*d_in wide; x sqrt(width/4d_in) beyond",
    )
    d.add_argument(
        "--lr-decay",
        type=fraction_arg,
        default=None,
        help="fraction of the steps over which the learning rate decays to 0 (default 0.5; toy 0.2)",
    )
    d.add_argument("--d-in", type=positive_int, default=None, help="toy only: activation width (default 32)")
    d.add_argument(
        "--n-widths", type=positive_int, default=None, help="widths d_in*2^i (real) or d_in*2^i/2 (toy)"
    )
    d.add_argument("--train-tokens", type=positive_int, default=600_000, help="toy only: tokens per SAE")
    d.add_argument("--eval-tokens", type=positive_int, default=20_000)
    d.add_argument("--retrain-tokens", type=positive_int, default=200_000)
    d.add_argument("--batch-size", type=positive_int, default=None)
    d.add_argument("--l1", type=positive_float, default=None)
    d.add_argument("--lr", type=positive_float, default=None)
    d.add_argument("--retrain-lr", type=positive_float, default=1e-3)
    d.add_argument("--threshold", type=threshold, default=DEFAULT_THRESHOLD)
    d.add_argument(
        "--small", type=int, default=None, help="index in the family of the small SAE of the study"
    )
    d.add_argument("--large", type=int, default=None, help="index of the large SAE of the study")
    d.add_argument("--path-rows", type=rows_arg, default=12, help="interpolation rows to print")
    d.add_argument("--curve-points", type=positive_int, default=20, help="points on each insertion curve")
    d.add_argument(
        "--splice-texts", type=positive_int, default=64, help="texts for the downstream splice check"
    )
    d.add_argument(
        "--greedy-novel-only", action="store_true", help="greedy selection among novel features only"
    )
    d.add_argument("--seed", type=nonnegative_int, default=0)
    d.add_argument("--restart", action="store_true", help=RESTART_HELP)
    d.set_defaults(func=cmd_demo)
    c = sub.add_parser("compare", help="max decoder cosine of a large SAE's features against a small SAE")
    c.add_argument("large", type=sae_source, help=SOURCE_HELP)
    c.add_argument("small", type=sae_source, help=SOURCE_HELP)
    c.add_argument("--backend", default="auto", choices=list(SIMILARITY_BACKENDS))
    c.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    c.add_argument("--device", type=device_arg, default="cpu")
    c.add_argument("--out", type=output_file, help="write max_cos/argmax to this .pt file")
    c.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    c.set_defaults(func=cmd_compare)

    k = sub.add_parser("collect", help="cache a model's activations at a hook to an on-disk store")
    k.add_argument("--model", help="TransformerLens model name or local directory (default: embedded MiniLM)")
    k.add_argument("--hook", default="blocks.3.hook_resid_pre")
    k.add_argument(
        "--texts", type=existing_file, nargs="*", help="text files (default: the built-in offline corpus)"
    )
    k.add_argument("--dataset", help="a Hugging Face dataset name instead (needs network or a cache)")
    k.add_argument("--split", default="train")
    k.add_argument("--column", default="text")
    k.add_argument("--tokens", type=positive_int, default=300_000)
    k.add_argument("--context", type=positive_int, default=128)
    k.add_argument("--text-batch", type=positive_int, default=32)
    k.add_argument("--shard-tokens", type=positive_int, default=65_536)
    k.add_argument("--device", type=device_arg, default="cpu")
    k.add_argument("--out", type=output_dir, required=True, help="store directory (resumed if it exists)")
    k.add_argument("--restart", action="store_true", help=RESTART_HELP)
    k.set_defaults(func=cmd_collect)

    t = sub.add_parser("train", help="train a family of relu SAEs on a store (SAELens layout; resumes)")
    t.add_argument("--acts", type=existing_dir, required=True, help="activation store directory")
    t.add_argument("--widths", type=positive_int, nargs="+", required=True)
    t.add_argument("--out", type=output_dir, required=True)
    t.add_argument("--steps", type=positive_int, default=1000)
    t.add_argument("--batch-size", type=positive_int, default=1024)
    t.add_argument("--l1", type=positive_float, default=1.5)
    t.add_argument("--lr", type=positive_float, default=2e-3)
    t.add_argument("--name", default="sae", help="SAE names are NAME-WIDTH")
    t.add_argument("--eval-tokens", type=positive_int, default=20_000)
    t.add_argument("--seed", type=nonnegative_int, default=0)
    t.add_argument(
        "--parallel",
        default="batch",
        choices=["batch", "widths"],
        help="under torchrun: split each batch over the ranks, or give each rank whole widths",
    )
    t.add_argument("--restart", action="store_true", help=RESTART_HELP)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("stitch", help="insert a donor SAE's features into a base SAE")
    s.add_argument("base", type=sae_source, help=SOURCE_HELP)
    s.add_argument("donor", type=sae_source, help=SOURCE_HELP)
    s.add_argument(
        "--features", type=feature_list, help="comma-separated donor indices (default: the novel features)"
    )
    s.add_argument("--threshold", type=threshold, default=DEFAULT_THRESHOLD)
    s.add_argument("--out", type=output_dir, required=True)
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=cmd_stitch)

    i = sub.add_parser("interpolate", help="the path small -> +novel -> swaps -> large, measured exactly")
    i.add_argument("small", type=sae_source, help=SOURCE_HELP)
    i.add_argument("large", type=sae_source, help=SOURCE_HELP)
    i.add_argument("--acts", type=existing_dir, required=True, help="activation store to measure on")
    i.add_argument("--tokens", type=positive_int, default=20_000)
    i.add_argument("--threshold", type=threshold, default=DEFAULT_THRESHOLD)
    i.add_argument("--rows", type=rows_arg, default=20)
    i.add_argument("--out", type=output_file, help="write every step to this JSON file")
    i.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    i.set_defaults(func=cmd_interpolate)

    f = sub.add_parser("frankenstein", help="assemble an SAE from a family of widths (checkpoints, resumes)")
    f.add_argument("saes", type=sae_source, nargs="+", help=SOURCE_HELP + "; a width pattern names a family")
    f.add_argument("--acts", type=existing_dir, required=True, help="activation store for retraining")
    f.add_argument("--eval-acts", type=existing_dir, help="activation store to measure on (default: --acts)")
    f.add_argument("--train-tokens", type=positive_int, default=200_000)
    f.add_argument("--eval-tokens", type=positive_int, default=20_000)
    f.add_argument("--batch-size", type=positive_int, default=4096)
    f.add_argument("--retrain", default="adam", choices=["adam", "lstsq", "none"])
    f.add_argument("--lr", type=positive_float, default=1e-3)
    f.add_argument("--threshold", type=threshold, default=DEFAULT_THRESHOLD)
    f.add_argument("--out", type=output_dir, required=True)
    f.add_argument("--restart", action="store_true", help=RESTART_HELP)
    f.set_defaults(func=cmd_frankenstein)

    v = sub.add_parser("convert", help="write any readable SAE source in the SAELens 6 layout")
    v.add_argument("source", type=sae_source, help=SOURCE_HELP)
    v.add_argument("out", type=output_dir, help="SAE directory to write (atomically)")
    v.add_argument("--hookpoint", help="the hookpoint folder of a sparsify checkpoint")
    v.add_argument("--hook-name", help="the hook the SAE reads, where its files do not say")
    v.add_argument("--norm-scaling-factor", type=positive_float, help="input scale of an SAELens SAE")
    v.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    v.set_defaults(func=cmd_convert)

    y = sub.add_parser("verify", help="compare stitchkit's reading of an SAE with the library that wrote it")
    y.add_argument("source", type=sae_source, help=SOURCE_HELP)
    y.add_argument("--library", required=True, choices=list(PEER_LIBRARIES))
    y.add_argument(
        "--python",
        type=existing_file,
        default=None,
        help="the interpreter of an environment where that library is installed (default: this one)",
    )
    y.add_argument("--tokens", type=positive_int, default=256, help="random tokens to compare on")
    y.set_defaults(func=cmd_verify)

    r = sub.add_parser("report", help="write report.md and its plots from a results.json")
    r.add_argument("results", type=existing_file)
    r.add_argument("--out", type=output_dir, help="directory (default: the results file's)")
    r.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    r.set_defaults(func=cmd_report)
    sub_parsers = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sp in sub_parsers.items():
        sp.formatter_class = DefaultsFormatter
        for action in sp._actions:
            key = action.option_strings[-1] if action.option_strings else action.dest
            action.help = action.help or OPTION_HELP.get((name, key)) or OPTION_HELP.get(key)
    return p


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, where it has one and its text does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default in (None, False, argparse.SUPPRESS)
        if "default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


# Help for options several commands share, and for the few only one has (command, option).
OPTION_HELP = {
    "--threshold": "max decoder cosine at or under which a large feature is novel (the reference: 0.7)",
    "--out": "output directory (stitchkit writes only into a new, empty or stitchkit-made one)",
    "--seed": "random seed (data order, initialisation)",
    "--device": "torch device to run on (cpu, cuda, cuda:1, ...)",
    "--eval-tokens": "held-out tokens every measurement uses",
    "--retrain-tokens": "tokens for retraining the Frankenstein decoders and the refit",
    "--train-tokens": "tokens for retraining each Frankenstein stage's decoder",
    "--batch-size": "tokens per training step",
    "--tokens": "tokens to use from the store (or, for collect, to collect)",
    ("demo", "--batch-size"): "tokens per training step (default: 1024; toy 512)",
    ("demo", "--l1"): "L1 coefficient of the family's training (default: 1.5; toy 0.2)",
    ("demo", "--lr"): "Adam learning rate of the family's training (default: 1e-3; toy 3e-3)",
    ("demo", "--retrain-lr"): "Adam learning rate of the Frankenstein decoder retraining",
    ("compare", "--backend"): "max cosine backend: auto picks the fastest exact one for the device",
    ("compare", "--precision"): "fp32 is exact; bf16 screens in bf16 then decides in fp32 where supported",
    ("collect", "--hook"): "TransformerLens hook name whose activations are collected",
    ("collect", "--split"): "dataset split (with --dataset)",
    ("collect", "--column"): "dataset text column (with --dataset)",
    ("collect", "--context"): "tokens per text (longer texts are cut)",
    ("collect", "--text-batch"): "texts per forward pass",
    ("collect", "--shard-tokens"): "tokens per store shard file",
    ("train", "--widths"): "SAE widths (d_sae) to train, one SAE each",
    ("train", "--out"): "directory for the family (one SAELens directory per width)",
    ("train", "--steps"): "Adam steps per SAE",
    ("train", "--l1"): "L1 coefficient: loss = MSE + l1 * sum of features",
    ("train", "--lr"): "Adam learning rate",
    ("stitch", "--out"): "directory for the stitched SAE (SAELens layout, with provenance)",
    ("interpolate", "--rows"): "path rows to print (first, last and evenly spaced ones)",
    ("frankenstein", "--retrain"): "how each stage's decoder is retrained: adam, lstsq (exact), or none",
    ("frankenstein", "--lr"): "Adam learning rate of the decoder retraining",
    ("frankenstein", "--out"): "directory for the assembled SAE, its checkpoints and stages",
    ("verify", "--library"): "the library that wrote the SAE, run in the interpreter --python",
    ("report", "results"): "a results.json from demo or interpolate --out",
}


# Commands whose work survives an interrupt (checkpoints, finished stages, shards, saved SAEs).
RESUMABLE = ("collect", "train", "frankenstein", "demo")


def _os_error(e: OSError) -> str:
    """One line for a failed file operation: the file, what went wrong, what to do."""
    where = e.filename if e.filename is not None else "a file"
    if e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}"
    what = e.strerror or str(e)
    hint = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space",
        errno.EFBIG: "the file exceeds the size allowed here",
        errno.EACCES: "check the permissions or choose another path",
        errno.EPERM: "check the permissions or choose another path",
        errno.EROFS: "choose a writable path",
    }.get(e.errno, "")
    return f"{where}: {what}" + (f" ({hint})" if hint else "")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # Parser.error has printed its one line; --help exits 0
        return e.code if isinstance(e.code, int) else 2
    from .. import dist

    # Under torchrun (WORLD_SIZE set) every command splits its work across the ranks; rank 0
    # alone prints and writes (stitchkit.atomic), the others stay silent unless they fail.
    joined = dist.init_from_env()
    who = f"rank {dist.rank()} of {dist.world()}: " if dist.world() > 1 else ""
    quiet = open(os.devnull, "w") if not dist.is_main() else None
    ok = False
    interrupt = Interrupt()
    try:
        with interrupt, contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            rc = args.func(args)
        ok = True
        return rc
    except (StitchkitError, OSError) as e:
        if interrupt.seen:  # C code (torch, safetensors) can turn Ctrl-C into its own error
            return _interrupted(args)
        what = e if isinstance(e, StitchkitError) else _os_error(e)
        print(f"stitchkit: error: {who}{what}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(args)
    finally:
        if quiet:
            quiet.close()
        if joined:
            dist.close(barrier=ok)


def _interrupted(args: argparse.Namespace) -> int:
    again = " (nothing is lost: re-run the same command to resume)" if args.command in RESUMABLE else ""
    print(f"\nstitchkit: interrupted{again}", file=sys.stderr)
    return 130


class Interrupt:
    """SIGINT while a command runs: remembered, and raised as KeyboardInterrupt once; a second one
    while the first unwinds is ignored, so the command ends through the error boundary (exit 130)
    and never dies of the signal itself. Outside the main thread it does nothing."""

    def __init__(self):
        self.seen = False
        self._old = None

    def _handle(self, signum, frame):
        if not self.seen:
            self.seen = True
            raise KeyboardInterrupt

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        # After an interrupt the handler stays (a second Ctrl-C while main unwinds is ignored);
        # otherwise the caller's handler comes back (main called in-process, by tests or scripts).
        if self._old is not None and not self.seen:
            signal.signal(signal.SIGINT, self._old)
        return False
