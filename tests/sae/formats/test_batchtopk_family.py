"""The BatchTopK family as its writer (bartbussmann/BatchTopK) computes it: folders laid out as its
logs.save_checkpoint writes them (config.json + sae.pt) or re-packed (.safetensors), read by
load_sae, compared with its sae.py forward re-written in float64 (oracle.BatchTopK)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from stitchkit import SAEFormatError, UnsupportedError, load_sae
from tests.sae.formats.oracle import BatchTopK, batch, rand, stitchkit_outputs

D_IN, D_SAE, K = 10, 28, 3
TOL = dict(rtol=1e-5, atol=1e-5)


def state(seed=1, jumprelu_key="jumprelu.log_threshold"):
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": rand(D_IN, D_SAE, gen=g),
        "W_dec": rand(D_SAE, D_IN, gen=g),
        "b_enc": rand(D_SAE, gen=g),  # nonzero: the forward decides whether it counts
        "b_dec": rand(D_IN, gen=g),
    }
    if jumprelu_key:
        t[jumprelu_key] = rand(D_SAE, gen=g) - 1.5
    return t


def config(**fields):
    return {
        "act_size": D_IN,
        "dict_size": D_SAE,
        "top_k": K,
        "sae_type": "topk",
        "hook_point": "blocks.8.hook_resid_pre",
        "dtype": "torch.float32",
        "input_unit_norm": False,
        "l1_coeff": 0.0,
        "bandwidth": 0.001,
        "seed": 42,
        **fields,
    }


def write(tmp_path, cfg, t, pt=True):
    d = tmp_path / "sae"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    if pt:
        torch.save(t, d / "sae.pt")
    else:
        save_file({k: v.contiguous() for k, v in t.items()}, str(d / "sae.safetensors"))
    return d


def check(d, cfg, t, x):
    sae = load_sae(d)
    assert sae.source_format == "batchtopk-family"
    f_ref, x_ref = BatchTopK(cfg, t).forward(x)
    f, x_hat = stitchkit_outputs(sae, x)
    torch.testing.assert_close(f, f_ref, **TOL)
    torch.testing.assert_close(x_hat, x_ref, **TOL)
    return sae, f_ref


@pytest.mark.parametrize("kind", ["vanilla", "topk", "jumprelu"])
@pytest.mark.parametrize("unit_norm", [False, True])
@pytest.mark.parametrize("pt", [True, False])
def test_the_writers_forward(tmp_path, kind, unit_norm, pt):
    cfg = config(sae_type=kind, input_unit_norm=unit_norm)
    t = state(jumprelu_key="jumprelu.log_threshold" if kind == "jumprelu" else None)
    sae, f_ref = check(write(tmp_path, cfg, t, pt=pt), cfg, t, batch(D_IN))
    assert sae.input_norm == ("layer_norm" if unit_norm else "none")
    assert sae.apply_b_dec_to_input == (kind != "jumprelu")
    assert 0 < int((f_ref != 0).sum()) < f_ref.numel()


def test_batchtopk_with_a_threshold_is_its_inference_form(tmp_path):
    # a re-pack that adds the inference threshold; the writer's own batch rule is checked on the
    # batch the threshold was taken from: the (k * batch)-th largest value, kept strictly above
    cfg = config(sae_type="batchtopk")
    t = state(jumprelu_key=None)
    x = batch(D_IN, n=40)
    f_batch, _ = BatchTopK(cfg, t).forward(x)
    theta = float(f_batch[f_batch > 0].min())
    sae = load_sae(write(tmp_path, cfg, {**t, "threshold": torch.tensor(theta)}, pt=False))
    f, _ = stitchkit_outputs(sae, x)
    assert sae.activation == "batchtopk"
    # every feature the batch rule keeps, except the threshold's own (strict >), stays
    assert int((f != 0).sum()) == int((f_batch != 0).sum()) - 1
    assert bool(((f != 0) <= (f_batch != 0)).all())


def test_early_config_ties_the_decoder_and_follows_use_encoder_bias(tmp_path):
    cfg = config(sae_type="topk", tied_weights=True, use_encoder_bias=True, activation="relu")
    t = state(jumprelu_key=None)  # its W_dec is a stale initial value the writer never used
    sae, _ = check(write(tmp_path, cfg, t), cfg, t, batch(D_IN))
    assert any("tied_weights" in n for n in sae.load_notes)
    cfg = config(sae_type="vanilla", use_encoder_bias=False)
    check(write(tmp_path / "nobias", cfg, t), cfg, t, batch(D_IN))


REFUSED = [
    (dict(sae_type="batchtopk"), UnsupportedError, "without a 'threshold' tensor"),
    (dict(input_unit_norm=True, use_encoder_bias=True), UnsupportedError, "early BatchTopK config"),
    (dict(sae_type="quantile"), UnsupportedError, "sae_type 'quantile'"),
    (dict(activation="gelu", use_encoder_bias=True), UnsupportedError, "activation 'gelu'"),
]


@pytest.mark.parametrize("fields,error,match", REFUSED, ids=[r[2] for r in REFUSED])
def test_refused_naming_the_field(tmp_path, fields, error, match):
    d = write(tmp_path, config(**fields), state(jumprelu_key=None))
    with pytest.raises(error, match=match) as caught:
        load_sae(d)
    assert str(d) in str(caught.value)


def test_a_pickle_that_carries_code_is_refused(tmp_path):
    d = write(tmp_path, config(), state(jumprelu_key=None))
    torch.save({"W_enc": torch.zeros(1), "code": torch.nn.ReLU()}, d / "sae.pt")
    with pytest.raises(SAEFormatError, match="weights-only"):
        load_sae(d)
