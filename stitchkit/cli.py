"""The `stitchkit` command line. The only place that prints or draws progress bars."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import InvalidArgumentError, StitchkitError
from .report import (
    DELTA_COLUMNS,
    DOWNSTREAM_COLUMNS,
    FAMILY_COLUMNS,
    FRANKENSTEIN_COLUMNS,
    PAIR_COLUMNS,
    PATH_COLUMNS,
)


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


def run_study(family, held, train_acts, out: Path, args, res: dict) -> dict:
    """Every experiment of the stitching study on a trained family (sorted by width), printing as
    it goes and filling `res` (the results.json / report.md content)."""
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
        marginal_delta_mse,
        retrain_decoder,
        save_sae,
        similarity_agreement,
        swap,
        swap_delta,
    )
    from .io import atomic_write_json

    t = args.threshold
    res["pairs"] = []
    for a, b in zip(family, family[1:]):
        c = classify(a, b, t)
        res["pairs"].append(
            dict(
                pair=f"{b.d_sae} vs {a.d_sae}",
                novel=int(c.novel.sum()),
                novel_fraction=float(c.novel.float().mean()),
                median_max_cos=float(c.max_cos.median()),
            )
        )
    print("\nNovel features of each SAE against the next smaller one:")
    print(
        _table(
            res["pairs"],
            PAIR_COLUMNS,
        )
    )

    small, large = family[args.small], family[args.large]
    print(f"\n== {large.name} against {small.name} (threshold {t}) ==")
    c = classify(small, large, t)
    dmse = marginal_delta_mse(small, large, held)
    table = delta_table(c, dmse)
    res["delta_table"] = table.rows()
    res["scatter"] = dict(
        max_cos=c.max_cos.tolist(),
        delta_mse=dmse.tolist(),
        novel=c.novel.tolist(),
        threshold=t,
        title=f"{large.name} features inserted into {small.name}",
    )
    print(
        f"{int(c.novel.sum())} novel and {int((~c.novel).sum())} reconstruction features. "
        "Inserting each alone into the small SAE (exact dMSE, one pass):"
    )
    print(_table(res["delta_table"], DELTA_COLUMNS))
    if len(c.novel_features):
        ai = active_inactive_mse(small, large, held, features=c.novel_features).summary()
        res["active_inactive"] = [
            dict(
                what="tokens where the novel feature fires",
                small=ai["small_active"],
                large=ai["large_active"],
                gap=ai["gap_active"],
            ),
            dict(
                what="other tokens",
                small=ai["small_inactive"],
                large=ai["large_inactive"],
                gap=ai["gap_inactive"],
            ),
        ]
        print(
            f"Where a novel feature fires, large - small MSE = {ai['gap_active']:+.4g} "
            f"(elsewhere {ai['gap_inactive']:+.4g}), mean over {ai['n_features']} novel features."
        )

    res["insertion_curves"] = {}
    for cls, feats in (("novel", c.novel_features), ("reconstruction", c.reconstruction_features)):
        if len(feats):
            order = feats[torch.argsort(c.max_cos[feats], stable=True)]
            cv = insertion_curve(small, large, order, held, points=args.curve_points)
            res["insertion_curves"][cls] = dict(
                k=[int(n) - small.d_sae for n in cv.n_features], mse=cv.mse.tolist()
            )
    print("Cumulative insertion (in increasing max cosine): MSE after adding k features of each class")
    print(
        _table(
            [
                dict(
                    cls=cls,
                    path=" -> ".join(
                        f"{e:.4g} (k={k})"
                        for k, e in list(zip(cv["k"], cv["mse"]))[:: max(1, len(cv["k"]) // 4)]
                    ),
                )
                for cls, cv in res["insertion_curves"].items()
            ],
            [("cls", "class"), ("path", "MSE (k added)")],
        )
    )

    path = interpolate(small, large, held, t)
    sd, sl = swap_delta(small, large, [(g.children, g.parents) for g in path.groups], held)
    if len(path.groups):
        msg = (
            f"{len(path.groups)} swap groups; applied alone, dMSE > 0 for {int((sd > 0).sum())} and "
            f"dL0 < 0 for {int((sl < 0).sum())} of them (mean dMSE {float(sd.mean()):+.4g}, "
            f"mean dL0 {float(sl.mean()):+.4g})."
        )
        print(msg)
        res.setdefault("notes", {})["interpolation_shown"] = msg
    res["interpolation"] = [dict(r, label=lab) for r, lab in zip(path.metrics.rows(), path.labels)]
    lm = evaluate(large, held)
    shown = _pick_rows(res["interpolation"], args.path_rows)
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
    res["interpolation_shown"] = shown
    print("\nInterpolation path (small -> +novel -> swaps in decreasing cosine):")
    print(
        _table(
            shown,
            PATH_COLUMNS,
        )
    )

    # The same steps as SAEs (provenance per feature), saved: small + every novel feature, and the
    # small SAE with the swap that lowers L0 most.
    plus_novel = insert(small, large, c.novel_features, name=f"{small.name}+novel")
    save_sae(plus_novel, out / "saes" / plus_novel.name)
    print(
        f"Built {plus_novel.name} ({plus_novel.d_sae} features): MSE {evaluate(plus_novel, held).mse:.4g}, "
        f"path step 1 says {float(path.metrics.mse[1]):.4g}."
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

    sel = greedy_selection(
        small, large, held, threshold=t, candidates=c.novel_features if args.greedy_novel_only else None
    )
    k = min(len(sel.greedy), len(sel.cosine))
    if k:
        at = sel.at(k)
        res["selection"] = [dict(n=at["n"], greedy=at["greedy"], cosine=at["cosine"], base=sel.base_mse)]
        print(
            f"\nGreedy exact-marginal selection vs the cosine rule, {k} features each: MSE "
            f"{at['greedy']:.4g} vs {at['cosine']:.4g} (small alone {sel.base_mse:.4g})."
        )
    agree = similarity_agreement(c, activation_similarity(large, small, held))
    res["agreement"] = vars(agree)
    msg = (
        f"Activation similarity vs decoder cosine: same nearest small feature for "
        f"{agree.same_nearest:.0%} of reconstruction features, same class for "
        f"{agree.class_agreement:.0%}, Spearman {agree.spearman:.2f} ({agree.n_live} live features)."
    )
    print(msg)
    res.setdefault("notes", {})["selection"] = msg

    print("\n== Frankenstein assembly (decoder retrained with Adam, encoder frozen) ==")
    fr = frankenstein(
        family,
        train_acts,
        t,
        retrain="adam",
        lr=args.retrain_lr,
        eval_acts=held,
        checkpoint_dir=out / "frankenstein",
        progress=lambda msg: print("  " + msg, file=sys.stderr),
    )
    res["frankenstein"] = [vars(st) for st in fr.stages]
    print(
        _table(
            res["frankenstein"],
            FRANKENSTEIN_COLUMNS,
        )
    )
    fr.sae.name = "frankenstein"
    save_sae(fr.sae, out / "saes" / "frankenstein")
    last = fr.stages[-1]
    if last.n_added:
        ls = retrain_decoder(fr.sae, train_acts, method="lstsq")
        ls_mse = evaluate(ls.sae, held).mse
        res["refit"] = [
            dict(method="least squares", mse=ls_mse, seconds=ls.seconds),
            dict(method="Adam (1 epoch)", mse=last.mse, seconds=last.retrain_seconds),
        ]
        print(
            f"Least-squares refit of the final decoder: MSE {ls_mse:.4g} in {ls.seconds:.2f} s, vs Adam's "
            f"{last.mse:.4g} in {last.retrain_seconds:.2f} s (last stage)."
        )
    res["_frankenstein_sae"] = fr.sae
    atomic_write_json({k: v for k, v in res.items() if not k.startswith("_")}, out / "results.json")
    return res


def _family_progress(steps_of):
    """A train_family progress callback drawing one bar per width, and the dict it fills with each
    trained width's seconds (widths loaded from disk are not trained and do not appear)."""
    bars, started, seconds = {}, {}, {}

    def progress(width, step, loss):
        if width not in bars:
            bars[width] = _bar(steps_of(width), f"train d_sae={width}")
            started[width] = time.perf_counter()
        bars[width].update(1)
        if step == steps_of(width):
            bars[width].close()
            seconds[width] = time.perf_counter() - started[width]

    return progress, seconds


