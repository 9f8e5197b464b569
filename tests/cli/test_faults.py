# ruff: noqa: E501  (the catalogue's tables read best one case a line)
"""The fault catalogue: bad inputs, foreign and stale outputs, damaged files, a full disk and
interrupts, through the command line, for every subcommand.

Each case asserts what README's "Reliability" section promises: the exit code (0 done, 2 bad
input, 130 interrupted), exactly one `stitchkit:` line on stderr that names the culprit and no
traceback, and that no file that existed before the command was changed or removed (a user's
files above all). The interrupt cases kill or interrupt a real process and check that re-running
the same command gives what an uninterrupted run gives.

Most cases call `stitchkit.cli.main` in this process (a raised exception would fail the case: the
same as a traceback); the kill and interrupt cases run `python -m stitchkit` in a subprocess."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from stitchkit import load_sae, save_sae
from stitchkit.atomic import claim_dir
from stitchkit.cli import main
from stitchkit.data.store import ActivationStore
from tests.helpers import TEXTS, random_sae

ROOT = Path(__file__).resolve().parents[2]
D_IN = 8


# ---------------------------------------------------------------------------------------------
# The world every case starts from, and the checks every case makes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three relu SAEs (16, 32, 64 features; d_in 8) and two activation stores, made once; cases
    copy what they change."""
    w = tmp_path_factory.mktemp("world")
    for width, seed in ((16, 1), (32, 2), (64, 3)):
        save_sae(random_sae("relu", d_in=D_IN, d_sae=width, seed=seed, name=f"s{width}"), w / f"s{width}")
    g = torch.Generator().manual_seed(0)
    ActivationStore.from_tensor(torch.randn(3000, D_IN, generator=g), w / "store", model="toy",
                                hook_name="toy", shard_tokens=1000)  # fmt: skip
    ActivationStore.from_tensor(torch.randn(3000, D_IN, generator=g), w / "store2", model="toy",
                                hook_name="toy", shard_tokens=1000)  # fmt: skip
    return w


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (that exists and is readable) -> a digest of its content."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def check_one_line(err: str, culprit: str) -> str:
    """stderr ends with exactly one `stitchkit:` line, it matches culprit, and holds no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("stitchkit:")]
    assert len(lines) == 1, err
    assert [ln for ln in err.splitlines() if ln.strip()][-1] == lines[0], err
    assert re.search(culprit, lines[0]), f"{culprit!r} not in {lines[0]!r}"
    return lines[0]


@dataclass
class Ctx:
    world: Path
    dir: Path  # this case's own directory

    def copy(self, name: str) -> Path:
        """A private copy of a world directory (an SAE or a store) in this case's directory."""
        dst = self.dir / name
        shutil.copytree(self.world / name, dst)
        return dst

    def user_dir(self, name: str = "project") -> Path:
        """A user's directory holding files stitchkit did not write."""
        d = self.dir / name
        (d / "data").mkdir(parents=True)
        (d / "notes.txt").write_text("three weeks of notes\n")
        (d / "data" / "results.csv").write_text("a,b\n1,2\n")
        return d

    def fails(self, argv: list, culprit: str, rc: int = 2) -> str:
        """The command fails with `rc`, one line naming `culprit`, and no existing file changed."""
        before = snapshot(self.dir) | snapshot(self.world)
        got, _, err = run_cli(argv)
        assert got == rc, err
        line = check_one_line(err, culprit)
        after = snapshot(self.dir) | snapshot(self.world)
        changed = [p for p, h in before.items() if after.get(p) != h]
        assert not changed, f"changed or removed: {changed}"
        return line

    def ok(self, argv: list) -> str:
        got, out, err = run_cli(argv)
        assert got == 0, err
        assert "Traceback" not in err
        return out


# ---------------------------------------------------------------------------------------------
# Table 1: arguments refused before any work (one line, exit 2). {s16} etc. name world paths,
# {out} a new path in the case's directory.

