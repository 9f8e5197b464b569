"""The `stitchkit` command line. The only place that prints or draws progress bars."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr)


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = [title for _, title in columns]
    body = [[row[key] for key, _ in columns] for row in rows]
    cells = [head] + [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r] for r in body]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from . import evaluate, load_sae, make_toy, max_cosine, save_sae, train_sae

    torch.manual_seed(args.seed)
    out = Path(args.out)
    toy = make_toy(d_in=args.d_in, seed=args.seed)
    widths = [args.d_in * 2**i for i in range(1, args.n_widths + 1)]
    print(
        f"stitchkit demo: toy activations, d_in={args.d_in}, {toy.n_features} ground-truth "
        f"features; training relu SAEs of widths {widths} on {args.train_tokens} tokens each"
    )
    rows, saes = [], []
    for width in widths:
        steps = -(-args.train_tokens // args.batch_size)
        t0 = time.perf_counter()
        with _bar(steps, f"train d_sae={width}") as bar:
            sae = train_sae(
                toy.batches(args.train_tokens, args.batch_size, seed=1),
                args.d_in,
                width,
                l1_coefficient=args.l1,
                lr=args.lr,
                seed=args.seed * 1000 + width,  # one seed per width: no shared initial rows
                name=f"toy-relu-{width}",
                hook_name="toy",
                progress=lambda step, loss: bar.update(1),
            )
        train_s = time.perf_counter() - t0
        path = save_sae(sae, out / "saes" / sae.name)
        loaded = load_sae(path)
        x = toy.sample(256, seed=7)
        same = torch.equal(loaded(x), sae(x))
        if not same:
            print(f"error: {path} did not load back to the same SAE", file=sys.stderr)
            return 1
        m = evaluate(loaded, toy.batches(args.eval_tokens, args.batch_size, seed=2))
        # How well the SAE recovers the ground truth: best cosine of each true direction.
        recovered = max_cosine(toy.directions, loaded.W_dec.detach()).values
        rows.append(
            dict(
                width=width,
                mse=m.mse,
                nmse=m.normalized_mse,
                l0=m.l0,
                dead=m.dead_fraction,
                gt=float((recovered > 0.9).float().mean()),
                secs=train_s,
                path=str(path),
            )
        )
        saes.append(loaded)
    print(
        _table(
            rows,
            [
                ("width", "d_sae"),
                ("mse", "MSE"),
                ("nmse", "norm. MSE"),
                ("l0", "L0"),
                ("dead", "dead frac"),
                ("gt", "GT dirs cos>0.9"),
                ("secs", "train s"),
                ("path", "saved to"),
            ],
        )
    )
    print(
        f"(MSE: squared error summed over d_in, mean over {args.eval_tokens} held-out tokens; "
        "saved SAEs reloaded bit-exactly)"
    )

    print("\nmax decoder cosine of each larger SAE's features against the next smaller SAE:")
    cmp_rows = []
    for small, large in zip(saes, saes[1:]):
        cos = max_cosine(large, small).values
        cmp_rows.append(
            dict(
                pair=f"{large.d_sae} vs {small.d_sae}",
                novel=int((cos <= args.threshold).sum()),
                recon=int((cos > args.threshold).sum()),
                median=float(cos.median()),
            )
        )
    print(
        _table(
            cmp_rows,
            [
                ("pair", "large vs small"),
                ("novel", f"novel (<= {args.threshold})"),
                ("recon", "reconstruction"),
                ("median", "median max cos"),
            ],
        )
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from . import load_sae, max_cosine, novel_fraction_sweep

    large, small = load_sae(args.large, device=args.device), load_sae(args.small, device=args.device)
    t0 = time.perf_counter()
    values, indices = max_cosine(large, small, backend=args.backend, precision=args.precision)
    secs = time.perf_counter() - t0
    thresholds, novel = novel_fraction_sweep(values)
    print(f"{large.name} ({large.d_sae}) vs {small.name} ({small.d_sae}): max cosine in {secs:.3f} s")
    print(
        _table(
            [dict(t=float(t), n=int(n), f=float(n) / max(large.d_sae, 1)) for t, n in zip(thresholds, novel)],
            [("t", "threshold"), ("n", "novel"), ("f", "novel frac")],
        )
    )
    if args.out:
        from .io import atomic_torch_save

        atomic_torch_save({"max_cos": values.cpu(), "argmax": indices.cpu()}, Path(args.out))
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stitchkit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train, save, reload, evaluate and compare SAEs on the built-in default")
    d.add_argument("--out", default="stitchkit-out", help="output directory (default: %(default)s)")
    d.add_argument("--d-in", type=int, default=64)
    d.add_argument("--n-widths", type=int, default=3, help="widths d_in*2^i for i=1..n")
    d.add_argument("--train-tokens", type=int, default=400_000)
    d.add_argument("--eval-tokens", type=int, default=50_000)
    d.add_argument("--batch-size", type=int, default=1024)
    d.add_argument("--l1", type=float, default=0.1)
    d.add_argument("--lr", type=float, default=1e-2)
    d.add_argument("--threshold", type=float, default=0.7)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)
    c = sub.add_parser("compare", help="max decoder cosine of a large SAE's features against a small SAE")
    c.add_argument("large", help="SAE directory (SAELens layout)")
    c.add_argument("small", help="SAE directory (SAELens layout)")
    c.add_argument("--backend", default="auto", choices=["auto", "torch", "faiss", "triton"])
    c.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    c.add_argument("--device", default="cpu")
    c.add_argument("--out", help="write max_cos/argmax to this .pt file")
    c.set_defaults(func=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import StitchkitError

    try:
        return args.func(args)
    except StitchkitError as e:
        print(f"stitchkit: error: {e}", file=sys.stderr)
        return 2
