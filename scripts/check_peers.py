#!/usr/bin/env python3
"""stitchkit against the libraries that write SAE files, each in its own virtual environment.

For each peer (sae-lens, eai-sparsify, dictionary-learning, llamascopium; pinned below) this makes or reuses a
virtual environment (cached under $STITCHKIT_PEERS_DIR, default ~/.cache/stitchkit/peers, keyed by
the requirements, so an unchanged one is reused between runs), then
  1. the peer's own code writes SAEs of every architecture it has (random weights) and its own
     outputs on a random batch (stitchkit/peers/worker.py write); Gemma Scope and Llama Scope
     files are laid out in a local hub cache and read by SAELens' own loaders;
  2. stitchkit reads each file (hf:// sources offline from that cache) and compares encode and
     forward (stitchkit.peers.check_written); refused architectures must be refused;
  3. the peer converts its loaded objects with SAE.from_module (stitchkit on PYTHONPATH);
  4. for SAELens: stitchkit writes a matrix of SAEs (every activation x dtype x
     apply_b_dec_to_input x hook name x input norm) and SAELens itself loads them back.
Exits 1 on any mismatch. Run by `python3 dev.py test` (so by .ci/run); STITCHKIT_SKIP_PEERS=1
skips it. Writes a summary to --json if given.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TORCH = "torch==2.13.0"
PEERS = {
    "saelens": ["sae-lens==6.54.12"],
    "sparsify": ["eai-sparsify==1.3.3"],
    "dictionary_learning": ["dictionary-learning==0.1.0"],
    # OpenMOSS' lm_saes under its PyPI name; it needs TransformerLens below 4 (as SAELens does).
    "llamascopium": ["llamascopium==2.0.0b34", "transformer-lens<4"],
}
WORKER = ROOT / "stitchkit" / "peers" / "worker.py"


def venv_for(lib: str, cache: Path) -> Path:
    reqs = [TORCH, *PEERS[lib]]
    key = hashlib.sha256(json.dumps([sys.version_info[:2], reqs]).encode()).hexdigest()[:12]
    venv = cache / f"{lib}-{key}"
    py = venv / "bin" / "python"
    if (venv / ".ready").exists():
        return py
    t0 = time.time()
    print(f"check_peers: making {venv} ({' '.join(reqs)})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for step in ([*pip, TORCH], [*pip, *reqs]):  # torch first alone: the CPU build on this disk
        proc = subprocess.run(step, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"check_peers: {' '.join(step[3:])} failed in {venv}:\n{proc.stderr[-3000:]}")
    # PyPI's torchvision fails to import beside torch 2.13's CPU build, and breaks transformers.
    subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], capture_output=True)
    (venv / ".ready").write_text(" ".join(reqs))
    print(f"check_peers: {lib} environment ready in {time.time() - t0:.0f} s", flush=True)
    return py


def peer_env() -> dict:
    return {**os.environ, "SPARSIFY_DISABLE_TRITON": "1", "PYTHONPATH": str(ROOT)}


def run(py: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(py), str(WORKER), *args], env=peer_env(), capture_output=True, text=True)


def write_matrix(out: Path) -> None:
    """stitchkit writes SAEs of every kind it holds; a manifest for the SAELens readback."""
    import torch
    from safetensors.torch import save_file

    import stitchkit as sk

    gen = torch.Generator().manual_seed(1)
    rows = []
    kinds = itertools.product(
        ("relu", "topk", "batchtopk", "jumprelu"),
        (torch.float32, torch.float64, torch.float16, torch.bfloat16),
        (True, False),
        (None, "blocks.0.hook_resid_pre"),
        ("none", "layer_norm", "unit_norm"),
    )
    for act, dtype, b_dec_in, hook, norm in kinds:
        if norm != "none" and (dtype != torch.float32 or hook is None):
            continue  # the norms once each, in fp32 with a hook
        k = 4 if act in ("topk", "batchtopk") else None
        s = sk.SAE(
            16,
            40,
            act,
            k=k,
            dtype=dtype,
            apply_b_dec_to_input=b_dec_in,
            hook_name=hook,
            generator=gen,
            input_norm=norm,
        )
        with torch.no_grad():
            s.b_enc.copy_(torch.randn(40, generator=gen) * 0.2)
            s.b_dec.copy_(torch.randn(16, generator=gen) * 0.2)
            if s.threshold is not None:
                s.threshold.copy_((torch.rand(s.threshold.shape, generator=gen) * 0.3).to(dtype))
        name = f"{act}-{str(dtype)[6:]}-bdec{int(b_dec_in)}-{'hook' if hook else 'nohook'}-{norm}"
        sk.save_sae(s, out / name)
        rows.append({"name": name, "path": name, "load": {}})
    x = torch.randn(64, 16, generator=gen) * 2 + 0.5
    save_file({"x": x}, str(out / "x.safetensors"))
    (out / "manifest.json").write_text(json.dumps({"library": "saelens", "saes": rows}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(PEERS), action="append", help="check only these peers")
    ap.add_argument("--json", help="write a summary here")
    args = ap.parse_args()
    if os.environ.get("STITCHKIT_SKIP_PEERS") == "1":
        print("check_peers: skipped (STITCHKIT_SKIP_PEERS=1)")
        return 0
    from stitchkit.peers import Comparison, check_written

    cache = Path(os.environ.get("STITCHKIT_PEERS_DIR", Path.home() / ".cache" / "stitchkit" / "peers"))
    cache.mkdir(parents=True, exist_ok=True)
    failures, summary = 0, {"peers": {}}
    t_start = time.time()

    def report(title: str, rows) -> None:
        nonlocal failures
        for name, r in rows:
            ok = r.ok if isinstance(r, Comparison) else r.startswith("ok")
            failures += not ok
            print(
                "  "
                + (
                    r.line()
                    if isinstance(r, Comparison)
                    else f"{'ok' if ok else 'MISMATCH':8s} {name:28s} {r}"
                )
            )
        summary["peers"].setdefault(title, []).extend(
            {
                "name": n,
                "ok": (r.ok if isinstance(r, Comparison) else r.startswith("ok")),
                **(
                    {"f_error": r.f_error, "x_hat_error": r.x_hat_error, "format": r.format}
                    if isinstance(r, Comparison)
                    else {"verdict": r}
                ),
            }
            for n, r in rows
        )

    for lib in args.only or sorted(PEERS):
        py = venv_for(lib, cache)
        with tempfile.TemporaryDirectory(prefix=f"peers-{lib}-") as tmp:
            out = Path(tmp) / "written"
            proc = run(py, "write", lib, str(out))
            if proc.returncode != 0:
                print(f"check_peers: {lib} failed to write its SAEs:\n{proc.stderr[-3000:]}")
                failures += 1
                continue
            manifest, rows = check_written(out)
            print(f"check_peers: {lib} {manifest['version']} wrote {len(rows)} SAEs; stitchkit reads them:")
            report(f"{lib} {manifest['version']}: stitchkit reads", rows)
            proc = run(py, "from-module", lib, str(out))
            print(f"check_peers: {lib} objects through SAE.from_module:")
            print("\n".join("  " + line for line in proc.stdout.strip().splitlines()))
            if proc.returncode != 0:
                print(proc.stderr[-2000:])
                failures += 1
            summary["peers"][f"{lib}: from_module"] = proc.returncode == 0
            if lib == "saelens":
                back = Path(tmp) / "readback"
                write_matrix(back)
                proc = run(py, "refs", lib, str(back))
                if proc.returncode != 0:
                    print(
                        f"check_peers: SAELens could not load a stitchkit-written SAE:\n{proc.stderr[-3000:]}"
                    )
                    failures += 1
                    continue
                manifest, rows = check_written(back)
                print(f"check_peers: SAELens loads {len(rows)} stitchkit-written SAEs back:")
                report("saelens reads stitchkit", rows)
    summary["seconds"] = round(time.time() - t_start, 1)
    summary["failures"] = failures
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print(f"check_peers: {'ok' if failures == 0 else f'{failures} MISMATCHES'} in {summary['seconds']} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