ARGUMENTS = [
    ("no-command", [], "required: command"),
    ("compare-missing-sae", ["compare", "{out}/nope", "{s16}"], "does not exist"),
    ("compare-backend", ["compare", "{s32}", "{s16}", "--backend", "bogus"], "invalid choice"),
    ("compare-precision", ["compare", "{s32}", "{s16}", "--precision", "fp8"], "invalid choice"),
    ("compare-no-cuda", ["compare", "{s32}", "{s16}", "--device", "cuda:0"], "CUDA is not available"),
    ("compare-device", ["compare", "{s32}", "{s16}", "--device", "gpu9"], "torch device"),
    ("compare-out-dir", ["compare", "{s32}", "{s16}", "--out", "{s16}"], "is a directory"),
    ("compare-saelens-form", ["compare", "saelens:noslash", "{s16}"], "saelens:RELEASE/SAE_ID"),
    ("compare-hf-form", ["compare", "hf://onlyowner", "{s16}"], "hf://OWNER/REPO"),
    ("stitch-features-text", ["stitch", "{s16}", "{s32}", "--features", "a,b", "--out", "{out}"], "comma"),
    ("stitch-features-negative", ["stitch", "{s16}", "{s32}", "--features", "3,-1", "--out", "{out}"], ">= 0"),
    ("stitch-features-repeat", ["stitch", "{s16}", "{s32}", "--features", "3,3", "--out", "{out}"], "3 is named twice"),
    ("stitch-features-range", ["stitch", "{s16}", "{s32}", "--features", "1,99", "--out", "{out}"], "has 32 features"),
    ("stitch-threshold", ["stitch", "{s16}", "{s32}", "--threshold", "1.5", "--out", "{out}"], "threshold"),
    ("stitch-no-out", ["stitch", "{s16}", "{s32}"], "required: --out"),
    ("stitch-out-file", ["stitch", "{s16}", "{s32}", "--out", "{s16}/cfg.json"], "not a directory"),
    ("interpolate-acts", ["interpolate", "{s16}", "{s32}", "--acts", "{out}/none"], "is not a directory"),
    ("interpolate-tokens", ["interpolate", "{s16}", "{s32}", "--acts", "{store}", "--tokens", "0"], "positive integer"),
    ("interpolate-rows", ["interpolate", "{s16}", "{s32}", "--acts", "{store}", "--rows", "2"], "at least 3"),
    ("train-widths-repeat", ["train", "--acts", "{store}", "--widths", "16", "16", "--out", "{out}"], "repeats"),
    ("train-steps", ["train", "--acts", "{store}", "--widths", "16", "--steps", "0", "--out", "{out}"], "positive"),
    ("train-l1-negative", ["train", "--acts", "{store}", "--widths", "16", "--l1", "-1", "--out", "{out}"], "positive"),
    ("train-l1-nan", ["train", "--acts", "{store}", "--widths", "16", "--l1", "nan", "--out", "{out}"], "finite"),
    ("train-parallel", ["train", "--acts", "{store}", "--widths", "16", "--parallel", "x", "--out", "{out}"], "choice"),
    ("frankenstein-one", ["frankenstein", "{s16}", "--acts", "{store}", "--out", "{out}"], "at least two"),
    ("frankenstein-twice", ["frankenstein", "{s16}", "{s16}", "{s32}", "--acts", "{store}", "--out", "{out}"],
     "named twice"),
    ("frankenstein-pattern-repeat", ["frankenstein", "{world}/s{{16,16,32}}", "--acts", "{store}", "--out", "{out}"],
     "width 16 twice"),
    ("frankenstein-retrain", ["frankenstein", "{s16}", "{s32}", "--acts", "{store}", "--retrain", "x", "--out", "{out}"],
     "invalid choice"),
    ("collect-tokens", ["collect", "--tokens", "0", "--out", "{out}"], "positive integer"),
    ("collect-texts", ["collect", "--texts", "{out}/none.txt", "--out", "{out}"], "is not a file"),
    ("convert-missing", ["convert", "{out}/nope", "{out}"], "does not exist"),
    ("convert-norm", ["convert", "{s16}", "{out}", "--norm-scaling-factor", "-2"], "positive"),
    ("verify-library", ["verify", "{s16}", "--library", "bogus"], "invalid choice"),
    ("verify-python", ["verify", "{s16}", "--library", "saelens", "--python", "{out}/py"], "is not a file"),
    ("report-missing", ["report", "{out}/results.json"], "is not a file"),
    ("demo-widths", ["demo", "--toy", "--n-widths", "1", "--out", "{out}"], "at least 2"),
    ("demo-toy-saes", ["demo", "--toy", "--saes", "{s16}", "{s32}", "--out", "{out}"], "not with --toy"),
    ("demo-order", ["demo", "--toy", "--small", "2", "--large", "1", "--out", "{out}"], "narrower"),
    ("demo-index", ["demo", "--toy", "--small", "0", "--large", "7", "--out", "{out}"], "must index"),
    ("demo-lr-decay", ["demo", "--toy", "--lr-decay", "2", "--out", "{out}"], "fraction"),
]


@pytest.mark.parametrize("argv,culprit", [pytest.param(a, c, id=n) for n, a, c in ARGUMENTS])
def test_arguments(world, tmp_path, argv, culprit):
    ctx = Ctx(world, tmp_path)
    names = dict(world=world, out=tmp_path / "out", store=world / "store",
                 **{f"s{w}": world / f"s{w}" for w in (16, 32, 64)})  # fmt: skip
    ctx.fails([a.format(**names) for a in argv], culprit)


