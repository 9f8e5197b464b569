"""Checking the command line's arguments before any work starts: each type below is an argparse
`type=` (a bad value is answered by Parser.error in one line, exit 2)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import StitchkitError
from ..stitch.rules import check_threshold


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2 (no usage block)."""

    def error(self, message: str):
        print(f"stitchkit: error: {self.prog}: {message}", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def fraction_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a cosine threshold in (0, 1), got {text!r}") from None
    try:
        return check_threshold(value, "threshold")
    except Exception:
        raise argparse.ArgumentTypeError(f"expected a cosine threshold in (0, 1), got {text!r}") from None


def existing_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return text


def sae_source(text: str) -> str:
    """An SAE source (stitchkit.sae.sources): an existing path, hf://... or saelens:..., checked
    for form here (a remote source is fetched when the command runs)."""
    from ..sae.sources import HF_PREFIX, SAELENS_PREFIX, expand_family, parse_hf

    try:
        for one in expand_family(text):
            if one.startswith(HF_PREFIX):
                parse_hf(one)
            elif one.startswith(SAELENS_PREFIX):
                if "/" not in one[len(SAELENS_PREFIX) :]:
                    raise argparse.ArgumentTypeError(f"{one}: expected saelens:RELEASE/SAE_ID")
            elif not Path(one).exists():
                raise argparse.ArgumentTypeError(f"{one} does not exist (expected an SAE directory or file)")
    except StitchkitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return text


def output_dir(text: str) -> str:
    """A directory to write into: it may not exist yet, but must not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{parent} is not a directory, so {text} cannot be made")
            break
    return text


def output_file(text: str) -> str:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, expected a file path")
    output_dir(str(path.parent) if str(path.parent) else ".")
    return text


def feature_list(text: str) -> list[int]:
    try:
        feats = [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated feature indices, got {text!r}") from None
    if not feats or min(feats) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated indices >= 0, got {text!r}")
    repeats = sorted({f for f in feats if feats.count(f) > 1})
    if repeats:
        raise argparse.ArgumentTypeError(f"feature {repeats[0]} is named twice in {text!r}; name each once")
    return feats


def rows_arg(text: str) -> int:
    """How many table rows to print: at least 3 (the first two and the last are always shown)."""
    value = positive_int(text)
    if value < 3:
        raise argparse.ArgumentTypeError(f"expected at least 3 rows, got {text!r}")
    return value


def device_arg(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected a torch device such as cpu or cuda:0, got {text!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r}: CUDA is not available here")
    return text
