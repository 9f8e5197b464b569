"""The subcommands. Each checks what argparse cannot (relations between arguments, files) before
it starts work, then calls the library and prints."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import dist
from ..atomic import claim_dir
from ..errors import InvalidArgumentError
from ..tables import (
    CONVERGENCE_COLUMNS,
    DOWNSTREAM_COLUMNS,
    FAMILY_COLUMNS,
    FRANKENSTEIN_COLUMNS,
    GROUND_TRUTH_COLUMNS,
    PATH_COLUMNS,
    table,
)
from .render import bar, family_progress, print_study, say


def _family_rows(family, metrics, train_s: dict) -> list[dict]:
    return [
        dict(
            width=sae.d_sae,
            mse=m.mse,
            normalized_mse=m.normalized_mse,
            l0=m.l0,
            dead_fraction=m.dead_fraction,
            train_s=train_s.get(sae.d_sae, 0.0),
            name=sae.name,
        )
        for sae, m in zip(family, metrics)
    ]


def _study_config(args):
    from ..study import StudyConfig

    return StudyConfig(
        threshold=args.threshold,
        small=args.small,
        large=args.large,
        curve_points=args.curve_points,
        greedy_novel_only=args.greedy_novel_only,
        retrain_lr=args.retrain_lr,
    )


def _run_study(family, held, train_acts, out: Path, args, setup: dict, train_s: dict, extra=None, twin=None):
    """The study, printed, with its SAEs saved under out/saes; returns (study, results dict).
    twin: the seed baseline's SAE (the headline large SAE's width, another seed), or None."""
    from ..sae.io import save_sae
    from ..study import run_study

    study = run_study(
        family,
        held,
        train_acts,
        _study_config(args),
        seed_twin=twin,
        train_seconds=train_s,
        checkpoint_dir=out / "frankenstein",
        progress=say,
    )
    res = study.to_dict(setup, path_rows=args.path_rows)
    if extra is not None:
        extra(res["family"], study.saes)
    print(table(res["family"], FAMILY_COLUMNS + ([("gt", "GT dirs cos>0.9")] if extra else [])))
    print_study(study, res)
    for sae in (study.plus_novel, study.swapped, study.frankenstein.sae):
        if sae is not None:
            save_sae(sae, out / "saes" / sae.name)
    return study, res


def _write_cards(study, res: dict, store, out: Path, *, token_directions=None, logits_note=None):
    """Feature cards of the study (stitchkit.cards) into out/cards.json.gz, and out/report.html
    with its card files (report_html.py); returns report.html's path (None: no card statistics)."""
    import gzip
    import json

    from ..atomic import atomic_write
    from ..cards import feature_cards
    from ..report import study_view
    from ..report_html import write_report_html

    if not study.card_stats:
        return None
    s = res.get("setup", {})
    title = f"stitchkit report: {s['model']} at {s.get('hook_name', '?')}" if "model" in s else None
    say("feature cards: contexts, nearest features and lineage of every feature")
    cards = feature_cards(study, store, study=study_view(res), title=title,
                          token_directions=token_directions, logits_note=logits_note)  # fmt: skip
    data = gzip.compress(json.dumps(cards).encode(), mtime=0)
    atomic_write(out / "cards.json.gz", lambda fh: fh.write(data))
    return write_report_html(cards, out)


def cmd_demo(args: argparse.Namespace) -> int:
    demo_settings(args)
    claim_dir(args.out, "demo", fn="demo", resume=True)
    if args.restart:
        from ..fit.checkpoint import RunDir

        RunDir.discard(Path(args.out) / "frankenstein")
    return demo_toy(args) if args.toy else demo_real(args)