# ---------------------------------------------------------------------------------------------
# Table 2: the cases that need a set-up. Each is a function of a Ctx; CASES lists them all.

CASES: dict[str, Callable[[Ctx], None]] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def _stitch(c: Ctx, out, *extra):
    return ["stitch", c.world / "s16", c.world / "s32", "--features", "1,2", "--out", out, *extra]


def _train(c: Ctx, out, *extra, acts=None, steps="30"):
    return ["train", "--acts", acts or c.world / "store", "--widths", "16", "--steps", steps,
            "--batch-size", "100", "--out", out, *extra]  # fmt: skip


def _frank(c: Ctx, out, *extra, acts=None):
    return ["frankenstein", c.world / "s16", c.world / "s32", "--acts", acts or c.world / "store",
            "--train-tokens", "2000", "--eval-tokens", "1000", "--batch-size", "500", "--out", out, *extra]  # fmt: skip


# -- outputs: never a user's files, stitchkit's own only with --overwrite --------------------


@case
def stitch_into_a_users_directory(c):
    c.fails(_stitch(c, c.user_dir()), "did not write .*notes.txt")


@case
def convert_into_a_users_directory(c):
    c.fails(["convert", c.world / "s16", c.user_dir()], "did not write")


@case
def convert_over_a_users_directory_with_overwrite(c):
    c.fails(["convert", c.world / "s16", c.user_dir(), "--overwrite"], "did not write")


@case
def stitch_over_its_own_sae_needs_overwrite(c):
    c.ok(_stitch(c, c.dir / "st"))
    c.fails(_stitch(c, c.dir / "st"), "pass --overwrite")


@case
def stitch_overwrite_replaces_its_own_sae(c):
    c.ok(_stitch(c, c.dir / "st"))
    c.ok(["stitch", c.world / "s16", c.world / "s32", "--features", "4", "--out", c.dir / "st", "--overwrite"])
    assert load_sae(c.dir / "st").d_sae == 17
    assert not [p for p in c.dir.iterdir() if p.name.startswith(".st.")]  # nothing left aside


@case
def stitch_overwrite_keeps_a_users_file_in_its_sae(c):
    c.ok(_stitch(c, c.dir / "st"))
    (c.dir / "st" / "notes.txt").write_text("mine")
    c.fails(_stitch(c, c.dir / "st", "--overwrite"), "notes.txt.*will not remove")


@case
def convert_overwrite_replaces_its_own_sae(c):
    c.ok(["convert", c.world / "s16", c.dir / "cv"])
    c.fails(["convert", c.world / "s32", c.dir / "cv"], "pass --overwrite")
    c.ok(["convert", c.world / "s32", c.dir / "cv", "--overwrite"])
    assert load_sae(c.dir / "cv").d_sae == 32


@case
def convert_into_an_empty_directory(c):
    (c.dir / "empty").mkdir()
    c.ok(["convert", c.world / "s16", c.dir / "empty"])
    assert load_sae(c.dir / "empty").d_sae == 16


@case
def compare_over_a_users_file(c):
    torch.save({"mine": torch.ones(3)}, c.dir / "mine.pt")
    c.fails(["compare", c.world / "s32", c.world / "s16", "--out", c.dir / "mine.pt"], "not written by stitchkit")


@case
def compare_over_its_own_file(c):
    argv = ["compare", c.world / "s32", c.world / "s16", "--out", c.dir / "mc.pt"]
    c.ok(argv)
    c.fails(argv, "pass --overwrite")
    c.ok([*argv, "--overwrite"])


@case
def interpolate_over_a_users_file(c):
    (c.dir / "path.json").write_text('{"mine": 1}')
    c.fails(["interpolate", c.world / "s16", c.world / "s32", "--acts", c.world / "store", "--tokens", "500",
             "--out", c.dir / "path.json"], "not written by stitchkit")  # fmt: skip


@case
def report_over_a_users_report(c):
    argv = ["interpolate", c.world / "s16", c.world / "s32", "--acts", c.world / "store", "--tokens", "500",
            "--out", c.dir / "path.json"]  # fmt: skip
    c.ok(argv)
    user = c.user_dir()
    (user / "report.md").write_text("# my own report\n")
    c.fails(["report", c.dir / "path.json", "--out", user], "report.md .*not written by stitchkit")


@case
def report_over_its_own_report(c):
    c.ok(["interpolate", c.world / "s16", c.world / "s32", "--acts", c.world / "store", "--tokens", "500",
          "--out", c.dir / "path.json"])  # fmt: skip
    c.ok(["report", c.dir / "path.json"])
    c.fails(["report", c.dir / "path.json"], "pass --overwrite")
    c.ok(["report", c.dir / "path.json", "--overwrite"])
    assert "Interpolation path" in (c.dir / "report.md").read_text()


