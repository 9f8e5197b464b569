"""stitchkit against the libraries that write SAE files (SAELens, EleutherAI sparsify,
saprmarks/dictionary_learning, OpenMOSS llamascopium): the same SAE read by both must encode and
reconstruct alike.

    outputs(sae, x)                 stitchkit's f = encode(x) and x_hat = forward(x) on raw inputs
                                    (a stated input_norm applied and undone, as the peers do)
    compare(sae, ref, x)            max errors against a peer's outputs, relative to their scale
    check_written(out)              every SAE a peer wrote under `out` (peers/worker.py write),
                                    read by stitchkit and compared with the peer's own outputs
    verify(source, library, python) one SAE on a user's machine: the peer library (installed in the
                                    interpreter `python`) loads it and stitchkit compares
    from_module(obj)                an SAE already loaded by a peer library, as a stitchkit SAE

The peer side runs in the peer's own environment (worker.py, by path: it never imports
stitchkit), so a library that pins other versions (sae-lens pins TransformerLens below 4) never
enters stitchkit's environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidArgumentError, StitchkitError, UnsupportedError
from ..sae.model import SAE, normalize_input

WORKER = Path(__file__).with_name("worker.py")
LIBRARIES = ("saelens", "sparsify", "dictionary_learning", "llamascopium")
# Largest error allowed, relative to the largest |value| of the peer's output, per weight dtype.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# In fp16/bf16 the two libraries' products round differently, which can move a feature across
# its threshold or the k-th place: such tokens are counted (at most this fraction) and the errors
# are measured on the others. fp32 and fp64 must agree on every token.
MAX_FLIPPED = 0.05


@dataclass
class Comparison:
    """stitchkit vs a peer on one SAE: errors relative to the peer output's scale."""

    name: str
    library: str
    format: str
    f_error: float
    x_hat_error: float
    tolerance: float
    flipped: float = 0.0  # fraction of tokens whose active features differ (fp16/bf16 only)
    report: object = None  # stitchkit's formats.LoadReport of the file, where it read one

    @property
    def ok(self) -> bool:
        return (
            self.f_error <= self.tolerance
            and self.x_hat_error <= self.tolerance
            and self.flipped <= MAX_FLIPPED
        )

    def line(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        return (
            f"{verdict:8s} {self.name:28s} {self.format:20s} vs {self.library}: "
            f"f {self.f_error:.1e}, x_hat {self.x_hat_error:.1e} (tolerance {self.tolerance:.0e})"
            + (f", {self.flipped:.1%} tokens flipped" if self.flipped else "")
        )


@torch.no_grad()
def outputs(sae: SAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    xn, mu, scale = normalize_input(x.to(sae.dtype), sae.input_norm)
    own = sae.in_normalized_space() if sae.input_norm != "none" else sae
    f = own.encode(xn)
    x_hat = own.decode(f) * scale + mu
    return {"f": f.float(), "x_hat": x_hat.float()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def compare(
    sae: SAE, ref: dict[str, torch.Tensor], x: torch.Tensor, *, library: str, name: str | None = None
) -> Comparison:
    own = outputs(sae, x)
    f_ref, x_ref = ref["f"].float(), ref["x_hat"].float()
    flipped = 0.0
    f_own, x_own = own["f"], own["x_hat"]
    if sae.dtype in (torch.float16, torch.bfloat16) and f_own.shape == f_ref.shape:
        same = ((f_own != 0) == (f_ref != 0)).all(-1)
        flipped = 1.0 - float(same.float().mean())
        f_own, f_ref, x_own, x_ref = f_own[same], f_ref[same], x_own[same], x_ref[same]
    return Comparison(
        name=name or sae.name,
        library=library,
        format=sae.source_format or "in memory",
        f_error=_rel(f_own, f_ref),
        x_hat_error=_rel(x_own, x_ref),
        tolerance=TOLERANCE.get(sae.dtype, 1e-4),
        flipped=flipped,
        report=sae.load_report,
    )


def check_written(out: str | Path) -> tuple[dict, list[tuple[str, Comparison | str]]]:
    """Read every SAE of a peer's manifest under `out`; (manifest, [(name, Comparison or the error
    check's verdict)]). An SAE the manifest expects stitchkit to refuse passes when it is refused
    with that error class. A field or tensor the writer saved that the reader neither read nor
    names as not needed (its format's NOT_READ) is a mismatch too."""
    import os

    from safetensors.torch import load_file

    from ..sae.io import load_sae

    out = Path(out)
    manifest = json.loads((out / "manifest.json").read_text())
    x = load_file(str(out / "x.safetensors"))["x"]
    rows: list[tuple[str, Comparison | str]] = []
    env_before = {k: os.environ.get(k) for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    os.environ["HF_HUB_CACHE"], os.environ["HF_HUB_OFFLINE"] = str(out / "hub"), "1"
    try:
        for row in manifest["saes"]:
            src = row["path"] if row["path"].startswith("hf://") else str(out / row["path"])
            if row.get("expect_error"):
                try:
                    load_sae(src, **row.get("load", {}))
                    rows.append((row["name"], f"MISMATCH: loaded, expected {row['expect_error']}"))
                except StitchkitError as e:
                    ok = type(e).__name__ == row["expect_error"]
                    rows.append(
                        (row["name"], f"{'ok' if ok else 'MISMATCH'}: refused ({type(e).__name__}: {e})")
                    )
                continue
            sae = load_sae(src, **row.get("load", {}))
            ref = load_file(str(out / row["ref"]))
            rows.append((row["name"], compare(sae, ref, x, library=manifest["library"], name=row["name"])))
            report = sae.load_report
            if report is not None and (report.unknown_fields or report.unknown_tensors):
                # the writer saved something this reader neither reads nor names as not needed
                unread = f"fields {report.unknown_fields}, tensors {report.unknown_tensors}"
                rows.append((row["name"], f"MISMATCH: not read: {unread}"))
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return manifest, rows


# The PyPI distribution of each library, for the hint when an interpreter lacks it.
DISTRIBUTIONS = {
    "saelens": "sae-lens",
    "sparsify": "eai-sparsify",
    "dictionary_learning": "dictionary-learning",
    "llamascopium": "llamascopium",
}


def run_worker(python: str, *args: str) -> None:
    proc = subprocess.run([python, str(WORKER), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        hint = ""
        if "No module named" in tail[0] and args[1] in DISTRIBUTIONS:
            hint = (
                f" (install {DISTRIBUTIONS[args[1]]} in its own environment, as "
                "scripts/check_peers.py does under ~/.cache/stitchkit/peers, and pass that "
                "environment's interpreter: --python ENV/bin/python)"
            )
        raise StitchkitError(f"{python} {WORKER.name} {args[0]} {args[1]}: failed: {tail[0][:300]}{hint}")


def verify(
    source: str, *, library: str, python: str | None = None, tokens: int = 256, seed: int = 0
) -> Comparison:
    """Load `source` with stitchkit and with `library` (run by the interpreter `python`, default
    this one), encode the same random batch with both, and compare."""
    from safetensors.torch import load_file, save_file

    from ..sae.io import load_sae
    from ..sae.sources import resolve

    if library not in LIBRARIES:
        raise InvalidArgumentError(f"verify: library must be one of {LIBRARIES}, got {library!r}")
    sae = load_sae(source)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(tokens, sae.d_in, generator=gen) * 2).float()
    with tempfile.TemporaryDirectory() as tmp:
        tokens_file, ref_file = f"{tmp}/x.safetensors", f"{tmp}/ref.safetensors"
        save_file({"x": x}, tokens_file)
        path = resolve(source).path  # the local files, also for hf:// and saelens: sources
        if library == "dictionary_learning" and path.is_dir():
            path = path / "ae.pt"
        run_worker(python or sys.executable, "load", library, str(path), tokens_file, ref_file)
        ref = load_file(ref_file)
    return compare(sae, ref, x, library=library, name=str(source))


def from_module(obj, *, name: str | None = None) -> SAE:
    """A stitchkit SAE (a copy of the weights) from an SAE a peer library has loaded: a SAELens
    SAE, a sparsify SparseCoder, a dictionary_learning dictionary or a llamascopium
    SparseAutoEncoder. Recognised by class name and attributes, without importing the library."""
    import os

    from safetensors.torch import save_file

    from ..sae.io import load_sae

    cls = type(obj).__name__
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / (name or cls)
        d.mkdir()
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in obj.state_dict().items()
            if isinstance(v, torch.Tensor)
        }
        if hasattr(obj, "cfg") and hasattr(obj.cfg, "to_dict") and hasattr(obj.cfg, "d_sae"):  # SAELens
            (d / "cfg.json").write_text(json.dumps(_jsonable(obj.cfg.to_dict())))
            save_file(state, str(d / "sae_weights.safetensors"))
        elif hasattr(obj, "cfg") and hasattr(obj, "encoder") and hasattr(obj, "num_latents"):  # sparsify
            cfg = {**_jsonable(obj.cfg.to_dict()), "d_in": obj.d_in}
            (d / "cfg.json").write_text(json.dumps(cfg))
            save_file(state, str(d / "sae.safetensors"))
        elif hasattr(obj, "full_state_dict") and hasattr(getattr(obj, "cfg", None), "sae_type"):
            # llamascopium: its config and the state dict with the dataset norms, as it saves them
            (d / "config.json").write_text(json.dumps(_jsonable(obj.cfg.model_dump())))
            full = {k: v.detach().cpu().contiguous() for k, v in obj.full_state_dict().items()}
            save_file(full, str(d / "sae_weights.safetensors"))
        elif hasattr(obj, "dict_size") and hasattr(obj, "activation_dim"):  # dictionary_learning
            torch.save({k: v for k, v in obj.state_dict().items()}, d / "ae.pt")
            (d / "config.json").write_text(json.dumps({"trainer": {"dict_class": cls}}))
        else:
            raise UnsupportedError(
                f"SAE.from_module: {cls} is not a SAELens SAE, a sparsify SparseCoder, a "
                "dictionary_learning dictionary or a llamascopium SparseAutoEncoder"
            )
        sae = load_sae(os.fspath(d), name=name or getattr(obj, "name", None) or cls)
    return sae


def _jsonable(d):
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, (str, int, float, bool)) or d is None:
        return d
    return str(d)
