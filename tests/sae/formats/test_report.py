"""The load report: every field and tensor a reader read (with its value), those it left unread
(named as not needed by the format, or unknown to it), the rewrites and the oracle."""

import json

import pytest
import torch
from safetensors.torch import save_file

from stitchkit import load_sae
from stitchkit.sae import formats
from tests.sae.formats.test_fuzz import LAYOUTS, valid, write


def llamascopium_dir(tmp_path, **extra):
    d = tmp_path / "llsp"
    d.mkdir()
    cfg = {"sae_type": "sae", "d_model": 4, "expansion_factor": 2.0, "hook_point_in": "h",
           "hook_point_out": "h", "act_fn": "relu", "norm_activation": "dataset-wise",
           "use_triton_kernel": False, **extra}  # fmt: skip
    (d / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(0)
    t = {"W_E": torch.randn(4, 8, generator=g), "b_E": torch.zeros(8), "W_D": torch.randn(8, 4, generator=g),
         "b_D": torch.zeros(4), "dataset_average_activation_norm.h": torch.tensor(2.0),
         "optimizer_step": torch.tensor(3.0)}  # fmt: skip
    save_file(t, str(d / "sae_weights.safetensors"))
    return d


def test_fields_read_unread_and_unknown(tmp_path, capsys):
    d = llamascopium_dir(tmp_path, mystery_gate=True)
    sae = load_sae(d, verbose=True)
    r = sae.load_report
    assert r.format == "llamascopium" and "llamascopium 2.0.0b34" in r.oracle
    assert r.fields["act_fn"] == "'relu'" and r.fields["d_model"] == "4"
    assert r.tensors["W_E"] == "[4, 8] float32"
    assert "use_triton_kernel" in r.unread_fields and "use_triton_kernel" not in r.unknown_fields
    assert r.unknown_fields == ["mystery_gate"] and r.unknown_tensors == ["optimizer_step"]
    assert any("dataset-wise input scale folded" in n for n in r.rewrites)
    err = capsys.readouterr().err
    assert "NOT READ, unknown to this reader: mystery_gate, optimizer_step" in err
    assert "field  norm_activation = 'dataset-wise'" in err
    assert load_sae(d).load_report.text() in err  # verbose prints exactly the report


def test_nested_fields_are_reported_by_path(tmp_path):
    d = tmp_path / "dl"
    d.mkdir()
    cfg, tensors = valid("dictionary_learning")
    cfg["trainer"]["lr"] = 1e-3
    cfg["trainer"]["new_knob"] = 7
    src, _ = write(d, "dictionary_learning", cfg, tensors)
    r = load_sae(src).load_report
    assert r.fields["trainer.dict_class"] == "'BatchTopKSAE'"
    assert "trainer.lr" in r.unread_fields and r.unknown_fields == ["trainer.new_knob"]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_format_names_its_oracle_and_reads_its_own_fields(tmp_path, layout):
    cfg, tensors = valid(layout)
    src, _ = write(tmp_path, layout, cfg, tensors)
    r = load_sae(src).load_report
    fmt = formats.BY_NAME[r.format]
    assert r.oracle == fmt.ORACLE and r.files
    assert r.unknown_fields == [] and r.unknown_tensors == []
    assert r.fields or layout in ("gemma", "openai")  # the two config-less layouts
    assert r.tensors


def test_every_format_module_names_an_oracle():
    for fmt in formats.FORMATS:
        assert isinstance(getattr(fmt, "ORACLE", None), str) and fmt.ORACLE, fmt.NAME