@case
def train_into_a_users_directory(c):
    c.fails(_train(c, c.user_dir()), "did not write")


@case
def frankenstein_into_a_users_directory(c):
    c.fails(_frank(c, c.user_dir()), "did not write")


@case
def collect_into_a_users_directory(c):
    c.fails(["collect", "--out", c.user_dir()], "did not write")


@case
def demo_into_a_users_directory(c):
    c.fails(["demo", "--toy", "--out", c.user_dir()], "did not write")


@case
def train_into_a_store(c):
    c.fails(_train(c, c.copy("store")), "holds stitchkit's store output, not a family")


# -- stale state: another run's output is refused, --restart discards it ----------------------


def _trained(c: Ctx, *extra) -> Path:
    c.ok(_train(c, c.dir / "fam", *extra))
    return c.dir / "fam"


@case
def train_again_with_another_l1(c):
    _trained(c, "--l1", "4.0")
    c.fails(_train(c, c.dir / "fam"), "another recipe or data: .*l1_coefficient 4.0 .*--restart")


@case
def train_again_with_another_batch_size(c):
    _trained(c)
    c.fails(_train(c, c.dir / "fam")[:-4] + ["--batch-size", "50", "--out", c.dir / "fam"], "batch_size 100")


@case
def train_again_on_another_store(c):
    _trained(c)
    c.fails(_train(c, c.dir / "fam", acts=c.world / "store2"), "data ")


@case
def train_again_with_more_steps(c):
    _trained(c)
    c.fails(_train(c, c.dir / "fam", steps="40"), "n_steps 30")


@case
def train_again_with_another_lr(c):
    _trained(c)
    c.fails(_train(c, c.dir / "fam", "--lr", "0.01"), "lr 0.002")


@case
def train_again_with_the_same_recipe_reuses(c):
    fam = _trained(c)
    before = snapshot(fam / "sae-16")
    c.ok(_train(c, fam))
    assert snapshot(fam / "sae-16") == before


@case
def train_restart_retrains_with_the_new_recipe(c):
    fam = _trained(c, "--l1", "4.0")
    (fam / "notes.txt").write_text("mine")
    c.ok(_train(c, fam, "--restart"))
    assert json.loads((fam / "sae-16" / "stitchkit_train.json").read_text())["l1_coefficient"] == 1.5
    assert (fam / "notes.txt").read_text() == "mine"
    fresh = c.dir / "fresh"
    c.ok(_train(c, fresh))
    assert torch.equal(load_sae(fam / "sae-16").W_dec, load_sae(fresh / "sae-16").W_dec)


@case
def train_record_damaged(c):
    fam = _trained(c)
    (fam / "sae-16" / "stitchkit_train.json").write_text("{not json")
    c.fails(_train(c, fam), "stitchkit_train.json: .*not valid JSON")


@case
def train_checkpoint_garbage(c):
    claim_dir(c.dir / "fam", "family", fn="test")
    (c.dir / "fam" / ".sae-16.train.pt").write_bytes(b"\x00garbage" * 50)
    c.fails(_train(c, c.dir / "fam"), r"\.sae-16\.train\.pt: cannot read this checkpoint")


class _Payload:
    """A pickle that would create a file if it were ever unpickled with code allowed."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "code ran"))


@case
def train_checkpoint_that_carries_code(c):
    claim_dir(c.dir / "fam", "family", fn="test")
    with open(c.dir / "fam" / ".sae-16.train.pt", "wb") as fh:
        pickle.dump({"step": 1, "x": _Payload(c.dir / "pwned")}, fh)
    c.fails(_train(c, c.dir / "fam"), "cannot read this checkpoint")
    assert not (c.dir / "pwned").exists()


def _franked(c: Ctx, *extra) -> Path:
    c.ok(_frank(c, c.dir / "fr", *extra))
    return c.dir / "fr"


@case
def frankenstein_again_on_another_store(c):
    _franked(c)
    c.fails(_frank(c, c.dir / "fr", acts=c.world / "store2"), "belongs to another run: .*digest")


@case
def frankenstein_again_on_fewer_tokens(c):
    _franked(c)
    argv = _frank(c, c.dir / "fr")
    argv[argv.index("--train-tokens") + 1] = "1500"
    c.fails(argv, "'train_tokens': 2000")


@case
def frankenstein_again_with_another_threshold(c):
    _franked(c)
    c.fails(_frank(c, c.dir / "fr", "--threshold", "0.5"), "threshold 0.7")


@case
def frankenstein_restart_equals_a_fresh_run(c):
    _franked(c, "--threshold", "0.5")
    c.ok(_frank(c, c.dir / "fr", "--restart"))
    c.ok(_frank(c, c.dir / "fresh"))
    a, b = load_sae(c.dir / "fr" / "frankenstein"), load_sae(c.dir / "fresh" / "frankenstein")
    assert torch.equal(a.W_dec, b.W_dec)


@case
def frankenstein_run_signature_damaged(c):
    fr = _franked(c)
    (fr / "checkpoints" / "run.json").write_text("[1, 2")
    c.fails(_frank(c, fr), r"run\.json: .*not valid JSON")


def _stage_work_file(c: Ctx) -> Path:
    """A Frankenstein output whose checkpoints are emptied: the path where a re-run with Adam
    will look for stage 1's unfinished retraining."""
    fr = _franked(c, "--retrain", "none")
    for f in (fr / "checkpoints").iterdir():
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    return fr / "checkpoints" / "stage_01.retrain.pt"