def demo_settings(args: argparse.Namespace) -> argparse.Namespace:
    """The demo's defaults that follow its other arguments (widths, pair), checked; in place."""
    if args.saes:
        from ..sae.sources import expand_family

        if args.toy:
            raise InvalidArgumentError("demo: --saes runs the study on real activations, not with --toy")
        args.saes = [one for src in args.saes for one in expand_family(src)]
        if args.n_widths is not None and args.n_widths != len(args.saes):
            raise InvalidArgumentError(
                f"demo: --n-widths {args.n_widths} but --saes names {len(args.saes)} SAEs"
            )
        args.n_widths = len(args.saes)
    # The headline pair is adjacent, as the reference work's (GPT2-768 vs GPT2-1536): on the
    # embedded default the same widths, 768 vs 1,536 (2 and 4 d_in); else the two narrowest.
    defaults = (
        dict(n_widths=3, batch_size=512, lr_decay=0.2)
        if args.toy
        else dict(n_widths=5, batch_size=1024, lr_decay=0.5)
        if not args.saes
        else dict(batch_size=1024, lr_decay=0.5)
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    n = args.n_widths
    # The pair follows the widths: 768 vs 1,536 on the embedded default where there are three or
    # more, else the two narrowest; one index given, the other is its neighbour.
    if args.small is None and args.large is None:
        args.small, args.large = (1, 2) if not args.toy and not args.saes and n >= 3 else (0, 1)
    elif args.small is None:
        args.small = args.large % n - 1
    elif args.large is None:
        args.large = args.small % n + 1
    if n < 2:
        raise InvalidArgumentError(f"demo: --n-widths must be at least 2 (a small and a large SAE), got {n}")
    if not -n <= args.small < n or not -n <= args.large < n:
        raise InvalidArgumentError(
            f"demo: --small/--large must index the {n} widths, got {args.small}, {args.large}"
        )
    if args.small % n >= args.large % n:
        raise InvalidArgumentError(
            f"demo: --small ({args.small}) must name a narrower SAE than --large ({args.large})"
        )
    if args.toy and args.d_in is not None and args.d_in < 2:
        raise InvalidArgumentError(f"demo: --d-in must be at least 2, got {args.d_in}")
    return args


def _check_file_out(path, fn: str, overwrite: bool) -> None:
    from ..atomic import check_file, decided

    if path:
        decided(lambda: check_file(Path(path), fn=fn, overwrite=overwrite))


def demo_toy(args: argparse.Namespace) -> int:
    import torch

    from ..atomic import atomic_write_json
    from ..data import ActivationStore
    from ..data.toy import TOY_TOKENIZER, ground_truth_rows, make_toy, toy_contexts
    from ..fit.train import train_sae
    from ..report import write_report
    from ..sae.io import load_sae, save_sae
    from ..stitch.similarity import max_cosine

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

    def toy_sae(width: int, seed: int, data_seed: int, name: str, progress=None):
        return train_sae(
            toy.batches(args.train_tokens, args.batch_size, seed=data_seed),
            d_in,
            width,
            l1_coefficient=args.l1 or 0.2,
            lr=args.lr or 3e-3,
            n_steps=steps,
            seed=seed * 1000 + width,
            name=name,
            hook_name="toy",
            progress=progress,
        )

    family, train_s = [], {}
    for width in widths:
        t0 = time.perf_counter()
        with bar(steps, f"train d_sae={width}") as b:
            sae = toy_sae(width, args.seed, 1, f"toy-relu-{width}", progress=lambda step, loss: b.update(1))
        train_s[width] = time.perf_counter() - t0
        path = save_sae(sae, out / "saes" / sae.name)
        loaded = load_sae(path)
        if not torch.equal(loaded(held[:256]), sae(held[:256])):
            print(f"stitchkit: error: {path} did not load back to the same SAE", file=sys.stderr)
            return 1
        family.append(loaded)

    def ground_truth(rows, saes):
        for r, sae in zip(rows, saes):
            r["gt"] = float((max_cosine(toy.directions, sae.W_dec.detach()).values > 0.9).float().mean())

    twin_width = widths[args.large]
    twin_name = f"toy-relu-{twin_width}-seed{args.seed + 1}"
    with bar(steps, f"train the seed twin d_sae={twin_width}") as b:
        twin = toy_sae(twin_width, args.seed + 1, 2, twin_name, progress=lambda step, loss: b.update(1))
    setup = dict(model="toy", hook_name="toy", d_in=d_in, widths=widths)
    train_acts = lambda: toy.batches(args.retrain_tokens, args.batch_size, seed=3)  # noqa: E731
    # The toy tokens as activation stores, so the library and the other commands can run on what
    # the demo used (README's snippets do): the held-out tokens and the retraining tokens.
    for name, tokens in (("held", lambda: held), ("train", lambda: torch.cat(list(train_acts())))):
        where = out / "activations" / name
        if dist.is_main() and not (where / "manifest.json").exists():
            x = tokens()
            ActivationStore.from_tensor(
                x, where, model="toy", hook_name="toy", contexts=toy_contexts(len(x)), tokenizer=TOY_TOKENIZER
            )
    dist.barrier()
    study, res = _run_study(
        family, held, train_acts, out, args, setup, train_s, extra=ground_truth, twin=twin
    )
    res["ground_truth"] = ground_truth_rows(toy, study.small, study.large, study.classification.novel)
    print(f"\n== Ground truth: what each class of {res['headline']} recovers of the planted directions ==")
    print(table(res["ground_truth"], GROUND_TRUTH_COLUMNS))
    print("(MSE: squared error summed over d_in, mean over tokens; saved SAEs reloaded bit-exactly)")
    res["distributed"] = dist.work_record()
    atomic_write_json(res, out / "results.json")
    report = write_report(res, out)
    held_store = ActivationStore(out / "activations" / "held")
    html = _write_cards(study, res, held_store, out, logits_note="toy activations: no model, no logits")
    print(
        f"\nwrote {report} (with plots), {html}, {out / 'results.json'}, the SAEs under {out / 'saes'} "
        f"and the toy activations under {out / 'activations'} (held, train)"
    )
    return 0


def demo_real(args: argparse.Namespace) -> int:
    import torch

    from ..atomic import atomic_write_json
    from ..data import ActivationStore, LensSource, builtin_corpus, default_model_dir
    from ..fit.train import train_family
    from ..measure.metrics import evaluate
    from ..measure.splice import splice_similarity
    from ..report import write_report

    t_start = time.perf_counter()
    out = Path(args.out)
    model_dir = args.model or default_model_dir()
    print(f"stitchkit demo: {model_dir} at {args.hook}; text: docstrings of the Python standard library")
    texts = builtin_corpus()
    n_held = max(1, len(texts) // 10)
    train_texts, held_texts = texts[:-n_held], texts[-n_held:]
    source = LensSource.load(model_dir, args.hook, context_length=args.context, batch_size=args.text_batch)
    d_in = source.d_in
    # A downloaded family is loaded (and checked) before any activation is collected.
    family = _downloaded_family(args.saes, d_in, args.hook) if args.saes else None
    with bar(args.tokens, "collect activations") as b:
        store = ActivationStore.collect(
            source,
            train_texts,
            out / "activations" / "train",
            max_tokens=args.tokens,
            progress=lambda n: b.update(n - b.n),
            restart=args.restart,
        )
    held_store = ActivationStore.collect(
        source, held_texts, out / "activations" / "held", max_tokens=args.eval_tokens, restart=args.restart
    )
    held = torch.cat(list(held_store.batches(shuffle=False)))
    print(
        f"{store.n_tokens} training and {len(held)} held-out tokens of width {d_in} "
        f"({time.perf_counter() - t_start:.0f} s)"
    )

    twin, at_80, twin_s, twin_80 = None, {}, {}, {}
    if args.saes:
        train_s = {}
        widths = [s.d_sae for s in family]
        steps_for = None
    else:
        widths = [d_in * 2**i for i in range(args.n_widths)]

        def steps_for(width: int) -> int:  # wider SAEs need longer: x sqrt(width / 4 d_in) beyond 4 d_in
            return round(args.train_steps * max(1.0, width / (4 * d_in)) ** 0.5)

        recipe = dict(
            n_steps=steps_for,
            l1_coefficient=args.l1 or 1.5,
            lr=args.lr or 1e-3,
            lr_decay=args.lr_decay,
            hook_name=args.hook,
        )
        batches = lambda seed, steps: store.stream(args.batch_size, steps, seed=seed)  # noqa: E731

        def trained(widths: list[int], prefix: str, seed: int):
            """train_family with a bar per width; (SAEs, seconds per width, MSE at 80% per width)."""
            progress, seconds = family_progress(steps_for)
            at_80: dict[int, float] = {}
            watch = {0.8: lambda width, sae: at_80.__setitem__(width, evaluate(sae, held).mse)}
            saes = train_family(batches, d_in, widths, out / "saes", name_prefix=prefix, seed=seed,
                                progress=progress, watch=watch, data=store.identity(),
                                restart=args.restart, **recipe)  # fmt: skip
            return saes, seconds, at_80

        prefix = f"{source.model_name}-relu"
        family, train_s, at_80 = trained(widths, prefix, args.seed)
        # The seed baseline: the headline large SAE's width, another seed (data order and init).
        (twin,), twin_s, twin_80 = trained(
            [widths[args.large]], f"{prefix}-seed{args.seed + 1}", args.seed + 1
        )
    setup = dict(
        model=source.model_name,
        hook_name=args.hook,
        d_in=d_in,
        training_tokens=store.n_tokens,
        held_out_tokens=len(held),
        widths=widths,
        train_steps={w: steps_for(w) for w in widths} if steps_for else None,
        batch_size=args.batch_size,
        lr=None if args.saes else (args.lr or 1e-3),
        lr_decay=None if args.saes else args.lr_decay,
        l1_coefficient=None if args.saes else (args.l1 or 1.5),
        saes=list(args.saes) if args.saes else None,
    )
    retrain_tokens = min(args.retrain_tokens, store.n_tokens)
    train_acts = lambda: store.batches(args.batch_size * 4, shuffle=False, n_tokens=retrain_tokens)  # noqa: E731
    study, res = _run_study(family, held, train_acts, out, args, setup, train_s, twin=twin)
    if at_80:
        rows = [(r["name"], r["width"], at_80.get(r["width"]), r["mse"]) for r in res["family"]]
        if twin is not None and twin_80:
            sb = res["seed_baseline"]
            rows.append((twin.name, twin.d_sae, twin_80.get(twin.d_sae), sb["mse_large"]))
        res["convergence"] = [
            dict(name=name, width=w, steps=steps_for(w), mse_at_80=m80, mse=mse, last_fifth=mse / m80 - 1,
                 train_s=twin_s.get(w) if name == getattr(twin, "name", None) else train_s.get(w))
            for name, w, m80, mse in rows if m80 is not None
        ]  # fmt: skip
        print(table(res["convergence"], CONVERGENCE_COLUMNS))

    print("\n== Splicing each SAE into the model: pooled last-layer output, cosine with vs without ==")
    probe = held_texts[: args.splice_texts]
    res["downstream"] = [dict(sae=s.name, **splice_similarity(source, s, probe)) for s in study.saes]
    res["downstream"].append(
        dict(sae="frankenstein", **splice_similarity(source, study.frankenstein.sae, probe))
    )
    columns = DOWNSTREAM_COLUMNS if source.is_causal_lm else DOWNSTREAM_COLUMNS[:-1]
    print(table(res["downstream"], columns))
    res["setup"]["total_seconds"] = round(time.perf_counter() - t_start, 1)
    res["distributed"] = dist.work_record()
    atomic_write_json(res, out / "results.json")
    report = write_report(res, out)
    directions, note = _token_directions(source)
    html = _write_cards(study, res, held_store, out, token_directions=directions, logits_note=note)
    saes = "" if args.saes else f" and the SAEs under {out / 'saes'}"
    print(
        f"\nwrote {report} (with plots), {html}, {out / 'results.json'}{saes} "
        f"in {time.perf_counter() - t_start:.0f} s"
    )
    return 0


def _token_directions(source):
    """(directions [vocab, d_in], note) for the cards' logit effects: the unembedding's columns
    where the model has one, else its input embeddings as the stand-in (an embedding model's
    residual stream starts from them), said so in the note."""
    import torch

    model = source.model
    w_u = getattr(model, "W_U", None) if source.is_causal_lm else None
    if isinstance(w_u, torch.Tensor):
        return w_u.detach().t().float().cpu(), "logit effects: W_dec . W_U"
    w_e = getattr(model, "W_E", None)
    if isinstance(w_e, torch.Tensor):
        w = w_e.detach().float().cpu()
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return w, (
            f"{source.model_name} has no unembedding: shown instead are the tokens whose input "
            "embedding (unit rows of W_E) the decoder direction raises most and least, W_dec . W_E^T"
        )
    return None, f"{source.model_name} exposes neither W_U nor W_E: no logit effects"


def _downloaded_family(sources: list[str], d_in: int, hook: str) -> list:
    """The SAEs `sources` name, loaded and checked to read `hook` at width d_in, narrowest first."""
    from ..sae.io import load_sae
    from ..sae.model import family_order

    family = []
    for src in sources:
        say(f"loading {src}")
        sae = load_sae(src)
        if sae.d_in != d_in:
            raise InvalidArgumentError(f"demo: {src} reads d_in={sae.d_in}, but {hook} has width {d_in}")
        if sae.hook_name and sae.hook_name != hook:
            raise InvalidArgumentError(f"demo: {src} reads hook {sae.hook_name!r}, not --hook {hook!r}")
        if sae.input_norm != "none":
            raise InvalidArgumentError(
                f"demo: {src} normalises each token (input_norm={sae.input_norm!r}); "
                "the demo measures raw activations"
            )
        family.append(sae)
    return family_order(family)


def cmd_compare(args: argparse.Namespace) -> int:
    from ..atomic import atomic_torch_save
    from ..sae.io import load_sae
    from ..stitch.similarity import max_cosine, novel_fraction_sweep

    _check_file_out(args.out, "compare", args.overwrite)
    # Read into host memory: the search copies only this rank's rows (and key shard) to the device.
    large, small = load_sae(args.large), load_sae(args.small)
    t0 = time.perf_counter()
    values, indices = max_cosine(
        large, small, backend=args.backend, precision=args.precision, device=args.device
    )
    secs = time.perf_counter() - t0
    thresholds, novel = novel_fraction_sweep(values)
    print(f"{large.name} ({large.d_sae}) vs {small.name} ({small.d_sae}): max cosine in {secs:.3f} s")
    rows = [dict(t=float(t), n=int(n), f=float(n) / max(large.d_sae, 1)) for t, n in zip(thresholds, novel)]
    print(table(rows, [("t", "threshold"), ("n", "novel"), ("f", "novel frac")]))
    if args.out:
        record = dist.work_record()
        atomic_torch_save(
            {
                "max_cos": values.cpu(),
                "argmax": indices.cpu(),
                "distributed": record,
                "written_by": "stitchkit",
            },
            Path(args.out),
        )
        print(f"wrote {args.out}")
    return 0


def _store_acts(path: str, n_tokens: int | None, batch_size: int = 4096):
    from ..data.store import ActivationStore

    store = ActivationStore(path)
    return store, (lambda: store.batches(batch_size, shuffle=False, n_tokens=n_tokens))


def cmd_collect(args: argparse.Namespace) -> int:
    from ..data import ActivationStore, LensSource, builtin_corpus, default_model_dir, read_text_files

    claim_dir(args.out, "store", fn="collect", resume=True)
    if args.dataset:
        from ..data.corpora import hf_dataset_texts

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
    with bar(args.tokens, "collect") as b:
        store = ActivationStore.collect(
            source,
            texts,
            args.out,
            max_tokens=args.tokens,
            shard_tokens=args.shard_tokens,
            progress=lambda n: b.update(n - b.n),
            restart=args.restart,
        )
    print(f"{store.n_tokens} tokens of {source.model_name} at {args.hook} (d_in {store.d_in}) in {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..data.store import ActivationStore
    from ..fit.train import train_family
    from ..measure.accumulator import run_pass
    from ..measure.metrics import MetricsAccumulator

    if len(set(args.widths)) != len(args.widths):
        raise InvalidArgumentError(f"train: --widths has repeats: {args.widths}")
    store = ActivationStore(args.acts)
    claim_dir(args.out, "family", fn="train", resume=True)
    progress, seconds = family_progress(lambda width: args.steps)
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
        parallel=args.parallel,
        data=store.identity(),
        restart=args.restart,
    )
    _, acts = _store_acts(args.acts, args.eval_tokens)
    accs = [MetricsAccumulator(sae) for sae in family]
    run_pass(accs, acts, d_in=store.d_in, device=family[0].device)
    rows = _family_rows(family, [a.result() for a in accs], seconds)
    print(table(rows, FAMILY_COLUMNS))
    record = _write_record(Path(args.out) / "train.json", family=rows, parallel=args.parallel)
    print(f"saved under {args.out} with {record.name} (train s: 0 for a width loaded, not trained)")
    return 0


def _write_record(path: Path, **fields) -> Path:
    """A command's JSON record: its results and how the work was split across ranks."""
    from ..atomic import atomic_write_json

    return atomic_write_json(dict(fields, distributed=dist.work_record(), written_by="stitchkit"), path)


def cmd_stitch(args: argparse.Namespace) -> int:
    from ..sae.io import check_save_target, load_sae, save_sae
    from ..stitch.classify import classify
    from ..stitch.interpolate import insert

    check_save_target(args.out, fn="stitch", overwrite=args.overwrite)
    base, donor = load_sae(args.base), load_sae(args.donor)
    if args.features and max(args.features) >= donor.d_sae:
        raise InvalidArgumentError(
            f"stitch: --features names {max(args.features)}, but {args.donor} has {donor.d_sae} "
            f"features (0..{donor.d_sae - 1})"
        )
    feats = args.features if args.features else classify(base, donor, args.threshold).novel_features
    sae = insert(base, donor, feats, name=Path(args.out).name)
    path = save_sae(sae, args.out, overwrite=args.overwrite)
    print(f"{path}: {base.d_sae} features of {base.name} + {len(feats)} of {donor.name} = {sae.d_sae}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from ..measure.metrics import evaluate
    from ..sae.io import load_sae
    from ..stitch.interpolate import interpolate
    from ..study import pick_rows

    _check_file_out(args.out, "interpolate", args.overwrite)
    small, large = load_sae(args.small), load_sae(args.large)
    _, acts = _store_acts(args.acts, args.tokens)
    path = interpolate(small, large, acts, args.threshold)
    rows = [dict(r, label=lab) for r, lab in zip(path.metrics.rows(), path.labels)]
    # the SAE the path heads towards, measured on the same tokens: where the path ends relative to it
    m = evaluate(large, acts)
    target = dict(step="target", label=f"{large.name} itself", n_features=large.d_sae, mse=m.mse,
                  normalized_mse=m.normalized_mse, l0=m.l0)  # fmt: skip
    print(table([*pick_rows(rows, args.rows), target], PATH_COLUMNS))
    if args.out:
        print(f"wrote {_write_record(Path(args.out), interpolation=rows, target=target)}")
    return 0


def cmd_frankenstein(args: argparse.Namespace) -> int:
    from ..sae.io import load_sae, save_sae
    from ..sae.sources import expand_family
    from ..stitch.frankenstein import frankenstein

    sources = [p for src in args.saes for p in expand_family(src)]
    if len(sources) < 2:
        raise InvalidArgumentError(f"frankenstein: expected at least two SAEs, got {len(sources)}")
    seen = {}
    for src in sources:
        key = str(Path(src).resolve()) if Path(src).exists() else src
        if key in seen:
            raise InvalidArgumentError(
                f"frankenstein: {src} is named twice (as {seen[key]} and {src}); name each SAE once"
            )
        seen[key] = src
    claim_dir(args.out, "frankenstein", fn="frankenstein", resume=True)
    family = [load_sae(p) for p in sources]
    widths = {}
    for src, sae in zip(sources, family):
        if sae.d_sae in widths:
            raise InvalidArgumentError(
                f"frankenstein: {widths[sae.d_sae]} and {src} both have {sae.d_sae} features; "
                "a Frankenstein family needs one SAE per width"
            )
        widths[sae.d_sae] = src
    store, train = _store_acts(args.acts, args.train_tokens, args.batch_size)
    _, held = _store_acts(args.eval_acts or args.acts, args.eval_tokens)
    data = dict(store.identity(), train_tokens=args.train_tokens, batch_size=args.batch_size)
    fr = frankenstein(
        family,
        train,
        args.threshold,
        retrain=None if args.retrain == "none" else args.retrain,
        lr=args.lr,
        eval_acts=held,
        checkpoint_dir=Path(args.out) / "checkpoints",
        progress=say,
        data=data,
        restart=args.restart,
    )
    stages = [vars(s) for s in fr.stages]
    print(table(stages, FRANKENSTEIN_COLUMNS))
    fr.sae.name = "frankenstein"
    saved = save_sae(fr.sae, Path(args.out) / "frankenstein")
    record = _write_record(Path(args.out) / "frankenstein.json", saes=sources, stages=stages)
    print(f"saved {saved} and {record}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..sae.io import check_save_target, load_sae, save_sae

    check_save_target(args.out, fn="convert", overwrite=args.overwrite)
    sae = load_sae(
        args.source,
        hookpoint=args.hookpoint,
        hook_name=args.hook_name,
        norm_scaling_factor=args.norm_scaling_factor,
        name=Path(args.out).name,
    )
    path = save_sae(sae, args.out, overwrite=args.overwrite)
    notes = "; ".join(sae.load_notes) or "weights as read"
    print(
        f"{path}: {sae.activation} SAE, d_in {sae.d_in}, d_sae {sae.d_sae}, "
        f"read as {sae.source_format} ({notes})"
    )
    if sae.input_norm != "none":
        print(
            f"note: it reads each token normalised (input_norm={sae.input_norm!r}), "
            "written as SAELens states it"
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..peers import verify

    c = verify(args.source, library=args.library, python=args.python, tokens=args.tokens)
    if c.report is not None:
        print(c.report.text())
    print(c.line())
    return 0 if c.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from ..report import REPORT_FILES, RESULT_KEYS, write_report

    path = Path(args.results)
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"report: {path} is not a readable results JSON ({e})") from e
    if not isinstance(res, dict):
        raise InvalidArgumentError(f"report: {path} holds a {type(res).__name__}, expected a results object")
    if not any(res.get(k) for k in RESULT_KEYS):
        raise InvalidArgumentError(
            f"report: {path} holds no study results (none of {', '.join(RESULT_KEYS[:4])}, ...); "
            "expected the results.json of a demo or an interpolate --out file"
        )
    out = Path(args.out) if args.out else path.parent
    for name in REPORT_FILES + ("report.html",):
        _check_file_out(out / name, "report", args.overwrite)
    print(f"wrote {write_report(res, out)}")
    print(f"wrote {_report_html(res, path.parent / 'cards.json.gz', out)}")
    return 0


def _report_html(res: dict, cards_file: Path, out: Path) -> Path:
    """report.html from results.json's dict: with the feature cards the demo saved beside it
    (cards.json.gz), else the study's tables and plots alone."""
    import gzip
    import json

    from ..report import study_view
    from ..report_html import write_report_html

    if cards_file.is_file():
        try:
            cards = json.loads(gzip.decompress(cards_file.read_bytes()))
        except (OSError, ValueError, EOFError) as e:
            raise InvalidArgumentError(f"report: {cards_file} is not a readable cards file ({e})") from e
        cards["study"] = study_view(res)
    else:
        cards = dict(title="stitchkit report", written_by="stitchkit", study=study_view(res), saes=[],
                     cards={})  # fmt: skip
    return write_report_html(cards, out)
