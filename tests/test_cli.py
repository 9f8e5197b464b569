import json

import torch

from stitchkit import load_sae
from stitchkit.cli import main


def test_demo_then_compare(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "demo",
            "--out",
            str(out),
            "--d-in",
            "16",
            "--n-widths",
            "2",
            "--train-tokens",
            "8192",
            "--eval-tokens",
            "2048",
            "--batch-size",
            "512",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "toy-relu-32" in text and "toy-relu-64" in text and "64 vs 32" in text
    small, large = load_sae(out / "saes" / "toy-relu-32"), load_sae(out / "saes" / "toy-relu-64")
    assert (small.d_sae, large.d_sae) == (32, 64)
    assert json.loads((out / "saes" / "toy-relu-64" / "cfg.json").read_text())["architecture"] == "standard"

    rc = main(
        [
            "compare",
            str(out / "saes" / "toy-relu-64"),
            str(out / "saes" / "toy-relu-32"),
            "--backend",
            "torch",
            "--out",
            str(tmp_path / "cos.pt"),
        ]
    )
    assert rc == 0
    saved = torch.load(tmp_path / "cos.pt")
    assert saved["max_cos"].shape == (64,) and int(saved["argmax"].max()) < 32
    assert "novel frac" in capsys.readouterr().out


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    rc = main(["compare", str(tmp_path / "missing"), str(tmp_path / "also-missing")])
    assert rc == 2
    assert "missing: SAE directory does not exist" in capsys.readouterr().err