@case
def frankenstein_work_file_garbage(c):
    _stage_work_file(c).write_bytes(b"PK\x03\x04 not a zip")
    c.fails(_frank(c, c.dir / "fr"), r"stage_01\.retrain\.pt: cannot read this checkpoint")


@case
def frankenstein_work_file_that_carries_code(c):
    torch.save({"x": _Payload(c.dir / "pwned")}, _stage_work_file(c))
    c.fails(_frank(c, c.dir / "fr"), "cannot read this checkpoint")
    assert not (c.dir / "pwned").exists()


# -- damaged activation stores: refused by name, never measured on fewer tokens ---------------


def _store_with(c: Ctx, change: Callable[[Path, dict], None]) -> Path:
    store = c.copy("store")
    mf = json.loads((store / "manifest.json").read_text())
    change(store, mf)
    (store / "manifest.json").write_text(json.dumps(mf))
    return store


def _short_shard(store: Path, mf: dict, keep_bytes: bool = True) -> None:
    from safetensors.torch import save_file

    save_file({"activations": torch.randn(400, D_IN)}, str(store / mf["shards"][1]["file"]))
    if not keep_bytes:
        for sh in mf["shards"]:
            sh.pop("bytes"), sh.pop("sha256")


def _interp(c: Ctx, store: Path):
    return ["interpolate", c.world / "s16", c.world / "s32", "--acts", store, "--tokens", "3000"]


@case
def interpolate_on_a_truncated_shard(c):
    c.fails(_interp(c, _store_with(c, _short_shard)), "shard_00001.safetensors has .* bytes")


@case
def train_on_a_short_shard_of_an_old_store(c):
    store = _store_with(c, lambda s, mf: _short_shard(s, mf, keep_bytes=False))
    c.fails(_train(c, c.dir / "fam", acts=store, steps="60"), "holds 400 tokens, its manifest says 1000")


@case
def frankenstein_on_a_short_shard_of_an_old_store(c):
    store = _store_with(c, lambda s, mf: _short_shard(s, mf, keep_bytes=False))
    c.fails(_frank(c, c.dir / "fr", acts=store), "holds 400 tokens")


@case
def store_missing_a_shard(c):
    store = _store_with(c, lambda s, mf: (s / mf["shards"][2]["file"]).unlink())
    c.fails(_interp(c, store), "shard_00002.safetensors is missing")


@case
def store_manifest_damaged(c):
    store = c.copy("store")
    (store / "manifest.json").write_text('{"model": "toy", ')
    c.fails(_train(c, c.dir / "fam", acts=store), r"manifest\.json: .*not valid JSON")


@case
def store_manifest_disagrees_with_its_shards(c):
    c.fails(_interp(c, _store_with(c, lambda s, mf: mf.update(n_tokens=5000))), "hold 3000 tokens .* says 5000")


@case
def store_incomplete(c):
    c.fails(_interp(c, _store_with(c, lambda s, mf: mf.update(complete=False))), "incomplete")


@case
def store_empty(c):
    def empty(s, mf):
        for sh in mf["shards"]:
            (s / sh["file"]).unlink()
        mf.update(shards=[], n_tokens=0)

    store = _store_with(c, empty)
    c.fails(_train(c, c.dir / "fam", acts=store), f"activation store {re.escape(str(store))} holds no tokens")


@case
def frankenstein_eval_store_damaged(c):
    store = _store_with(c, lambda s, mf: (s / mf["shards"][0]["file"]).write_bytes(b"junk"))
    c.fails(_frank(c, c.dir / "fr", "--eval-acts", store), "shard_00000.safetensors has 4 bytes")


# -- damaged or ambiguous SAE files ------------------------------------------------------------


@case
def compare_sae_config_damaged(c):
    sae = c.copy("s16")
    (sae / "cfg.json").write_text("{")
    c.fails(["compare", c.world / "s32", sae], r"cfg\.json: not valid JSON")


