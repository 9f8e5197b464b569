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


def _pick_rows(rows: list[dict], limit: int) -> list[dict]:
    """At most `limit` rows: the first two, evenly spaced middle ones, and the last."""
    if len(rows) <= limit:
        return rows
    keep = sorted({0, 1} | {round(i * (len(rows) - 1) / (limit - 2)) for i in range(limit - 1)})
    return [rows[i] for i in keep]


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from . import (
        activation_similarity,
        active_inactive_mse,
        classify,
        delta_table,
        evaluate,
        frankenstein,
        greedy_selection,
        insert,
        insertion_curve,
        interpolate,
        load_sae,
        make_toy,
        marginal_delta_mse,
        max_cosine,
        retrain_decoder,
        save_sae,
        similarity_agreement,
        swap,
        swap_delta,
        train_sae,
    )
    from .io import atomic_write_json

    torch.manual_seed(args.seed)
    out = Path(args.out)
    toy = make_toy(
        d_in=args.d_in,
        n_parents=args.d_in // 2,
        children_per_parent=2,
        n_rare=args.d_in // 2,
        child_cosine=0.8,
        p_parent=0.05,
        p_rare=0.01,
        seed=args.seed,
    )
    widths = [args.d_in * 2**i // 2 for i in range(args.n_widths)]
    steps = -(-args.train_tokens // args.batch_size)
    print(
        f"stitchkit demo on toy activations: d_in={args.d_in}, {args.d_in // 2} concepts that split "
        f"into 2 children each, {args.d_in // 2} rare directions.\nTraining relu SAEs of widths "
        f"{widths} on {args.train_tokens} tokens each; measuring on {args.eval_tokens} held-out tokens."
    )
    held = toy.sample(args.eval_tokens, seed=10_000 + args.seed)
    rows, saes = [], []
    for width in widths:
        t0 = time.perf_counter()
        with _bar(steps, f"train d_sae={width}") as bar:
            sae = train_sae(
                toy.batches(args.train_tokens, args.batch_size, seed=1),
                args.d_in,
                width,
                l1_coefficient=args.l1,
                lr=args.lr,
                n_steps=steps,
                seed=args.seed * 1000 + width,  # one seed per width: no shared initial rows
                name=f"toy-relu-{width}",
                hook_name="toy",
                progress=lambda step, loss: bar.update(1),
            )
        train_s = time.perf_counter() - t0
        path = save_sae(sae, out / "saes" / sae.name)
        loaded = load_sae(path)
        if not torch.equal(loaded(held[:256]), sae(held[:256])):
            print(f"error: {path} did not load back to the same SAE", file=sys.stderr)
            return 1
        m = evaluate(loaded, held)
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
    print("(MSE: squared error summed over d_in, mean over tokens; saved SAEs reloaded bit-exactly)")

    small, large = saes[0], saes[-1]
    t = args.threshold
    print(f"\n== {large.name} against {small.name} (threshold {t}) ==")
    c = classify(small, large, t)
    dmse = marginal_delta_mse(small, large, held)
    table = delta_table(c, dmse)
    print(
        f"{int(c.novel.sum())} novel and {int((~c.novel).sum())} reconstruction features. "
        "Inserting each alone into the small SAE (exact dMSE, one pass):"
    )
    print(_table(table.rows(), [("cls", "class"), ("helps", "dMSE < 0"), ("hurts", "dMSE >= 0")]))
    ai = active_inactive_mse(small, large, held, features=c.novel_features).summary()
    print(
        f"Where a novel feature fires, large - small MSE = {ai['gap_active']:+.4g} "
        f"(elsewhere {ai['gap_inactive']:+.4g}), mean over {ai['n_features']} novel features."
    )

    curves = {}
    for cls, feats in (("novel", c.novel_features), ("reconstruction", c.reconstruction_features)):
        if len(feats):
            order = feats[torch.argsort(c.max_cos[feats], stable=True)]
            curves[cls] = insertion_curve(small, large, order, held, points=4)
    print("Cumulative insertion (in increasing max cosine): MSE after adding k features of each class")
    print(
        _table(
            [
                dict(
                    cls=cls,
                    path=" -> ".join(
                        f"{float(e):.4g} (k={int(n) - small.d_sae})" for n, e in zip(cv.n_features, cv.mse)
                    ),
                )
                for cls, cv in curves.items()
            ],
            [("cls", "class"), ("path", "MSE (k added)")],
        )
    )

    path = interpolate(small, large, held, t)
    sd, sl = swap_delta(small, large, [(g.children, g.parents) for g in path.groups], held)
    if len(path.groups):
        print(
            f"{len(path.groups)} swap groups; applied alone, dMSE > 0 for {int((sd > 0).sum())} and "
            f"dL0 < 0 for {int((sl < 0).sum())} of them (mean dMSE {float(sd.mean()):+.4g}, "
            f"mean dL0 {float(sl.mean()):+.4g})."
        )
    prow = [dict(r, label=lab) for r, lab in zip(path.metrics.rows(), path.labels)]
    lm = evaluate(large, held)
    print("\nInterpolation path (small -> +novel -> swaps in decreasing cosine):")
    shown = _pick_rows(prow, args.path_rows)
    shown.append(
        dict(
            step="-",
            label=f"{large.name} itself",
            n_features=large.d_sae,
            mse=lm.mse,
            normalized_mse=lm.normalized_mse,
            l0=lm.l0,
        )
    )
    print(
        _table(
            shown,
            [
                ("step", "step"),
                ("label", "what"),
                ("n_features", "features"),
                ("mse", "MSE"),
                ("normalized_mse", "norm. MSE"),
                ("l0", "L0"),
            ],
        )
    )

    # The same steps as SAEs (provenance per feature), saved: small + every novel feature, and the
    # small SAE with the swap that lowers L0 most.
    plus_novel = insert(small, large, c.novel_features, name=f"{small.name}+novel")
    check = evaluate(plus_novel, held).mse
    save_sae(plus_novel, out / "saes" / plus_novel.name)
    print(
        f"Built {plus_novel.name} ({plus_novel.d_sae} features): MSE {check:.4g}, path step 1 says "
        f"{float(path.metrics.mse[1]):.4g}."
    )
    if len(path.groups):
        best = path.groups[int(torch.argmin(sl))]
        swapped = swap(small, large, best, name=f"{small.name}~swap")
        save_sae(swapped, out / "saes" / swapped.name)
        sm = evaluate(swapped, held)
        print(
            f"Built {swapped.name}: parents {best.parents.tolist()} -> children {best.children.tolist()}, "
            f"MSE {sm.mse:.4g}, L0 {sm.l0:.4g}."
        )

    sel = greedy_selection(small, large, held, threshold=t)
    k = min(len(sel.greedy), len(sel.cosine))
    if k:
        at = sel.at(k)
        print(
            f"\nGreedy exact-marginal selection vs the cosine rule, {k} features each: MSE "
            f"{at['greedy']:.4g} vs {at['cosine']:.4g} (small alone {sel.base_mse:.4g})."
        )
    agree = similarity_agreement(c, activation_similarity(large, small, held))
    print(
        f"Activation similarity vs decoder cosine: same nearest small feature for "
        f"{agree.same_nearest:.0%} of reconstruction features, same class for "
        f"{agree.class_agreement:.0%}, Spearman {agree.spearman:.2f} ({agree.n_live} live features)."
    )

    print("\n== Frankenstein assembly (decoder retrained with Adam, encoder frozen) ==")
    train_acts = lambda: toy.batches(args.retrain_tokens, args.batch_size, seed=3)  # noqa: E731
    fr = frankenstein(
        saes,
        train_acts,
        t,
        retrain="adam",
        lr=args.retrain_lr,
        eval_acts=held,
        checkpoint_dir=out / "frankenstein",
        progress=lambda msg: None,
    )
    print(
        _table(
            [vars(s) for s in fr.stages],
            [
                ("stage", "stage"),
                ("source", "added from"),
                ("n_added", "added"),
                ("n_features", "features"),
                ("mse_before", "MSE before retrain"),
                ("mse", "MSE"),
                ("l0", "L0"),
                ("reference", "nearest original"),
                ("reference_mse", "its MSE"),
                ("reference_l0", "its L0"),
            ],
        )
    )
    save_sae(fr.sae, out / "saes" / "frankenstein")
    last = fr.stages[-1]
    if last.n_added:
        ls = retrain_decoder(fr.sae, train_acts, method="lstsq")
        ls_mse = evaluate(ls.sae, held).mse
        print(
            f"Least-squares refit of the final decoder: MSE {ls_mse:.4g} in {ls.seconds:.2f} s, vs Adam's "
            f"{last.mse:.4g} in {last.retrain_seconds:.2f} s (last stage)."
        )
    atomic_write_json(
        dict(
            family=rows,
            delta_table=vars(table),
            interpolation=prow,
            frankenstein=[vars(s) for s in fr.stages],
        ),
        out / "results.json",
    )
    print(f"\nwrote {out / 'results.json'} and the SAEs under {out / 'saes'}")
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
    d.add_argument("--d-in", type=int, default=32)
    d.add_argument("--n-widths", type=int, default=3, help="widths d_in*2^i/2 for i=0..n-1")
    d.add_argument("--train-tokens", type=int, default=600_000)
    d.add_argument("--eval-tokens", type=int, default=20_000)
    d.add_argument("--retrain-tokens", type=int, default=200_000)
    d.add_argument("--batch-size", type=int, default=512)
    d.add_argument("--l1", type=float, default=0.2)
    d.add_argument("--lr", type=float, default=3e-3)
    d.add_argument("--retrain-lr", type=float, default=1e-3)
    d.add_argument("--path-rows", type=int, default=12, help="interpolation rows to print")
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