def _family_rows(family, held, train_s: dict) -> list[dict]:
    from . import evaluate

    rows = []
    for sae in family:
        m = evaluate(sae, held)
        rows.append(
            dict(
                width=sae.d_sae,
                mse=m.mse,
                normalized_mse=m.normalized_mse,
                l0=m.l0,
                dead_fraction=m.dead_fraction,
                train_s=train_s.get(sae.d_sae, 0.0),
                name=sae.name,
            )
        )
    return rows


def cmd_demo(args: argparse.Namespace) -> int:
    defaults = (
        dict(n_widths=3, batch_size=512, small=0, large=-1)
        if args.toy
        else dict(n_widths=5, batch_size=1024, small=1, large=3)
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not -args.n_widths <= args.small < args.n_widths or not -args.n_widths <= args.large < args.n_widths:
        raise InvalidArgumentError(f"demo: --small/--large must index the {args.n_widths} widths")
    return demo_toy(args) if args.toy else demo_real(args)


def demo_toy(args: argparse.Namespace) -> int:
    import torch

    from . import load_sae, make_toy, max_cosine, save_sae, train_sae

    torch.manual_seed(args.seed)
    out = Path(args.out)
    d_in = args.d_in or 32
    toy = make_toy(
        d_in=d_in,
        n_parents=d_in // 2,
        children_per_parent=2,
        n_rare=d_in // 2,
        child_cosine=0.8,
        p_parent=0.05,
        p_rare=0.01,
        seed=args.seed,
    )
    widths = [d_in * 2**i // 2 for i in range(args.n_widths)]
    steps = -(-args.train_tokens // args.batch_size)
    print(
        f"stitchkit demo on toy activations: d_in={d_in}, {d_in // 2} concepts that split into 2 children "
        f"each, {d_in // 2} rare directions.\nTraining relu SAEs of widths {widths} on {args.train_tokens} "
        f"tokens each; measuring on {args.eval_tokens} held-out tokens."
    )
    held = toy.sample(args.eval_tokens, seed=10_000 + args.seed)
    family, train_s = [], {}
    for width in widths:
        t0 = time.perf_counter()
        with _bar(steps, f"train d_sae={width}") as bar:
            sae = train_sae(
                toy.batches(args.train_tokens, args.batch_size, seed=1),
                d_in,
                width,
                l1_coefficient=args.l1 or 0.2,
                lr=args.lr or 3e-3,
                n_steps=steps,
                seed=args.seed * 1000 + width,
                name=f"toy-relu-{width}",
                hook_name="toy",
                progress=lambda step, loss: bar.update(1),
            )
        train_s[width] = time.perf_counter() - t0
        path = save_sae(sae, out / "saes" / sae.name)
        loaded = load_sae(path)
        if not torch.equal(loaded(held[:256]), sae(held[:256])):
            print(f"error: {path} did not load back to the same SAE", file=sys.stderr)
            return 1
        family.append(loaded)
    rows = _family_rows(family, held, train_s)
    for r, sae in zip(rows, family):
        r["gt"] = float((max_cosine(toy.directions, sae.W_dec.detach()).values > 0.9).float().mean())
    print(_table(rows, FAMILY_COLUMNS + [("gt", "GT dirs cos>0.9")]))
    print("(MSE: squared error summed over d_in, mean over tokens; saved SAEs reloaded bit-exactly)")
    res = dict(setup=dict(model="toy", hook_name="toy", d_in=d_in, widths=widths), family=rows)
    train_acts = lambda: toy.batches(args.retrain_tokens, args.batch_size, seed=3)  # noqa: E731
    run_study(family, held, train_acts, out, args, res)
    print(f"\nwrote {out / 'results.json'} and the SAEs under {out / 'saes'}")
    return 0


def demo_real(args: argparse.Namespace) -> int:
    import torch

    from .activations import ActivationStore, LensSource, builtin_corpus, default_model_dir
    from .evaluate import splice_similarity
    from .report import write_report
    from .train import train_family

    t_start = time.perf_counter()
    out = Path(args.out)
    model_dir = args.model or default_model_dir()
    print(f"stitchkit demo: {model_dir} at {args.hook}; text: docstrings of the Python standard library")
    texts = builtin_corpus()
    n_held = max(1, len(texts) // 10)
    train_texts, held_texts = texts[:-n_held], texts[-n_held:]
    source = LensSource.load(model_dir, args.hook, context_length=args.context, batch_size=args.text_batch)
    d_in = source.d_in
    with _bar(args.tokens, "collect activations") as bar:
        store = ActivationStore.collect(
            source,
            train_texts,
            out / "activations" / "train",
            max_tokens=args.tokens,
            progress=lambda n: bar.update(n - bar.n),
        )
    held_store = ActivationStore.collect(
        source, held_texts, out / "activations" / "held", max_tokens=args.eval_tokens
    )
    held = torch.cat(list(held_store.batches(shuffle=False)))
    print(
        f"{store.n_tokens} training and {len(held)} held-out tokens of width {d_in} "
        f"({time.perf_counter() - t_start:.0f} s)"
    )

    widths = [d_in * 2**i for i in range(args.n_widths)]

    def steps_for(width: int) -> int:  # wider SAEs need longer: x sqrt(width / 4 d_in) beyond 4 d_in
        return round(args.train_steps * max(1.0, width / (4 * d_in)) ** 0.5)

    progress, train_s = _family_progress(steps_for)
    family = train_family(
        lambda seed, steps: store.stream(args.batch_size, steps, seed=seed),
        d_in,
        widths,
        out / "saes",
        n_steps=steps_for,
        l1_coefficient=args.l1 or 1.5,
        lr=args.lr or 2e-3,
        hook_name=args.hook,
        name_prefix=f"{source.model_name}-relu",
        seed=args.seed,
        progress=progress,
    )
    rows = _family_rows(family, held, train_s)
    print(_table(rows, FAMILY_COLUMNS))
    res = dict(
        setup=dict(
            model=source.model_name,
            hook_name=args.hook,
            d_in=d_in,
            training_tokens=store.n_tokens,
            held_out_tokens=len(held),
            widths=widths,
            train_steps={w: steps_for(w) for w in widths},
            batch_size=args.batch_size,
            l1_coefficient=args.l1 or 1.5,
        ),
        family=rows,
    )
    retrain_tokens = min(args.retrain_tokens, store.n_tokens)
    train_acts = lambda: store.batches(args.batch_size * 4, shuffle=False, n_tokens=retrain_tokens)  # noqa: E731
    run_study(family, held, train_acts, out, args, res)

    print("\n== Splicing each SAE into the model: pooled last-layer output, cosine with vs without ==")
    probe = held_texts[: args.splice_texts]
    res["downstream"] = [dict(sae=s.name, **splice_similarity(source, s, probe)) for s in family]
    res["downstream"].append(
        dict(sae="frankenstein", **splice_similarity(source, res.pop("_frankenstein_sae"), probe))
    )
    columns = DOWNSTREAM_COLUMNS if source.is_causal_lm else DOWNSTREAM_COLUMNS[:-1]
    print(_table(res["downstream"], columns))
    from .io import atomic_write_json

    res["setup"]["total_seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(res, out / "results.json")
    report = write_report(res, out)
    print(
        f"\nwrote {report} (with plots), {out / 'results.json'} and the SAEs under {out / 'saes'} "
        f"in {time.perf_counter() - t_start:.0f} s"
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


def _store_acts(path: str, n_tokens: int | None, batch_size: int = 4096):
    from .activations import ActivationStore

    store = ActivationStore(path)
    return store, (lambda: store.batches(batch_size, shuffle=False, n_tokens=n_tokens))


def cmd_collect(args: argparse.Namespace) -> int:
    from .activations import ActivationStore, LensSource, builtin_corpus, default_model_dir, read_text_files

    if args.dataset:
        from .activations import hf_dataset_texts

        texts = hf_dataset_texts(args.dataset, split=args.split, column=args.column)
    else:
        texts = read_text_files(args.texts) if args.texts else builtin_corpus()
    source = LensSource.load(
        args.model or default_model_dir(),
        args.hook,
        context_length=args.context,
        batch_size=args.text_batch,
        device=args.device,
    )
    with _bar(args.tokens, "collect") as bar:
        store = ActivationStore.collect(
            source,
            texts,
            args.out,
            max_tokens=args.tokens,
            shard_tokens=args.shard_tokens,
            progress=lambda n: bar.update(n - bar.n),
        )
    print(f"{store.n_tokens} tokens of {source.model_name} at {args.hook} (d_in {store.d_in}) in {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .activations import ActivationStore
    from .train import train_family

    store = ActivationStore(args.acts)
    progress, _ = _family_progress(lambda width: args.steps)
    family = train_family(
        lambda seed, steps: store.stream(args.batch_size, steps, seed=seed),
        store.d_in,
        args.widths,
        args.out,
        n_steps=args.steps,
        l1_coefficient=args.l1,
        lr=args.lr,
        hook_name=store.manifest["hook_name"],
        name_prefix=args.name,
        seed=args.seed,
        progress=progress,
    )
    _, acts = _store_acts(args.acts, args.eval_tokens)
    print(_table(_family_rows(family, acts, {}), FAMILY_COLUMNS))
    print(f"saved under {args.out}")
    return 0


def cmd_stitch(args: argparse.Namespace) -> int:
    from . import classify, insert, load_sae, save_sae

    base, donor = load_sae(args.base), load_sae(args.donor)
    if args.features:
        feats = [int(f) for f in args.features.split(",")]
    else:
        feats = classify(base, donor, args.threshold).novel_features
    sae = insert(base, donor, feats, name=Path(args.out).name)
    path = save_sae(sae, args.out)
    print(f"{path}: {base.d_sae} features of {base.name} + {len(feats)} of {donor.name} = {sae.d_sae}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from . import interpolate, load_sae
    from .io import atomic_write_json

    small, large = load_sae(args.small), load_sae(args.large)
    _, acts = _store_acts(args.acts, args.tokens)
    path = interpolate(small, large, acts, args.threshold)
    rows = [dict(r, label=lab) for r, lab in zip(path.metrics.rows(), path.labels)]
    print(
        _table(
            _pick_rows(rows, args.rows),
            PATH_COLUMNS,
        )
    )
    if args.out:
        atomic_write_json(dict(interpolation=rows), Path(args.out))
        print(f"wrote {args.out}")
    return 0


def cmd_frankenstein(args: argparse.Namespace) -> int:
    from . import frankenstein, load_sae, save_sae

    family = [load_sae(p) for p in args.saes]
    _, train = _store_acts(args.acts, args.train_tokens, args.batch_size)
    _, held = _store_acts(args.eval_acts or args.acts, args.eval_tokens)
    fr = frankenstein(
        family,
        train,
        args.threshold,
        retrain=None if args.retrain == "none" else args.retrain,
        lr=args.lr,
        eval_acts=held,
        checkpoint_dir=Path(args.out) / "checkpoints",
        progress=lambda msg: print("  " + msg, file=sys.stderr),
    )
    print(
        _table(
            [vars(s) for s in fr.stages],
            FRANKENSTEIN_COLUMNS,
        )
    )
    fr.sae.name = "frankenstein"
    print(f"saved {save_sae(fr.sae, Path(args.out) / 'frankenstein')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from .report import write_report

    path = Path(args.results)
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"report: {path} is not a readable results JSON ({e})") from e
    print(f"wrote {write_report(res, args.out or path.parent)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stitchkit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo",
        help="the whole study on the embedded default model (or --toy): collect, train, stitch, report",
    )
    d.add_argument("--out", default="stitchkit-out", help="output directory (default: %(default)s)")
    d.add_argument("--toy", action="store_true", help="toy activations with known ground truth (seconds)")
    d.add_argument("--model", help="TransformerLens model name or local directory (default: embedded MiniLM)")
    d.add_argument("--hook", default="blocks.3.hook_resid_pre", help="hook name (default: %(default)s)")
    d.add_argument("--context", type=int, default=128, help="tokens per text")
    d.add_argument("--text-batch", type=int, default=32, help="texts per forward pass")
    d.add_argument("--tokens", type=int, default=300_000, help="training tokens to collect")
    d.add_argument(
        "--train-steps",
        type=int,
        default=1000,
        help="Adam steps per SAE up to 4*d_in wide; x sqrt(width/4d_in) beyond",
    )
    d.add_argument("--d-in", type=int, default=None, help="toy only: activation width (default 32)")
    d.add_argument("--n-widths", type=int, default=None, help="widths d_in*2^i (real) or d_in*2^i/2 (toy)")
    d.add_argument("--train-tokens", type=int, default=600_000, help="toy only: tokens per SAE")
    d.add_argument("--eval-tokens", type=int, default=20_000)
    d.add_argument("--retrain-tokens", type=int, default=200_000)
    d.add_argument("--batch-size", type=int, default=None)
    d.add_argument("--l1", type=float, default=None)
    d.add_argument("--lr", type=float, default=None)
    d.add_argument("--retrain-lr", type=float, default=1e-3)
    d.add_argument("--threshold", type=float, default=0.7)
    d.add_argument(
        "--small", type=int, default=None, help="index in the family of the small SAE of the study"
    )
    d.add_argument("--large", type=int, default=None, help="index of the large SAE of the study")
    d.add_argument("--path-rows", type=int, default=12, help="interpolation rows to print")
    d.add_argument("--curve-points", type=int, default=20, help="points on each insertion curve")
    d.add_argument("--splice-texts", type=int, default=64, help="texts for the downstream splice check")
    d.add_argument(
        "--greedy-novel-only", action="store_true", help="greedy selection among novel features only"
    )
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

    k = sub.add_parser("collect", help="cache a model's activations at a hook to an on-disk store")
    k.add_argument("--model", help="TransformerLens model name or local directory (default: embedded MiniLM)")
    k.add_argument("--hook", default="blocks.3.hook_resid_pre")
    k.add_argument("--texts", nargs="*", help="text files (default: the built-in offline corpus)")
    k.add_argument("--dataset", help="a Hugging Face dataset name instead (needs network or a cache)")
    k.add_argument("--split", default="train")
    k.add_argument("--column", default="text")
    k.add_argument("--tokens", type=int, default=300_000)
    k.add_argument("--context", type=int, default=128)
    k.add_argument("--text-batch", type=int, default=32)
    k.add_argument("--shard-tokens", type=int, default=65_536)
    k.add_argument("--device", default="cpu")
    k.add_argument("--out", required=True, help="store directory (resumed if it exists)")
    k.set_defaults(func=cmd_collect)

    t = sub.add_parser("train", help="train a family of relu SAEs on a store (SAELens layout; resumes)")
    t.add_argument("--acts", required=True, help="activation store directory")
    t.add_argument("--widths", type=int, nargs="+", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=1024)
    t.add_argument("--l1", type=float, default=1.5)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--name", default="sae", help="SAE names are NAME-WIDTH")
    t.add_argument("--eval-tokens", type=int, default=20_000)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("stitch", help="insert a donor SAE's features into a base SAE")
    s.add_argument("base")
    s.add_argument("donor")
    s.add_argument("--features", help="comma-separated donor indices (default: the novel features)")
    s.add_argument("--threshold", type=float, default=0.7)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_stitch)

    i = sub.add_parser("interpolate", help="the path small -> +novel -> swaps -> large, measured exactly")
    i.add_argument("small")
    i.add_argument("large")
    i.add_argument("--acts", required=True, help="activation store to measure on")
    i.add_argument("--tokens", type=int, default=20_000)
    i.add_argument("--threshold", type=float, default=0.7)
    i.add_argument("--rows", type=int, default=20)
    i.add_argument("--out", help="write every step to this JSON file")
    i.set_defaults(func=cmd_interpolate)

    f = sub.add_parser("frankenstein", help="assemble an SAE from a family of widths (checkpoints, resumes)")
    f.add_argument("saes", nargs="+", help="SAE directories")
    f.add_argument("--acts", required=True, help="activation store for retraining")
    f.add_argument("--eval-acts", help="activation store to measure on (default: --acts)")
    f.add_argument("--train-tokens", type=int, default=200_000)
    f.add_argument("--eval-tokens", type=int, default=20_000)
    f.add_argument("--batch-size", type=int, default=4096)
    f.add_argument("--retrain", default="adam", choices=["adam", "lstsq", "none"])
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--threshold", type=float, default=0.7)
    f.add_argument("--out", required=True)
    f.set_defaults(func=cmd_frankenstein)

    r = sub.add_parser("report", help="write report.md and its plots from a results.json")
    r.add_argument("results")
    r.add_argument("--out", help="directory (default: the results file's)")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StitchkitError as e:
        print(f"stitchkit: error: {e}", file=sys.stderr)
        return 2