@case
def compare_sae_weights_truncated(c):
    sae = c.copy("s16")
    w = sae / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    c.fails(["compare", c.world / "s32", sae], "sae_weights.safetensors")


@case
def stitch_sae_with_nan(c):
    sae = random_sae("relu", d_in=D_IN, d_sae=16, seed=7)
    with torch.no_grad():
        sae.W_dec[3, 2] = float("nan")
    from safetensors.torch import save_file

    from stitchkit.sae.formats.saelens import cfg_for, weights_for

    (c.dir / "nan").mkdir()
    save_file(weights_for(sae), str(c.dir / "nan" / "sae_weights.safetensors"))
    (c.dir / "nan" / "cfg.json").write_text(json.dumps(cfg_for(sae)))
    c.fails(_stitch(c, c.dir / "st")[:1] + [c.dir / "nan", c.world / "s32", "--out", c.dir / "st"], "NaN")


@case
def topk_with_k_above_its_width(c):
    sae = save_sae(random_sae("topk", d_in=D_IN, d_sae=64, seed=5, k=4), c.dir / "tk")
    cfg = json.loads((sae / "cfg.json").read_text())
    cfg["k"] = 1000
    (sae / "cfg.json").write_text(json.dumps(cfg))
    (sae / "stitchkit.json").unlink()
    c.fails(["compare", sae, c.world / "s16"], "k=1000 must lie in 1..d_sae=64")


@case
def directory_with_two_sae_layouts(c):
    sae = c.copy("s16")
    torch.save({"encoder.weight": torch.zeros(16, D_IN)}, sae / "ae.pt")
    c.fails(["compare", c.world / "s32", sae], "more than one SAE layout: saelens .* dictionary_learning .*ae.pt")


@case
def convert_a_pickle_that_carries_code(c):
    (c.dir / "dl").mkdir()
    with open(c.dir / "dl" / "ae.pt", "wb") as fh:
        pickle.dump({"W": _Payload(c.dir / "pwned")}, fh)
    c.fails(["convert", c.dir / "dl", c.dir / "out"], "ae.pt")
    assert not (c.dir / "pwned").exists()


@case
def report_on_an_empty_object(c):
    (c.dir / "r.json").write_text("{}")
    c.fails(["report", c.dir / "r.json"], "holds no study results")


@case
def report_on_a_list(c):
    (c.dir / "r.json").write_text("[1, 2]")
    c.fails(["report", c.dir / "r.json"], "holds a list")


@case
def report_on_garbage(c):
    (c.dir / "r.json").write_text("\x00\x01 not json")
    c.fails(["report", c.dir / "r.json"], "not a readable results JSON")


# -- collect: resumes only its own collection ------------------------------------------------


def _collect(c: Ctx, tiny_dir: Path, texts: Path, out: Path, *extra, tokens="120"):
    return ["collect", "--model", tiny_dir, "--hook", "blocks.1.hook_resid_pre", "--texts", texts,
            "--tokens", tokens, "--context", "16", "--shard-tokens", "50", "--out", out, *extra]  # fmt: skip


def test_collect_refuses_another_collection_and_empty_texts(world, tmp_path, tiny_dir):
    pytest.importorskip("transformer_lens")
    c = Ctx(world, tmp_path)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n\n".join(TEXTS))
    c.ok(_collect(c, tiny_dir, texts, tmp_path / "st"))
    c.fails(_collect(c, tiny_dir, texts, tmp_path / "st", tokens="130"), "max_tokens 120 .*--restart")
    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(reversed(TEXTS)))
    c.fails(_collect(c, tiny_dir, other, tmp_path / "st"), "texts_sha256")
    c.ok(_collect(c, tiny_dir, other, tmp_path / "st", "--restart"))
    c.ok(_collect(c, tiny_dir, other, tmp_path / "fresh"))
    a, b = ActivationStore(tmp_path / "st"), ActivationStore(tmp_path / "fresh")
    assert torch.equal(torch.cat(list(a.batches(shuffle=False))), torch.cat(list(b.batches(shuffle=False))))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for _ in range(2):  # the failed collect leaves no complete store: the re-run fails the same way
        c.fails(_collect(c, tiny_dir, empty, tmp_path / "none"), "no tokens|no texts")
    with pytest.raises(Exception, match="incomplete|no manifest"):
        ActivationStore(tmp_path / "none")


# -- files that cannot be written: permissions and a full disk --------------------------------


def _unwritable(c: Ctx) -> Path:
    """A directory this process cannot create anything in (root ignores modes: use /sys)."""
    if os.geteuid() == 0:
        return Path("/sys/stitchkit-fault-test")
    d = c.dir / "locked"
    d.mkdir()
    d.chmod(0o500)
    return d


