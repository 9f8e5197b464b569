import json

import torch

from stitchkit import load_sae
from stitchkit.cli import main


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
    for expected in ("toy-relu-8", "toy-relu-32", "dMSE < 0", "Interpolation path", "Frankenstein", "Greedy"):
        assert expected in text
    small, large = load_sae(out / "saes" / "toy-relu-16"), load_sae(out / "saes" / "toy-relu-32")
    assert (small.d_sae, large.d_sae) == (16, 32)
    assert json.loads((out / "saes" / "toy-relu-32" / "cfg.json").read_text())["architecture"] == "standard"
    results = json.loads((out / "results.json").read_text())
    table = results["delta_table"]
    assert sum(r["helps"] + r["hurts"] for r in table) == 32
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


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    rc = main(["compare", str(tmp_path / "missing"), str(tmp_path / "also-missing")])
    assert rc == 2
    assert "missing: SAE directory does not exist" in capsys.readouterr().err
