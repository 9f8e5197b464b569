"""The subcommands end to end (stitchkit.cli.commands): the toy demo, compare, and collect -> train ->
stitch -> interpolate -> frankenstein -> report on a tiny random BERT."""

import json

import pytest
import torch

from stitchkit import load_sae
from stitchkit.cli import main
from tests.helpers import TEXTS

pytest.importorskip("transformer_lens")


def test_cli_subcommands_end_to_end(tiny_dir, tmp_path, capsys):
    from stitchkit import load_sae
    from stitchkit.cli import main

    text = tmp_path / "texts.txt"
    text.write_text("\n\n".join(TEXTS * 3))
    store, saes = tmp_path / "store", tmp_path / "saes"
    common = ["--acts", str(store)]
    hook = "blocks.1.hook_resid_pre"
    assert main(["collect", "--model", str(tiny_dir), "--hook", hook, "--texts", str(text),
                 "--tokens", "600", "--context", "16", "--out", str(store)]) == 0  # fmt: skip
    assert main(["train", *common, "--widths", "16", "64", "--out", str(saes), "--steps", "20",
                 "--batch-size", "100", "--l1", "0.5"]) == 0  # fmt: skip
    first = capsys.readouterr().out
    assert "600 tokens" in first
    rows = [line.split() for line in first.splitlines() if line.split()[:1] in (["16"], ["64"])]
    assert len(rows) == 2 and all(float(r[-1]) > 0 for r in rows)  # each width's real training time
    assert main(["stitch", str(saes / "sae-16"), str(saes / "sae-64"), "--out", str(tmp_path / "st")]) == 0
    st = load_sae(tmp_path / "st")
    assert st.d_sae > 16 and set(st.provenance.sources) == {"sae-16", "sae-64"}
    assert main(["interpolate", str(saes / "sae-16"), str(saes / "sae-64"), *common, "--tokens", "300",
                 "--out", str(tmp_path / "path.json")]) == 0  # fmt: skip
    shown = capsys.readouterr().out
    target = json.loads((tmp_path / "path.json").read_text())["target"]
    assert "sae-64 itself" in shown and target["n_features"] == 64 and target["l0"] > 0
    assert main(["frankenstein", str(saes / "sae-16"), str(saes / "sae-64"), *common, "--retrain", "lstsq",
                 "--out", str(tmp_path / "fr")]) == 0  # fmt: skip
    assert load_sae(tmp_path / "fr" / "frankenstein").d_sae >= 16
    assert main(["report", str(tmp_path / "path.json")]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "Interpolation path" in report and (tmp_path / "interpolation.png").exists()
    out = capsys.readouterr().out
    assert "features" in out
    assert main(["report", str(tmp_path / "missing.json")]) == 2


def test_demo_then_compare(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "demo",
            "--toy",
            "--out",
            str(out),
            "--d-in",
            "16",
            "--train-tokens",
            "20000",
            "--eval-tokens",
            "2000",
            "--retrain-tokens",
            "4000",
            "--batch-size",
            "500",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    for expected in ("toy-relu-8", "toy-relu-32", "dMSE < 0", "Interpolation path", "Frankenstein", "Greedy",
                     "seed baseline", "calibration", "Lineage", "frontier", "reference work"):  # fmt: skip
        assert expected in text
    small, large = load_sae(out / "saes" / "toy-relu-16"), load_sae(out / "saes" / "toy-relu-32")
    assert (small.d_sae, large.d_sae) == (16, 32)
    assert json.loads((out / "saes" / "toy-relu-32" / "cfg.json").read_text())["architecture"] == "standard"
    results = json.loads((out / "results.json").read_text())
    table = results["delta_table"]
    assert results["headline"] == "16 vs 8"  # adjacent, as the reference work's pair
    assert sum(r["helps"] + r["hurts"] for r in table) == 16
    assert [p["pair"] for p in results["pairs"]] == ["16 vs 8", "32 vs 16"]
    for key in ("16 vs 8", "32 vs 16", "16 vs 16 (seed)"):
        assert {"auroc", "best_threshold"} <= set(results["calibration"][key]["decoder"])
    assert results["seed_baseline"]["pair"] == "16 vs 16 (seed)"
    assert results["lineage"]["widths"] == [8, 16, 32] and len(results["lineage"]["counts"]) == 2
    front = results["frontier"]
    assert front["natural"] and front["stitched"] and "area" in front
    assert all({"l0", "mse"} <= set(r) for r in front["natural"] + front["stitched"])
    st = [(r["l0"], r["mse"]) for r in front["stitched"]]
    for r in front["stitched"]:  # on the frontier iff no other stitched point beats it on both axes
        beaten = any(a <= r["l0"] and b <= r["mse"] and (a, b) != (r["l0"], r["mse"]) for a, b in st)
        assert r["on_frontier"] == (not beaten)
    assert "report.md (with plots)" in text  # the toy demo writes its report, as the real one does
    written = (out / "report.md").read_text()
    assert main(["report", str(out / "results.json")]) == 2  # stitchkit's own file: --overwrite
    assert main(["report", str(out / "results.json"), "--overwrite"]) == 0
    report = (out / "report.md").read_text()
    assert report == written
    sections = ("The reference work beside this run (16 vs 8)", "Every adjacent pair (and the seed baseline)",
                "Threshold calibration", "Lineage across the width ladder", "MSE-L0 frontier")  # fmt: skip
    for section in sections:
        assert section in report
    truth = {r["cls"]: r for r in results["ground_truth"]}
    assert truth["novel"]["features"] + truth["reconstruction"]["features"] == 16
    assert "Ground truth (toy data)" in report
    on = sum(r["on_frontier"] for r in front["stitched"])
    assert f"{on} of {len(front['stitched'])} stitched SAEs are on the frontier" in report
    for png in ("calibration_decoder.png", "calibration_activation.png", "lineage.png", "frontier.png"):
        assert (out / png).stat().st_size > 0 and f"]({png})" in report
    assert [s["source"] for s in results["frankenstein"]] == ["toy-relu-8", "toy-relu-16", "toy-relu-32"]
    fr = load_sae(out / "saes" / "frankenstein")
    assert fr.d_sae == results["frankenstein"][-1]["n_features"]
    assert set(fr.provenance.sources) <= {"toy-relu-8", "toy-relu-16", "toy-relu-32"}

    rc = main(
        [
            "compare",
            str(out / "saes" / "toy-relu-32"),
            str(out / "saes" / "toy-relu-16"),
            "--backend",
            "torch",
            "--out",
            str(tmp_path / "cos.pt"),
        ]
    )
    assert rc == 0
    saved = torch.load(tmp_path / "cos.pt")
    assert saved["max_cos"].shape == (32,) and int(saved["argmax"].max()) < 16
    assert "novel frac" in capsys.readouterr().out


def test_demo_studies_a_downloaded_family_from_the_hub_cache(tiny_dir, tmp_path, monkeypatch, capsys):
    """README's `demo --saes hf://.../blocks.8.hook_resid_pre_{768..98304:x2}` code path, on a hub
    cache laid out by hand (offline), with the tiny BERT standing in for GPT-2."""
    from stitchkit import save_sae
    from tests.helpers import hub_folder, random_sae

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo, hook = "someone/tiny-feature-splitting", "blocks.1.hook_resid_pre"
    snap = hub_folder(cache, repo)
    for w in (32, 64, 128):
        save_sae(random_sae("relu", d_in=32, d_sae=w, seed=w, hook_name=hook, name=f"tiny-{w}"),
                 snap / f"{hook}_{w}")  # fmt: skip
    out = tmp_path / "out"
    argv = ["demo", "--model", str(tiny_dir), "--hook", hook, "--saes", f"hf://{repo}/{hook}_{{32..128:x2}}",
            "--tokens", "800", "--eval-tokens", "400", "--retrain-tokens", "400", "--context", "16",
            "--splice-texts", "4", "--batch-size", "128", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["setup"]["widths"] == [32, 64, 128] and len(res["setup"]["saes"]) == 3
    assert (out / "report.md").exists()
    said = capsys.readouterr()
    assert "loading hf://someone/tiny-feature-splitting" in said.out + said.err
    argv[6] = f"hf://{repo}/{hook}_{{32..256:x2}}"  # 256 is not in the cache
    assert main(argv) == 2
    assert "no SAE files under" in capsys.readouterr().err


def test_convert_and_verify(tmp_path, capsys):
    import numpy as np

    g = torch.Generator().manual_seed(0)
    p = {"W_enc": torch.randn(6, 9, generator=g), "W_dec": torch.randn(9, 6, generator=g),
         "b_enc": torch.randn(9, generator=g), "b_dec": torch.randn(6, generator=g),
         "threshold": torch.rand(9, generator=g)}  # fmt: skip
    np.savez(tmp_path / "params.npz", **{k: v.numpy() for k, v in p.items()})
    assert main(["convert", str(tmp_path / "params.npz"), str(tmp_path / "conv")]) == 0
    assert "read as gemma-scope" in capsys.readouterr().out
    back = load_sae(tmp_path / "conv")
    assert back.source_format == "saelens" and not back.apply_b_dec_to_input
    torch.testing.assert_close(back.W_enc, p["W_enc"], rtol=0, atol=0)
    # verify runs the peer library in this interpreter, where it is not installed: one line, exit 2
    assert main(["verify", str(tmp_path / "conv"), "--library", "saelens"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("stitchkit: error: ") and "No module named 'sae_lens'" in err and err.count("\n") == 1
    )
    assert "install sae-lens in its own environment" in err and "--python ENV/bin/python" in err