UNWRITABLE = {
    "stitch": lambda c, d: _stitch(c, d / "st"),
    "convert": lambda c, d: ["convert", c.world / "s16", d / "cv"],
    "compare": lambda c, d: ["compare", c.world / "s32", c.world / "s16", "--out", d / "mc.pt"],
    "interpolate": lambda c, d: [*_interp(c, c.world / "store"), "--out", d / "p.json"],
    "train": lambda c, d: _train(c, d / "fam"),
    "frankenstein": lambda c, d: _frank(c, d / "fr"),
    "collect": lambda c, d: ["collect", "--out", d / "store"],
    "demo": lambda c, d: ["demo", "--toy", "--out", d / "demo"],
}


@pytest.mark.parametrize("command", list(UNWRITABLE))
def test_an_output_that_cannot_be_written(world, tmp_path, command):
    c = Ctx(world, tmp_path)
    d = _unwritable(c)
    try:
        c.fails(UNWRITABLE[command](c, d), f"{re.escape(str(d))}.*(not permitted|Permission denied)")
    finally:
        if d.parent == tmp_path:
            d.chmod(0o700)


@contextlib.contextmanager
def disk_full(limit: int):
    """Files may grow to `limit` bytes, no more: writing past it fails with EFBIG (Python ignores
    SIGXFSZ), as a full disk fails a write."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


DISK_FULL = {
    "convert": (lambda c: ["convert", c.world / "s64", c.dir / "cv"], "cv"),
    "stitch": (lambda c: _stitch(c, c.dir / "st"), "st"),
    "compare": (lambda c: ["compare", c.world / "s64", c.world / "s16", "--out", c.dir / "mc.pt"], "mc.pt"),
    "interpolate": (lambda c: [*_interp(c, c.world / "store"), "--out", c.dir / "p.json"], "p.json"),
    "train": (lambda c: _train(c, c.dir / "fam"), "fam/sae-16"),
}


@pytest.mark.parametrize("command", list(DISK_FULL))
def test_a_full_disk(world, tmp_path, command):
    """A write that fails midway is one line and leaves no partial output; the re-run completes."""
    c = Ctx(world, tmp_path)
    argv, output = DISK_FULL[command]
    with disk_full(1024):
        c.fails(argv(c), "File too large|could not write")
    assert not (tmp_path / output).exists()
    assert not [p for p in tmp_path.rglob(".*tmp*")], "a temporary file was left behind"
    c.ok(argv(c))


@pytest.mark.parametrize("name", list(CASES))
def test_case(world, tmp_path, name):
    CASES[name](Ctx(world, tmp_path))


def test_the_catalogue_is_large():
    """The issue asks for at least 80 cases across the subcommands."""
    n = len(ARGUMENTS) + len(CASES) + len(UNWRITABLE) + len(DISK_FULL) + 1 + len(INTERRUPTS)
    assert n >= 80, n


# ---------------------------------------------------------------------------------------------
# Interrupts: SIGINT and SIGKILL at several points of a real process; the re-run equals an
# uninterrupted run.


def _spawn(argv: list) -> subprocess.Popen:
    """`python -m stitchkit ARGV`: every run a result is compared across runs in a process of its
    own, with the same environment (threads change float reduction order)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "stitchkit", *map(str, argv)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def run_sub(argv: list) -> None:
    proc = _spawn(argv)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def _interrupt_when(proc: subprocess.Popen, ready: Callable[[], bool], sig: int, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"finished before the interrupt point: {proc.communicate()[1][-2000:]}")
        assert time.monotonic() - t0 < timeout, "the interrupt point never came"
        time.sleep(0.01)
    proc.send_signal(sig)


def _long_train(c: Ctx, out: Path, *extra):
    return ["train", "--acts", c.world / "store", "--widths", "16", "32", "--steps", "1500",
            "--batch-size", "64", "--out", out, *extra]  # fmt: skip


def _weights(d: Path) -> list[torch.Tensor]:
    s = load_sae(d)
    return [s.W_enc, s.b_enc, s.W_dec, s.b_dec]


def _equal(a: Path, b: Path) -> None:
    for x, y in zip(_weights(a), _weights(b)):
        assert torch.equal(x, y)


def _first_checkpoint(out: Path) -> Callable[[], bool]:
    return lambda: any(out.glob(".sae-*.train.pt"))


INTERRUPTS = {
    "train-sigint-after-a-checkpoint": (signal.SIGINT, "ckpt"),
    "train-sigkill-after-a-checkpoint": (signal.SIGKILL, "ckpt"),
    "train-sigint-at-start": (signal.SIGINT, "start"),
    "train-sigkill-after-the-first-width": (signal.SIGKILL, "width"),
}


@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory):
    d = tmp_path_factory.mktemp("uninterrupted")
    run_sub(_long_train(Ctx(world, d), d / "fam"))
    return d / "fam"


@pytest.mark.parametrize("name", list(INTERRUPTS))
def test_train_interrupted(world, tmp_path, uninterrupted, name):
    sig, when = INTERRUPTS[name]
    c, out = Ctx(world, tmp_path), tmp_path / "fam"
    ready = {
        "ckpt": _first_checkpoint(out),
        "start": lambda: (out / ".stitchkit").exists(),
        "width": lambda: (out / "sae-16" / "stitchkit_train.json").exists(),
    }[when]
    proc = _spawn(_long_train(c, out))
    _interrupt_when(proc, ready, sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        check_one_line(err, "interrupted .*re-run the same command to resume")
    else:
        assert proc.returncode == -signal.SIGKILL
    run_sub(_long_train(c, out))
    for width in (16, 32):
        _equal(out / f"sae-{width}", uninterrupted / f"sae-{width}")
    assert not list(out.glob(".sae-*.train.pt"))  # checkpoints removed once each width is saved


def test_train_killed_then_rerun_with_another_recipe(world, tmp_path, uninterrupted):
    """The issue's case: `train --l1 4.0` killed after a checkpoint, re-run with the default l1:
    refused by name; --restart then trains what an uninterrupted default run trains."""
    c, out = Ctx(world, tmp_path), tmp_path / "fam"
    proc = _spawn(_long_train(c, out, "--l1", "4.0"))
    _interrupt_when(proc, _first_checkpoint(out), signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not after it ended
    c.fails(_long_train(c, out), "belongs to another run: .*l1_coefficient 4.0 \\(this run: 1.5\\)")
    run_sub(_long_train(c, out, "--restart"))
    _equal(out / "sae-16", uninterrupted / "sae-16")


def test_frankenstein_killed_after_a_stage_resumes_exactly(world, tmp_path):
    family = [world / "s16", world / "s32", world / "s64"]
    argv = lambda out: ["frankenstein", *family, "--acts", world / "store", "--train-tokens", "3000",  # noqa: E731
                        "--eval-tokens", "500", "--batch-size", "10", "--out", out]  # fmt: skip
    run_sub(argv(tmp_path / "ref"))
    out = tmp_path / "fr"
    proc = _spawn(argv(out))
    _interrupt_when(proc, lambda: (out / "checkpoints" / "stage_01.json").exists(), signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not after it ended
    run_sub(argv(out))
    _equal(out / "frankenstein", tmp_path / "ref" / "frankenstein")


def test_collect_killed_after_a_shard_resumes_exactly(world, tmp_path, tiny_dir):
    pytest.importorskip("transformer_lens")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n\n".join(TEXTS * 8))
    argv = lambda out: ["collect", "--model", tiny_dir, "--hook", "blocks.1.hook_resid_pre", "--texts", texts,  # noqa: E731
                        "--tokens", "1500", "--context", "16", "--text-batch", "4", "--shard-tokens", "100",
                        "--out", out]  # fmt: skip
    run_sub(argv(tmp_path / "ref"))
    out = tmp_path / "st"
    proc = _spawn(argv(out))
    _interrupt_when(proc, lambda: len(list(out.glob("shard_*.safetensors"))) >= 2, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not after it ended
    run_sub(argv(out))
    a, b = ActivationStore(out), ActivationStore(tmp_path / "ref")
    assert a.identity() == b.identity()
    assert torch.equal(torch.cat(list(a.batches(shuffle=False))), torch.cat(list(b.batches(shuffle=False))))


def test_ctrl_c_that_c_code_turns_into_another_error_still_exits_130(tmp_path, monkeypatch, capsys):
    """Torch and safetensors can catch the KeyboardInterrupt of a Ctrl-C inside their C code and
    raise their own error (seen once as "activation store shard ... could not be read: could not
    determine the shape of object type 'torch.storage.UntypedStorage'"): it is still an interrupt,
    exit 130, not a corrupt file; and the caller's SIGINT handler is back afterwards."""
    import os
    import signal

    import stitchkit.cli as cli
    from stitchkit.cli import main
    from stitchkit.errors import StitchkitError

    def swallowed(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise StitchkitError("shard could not be read: could not determine the shape") from None

    before = signal.getsignal(signal.SIGINT)
    (tmp_path / "r.json").write_text("{}")
    monkeypatch.setattr(cli, "cmd_report", swallowed)
    try:
        assert main(["report", str(tmp_path / "r.json")]) == 130
        assert "stitchkit: interrupted" in capsys.readouterr().err
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.setattr(cli, "cmd_report", lambda args: 0)
    assert main(["report", str(tmp_path / "r.json")]) == 0
    assert signal.getsignal(signal.SIGINT) is before  # no interrupt: the handler is given back
