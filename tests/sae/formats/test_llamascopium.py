"""llamascopium 2.x as the code that wrote it reads it: folders laid out as its save_pretrained +
save_hyperparameters write them, read by load_sae, compared with its from_pretrained +
normalize_activations + forward re-written in float64 (tests/sae/formats/oracle.Llamascopium2).
The library itself writes and reads such folders in scripts/check_peers.py. Decoders here are not
unit-norm, so sparsity_include_decoder_norm changes every gate it touches."""

import json

import pytest
import torch
from safetensors.torch import save_file

from stitchkit import SAEFormatError, UnsupportedError, load_sae
from tests.sae.formats.oracle import Llamascopium2, batch, rand, stitchkit_outputs

D_IN, D_SAE, K = 12, 36, 4
HOOK = "blocks.3.hook_resid_post"
TOL = dict(rtol=1e-5, atol=1e-5)


def weights(seed=3, bias=True, norm=6.0):
    g = torch.Generator().manual_seed(seed)
    norms = 0.5 + 1.5 * torch.rand(D_SAE, generator=g)
    dec = rand(D_SAE, D_IN, gen=g)
    t = {
        "W_E": rand(D_IN, D_SAE, gen=g),
        "b_E": rand(D_SAE, gen=g),
        "W_D": dec / dec.norm(dim=1, keepdim=True) * norms[:, None],
        "activation_function.log_jumprelu_threshold": rand(D_SAE, gen=g) - 0.5,
        f"dataset_average_activation_norm.{HOOK}": torch.tensor(norm),
    }
    if bias:
        t["b_D"] = rand(D_IN, gen=g)
    return t


def config(**fields):
    return {
        "sae_type": "sae",
        "d_model": D_IN,
        "expansion_factor": D_SAE / D_IN,
        "hook_point_in": HOOK,
        "hook_point_out": HOOK,
        **fields,
    }


def write(tmp_path, cfg, t, name="L3R"):
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in t.items()}, str(d / "sae_weights.safetensors"))
    return d


def check(d, cfg, t, x):
    sae = load_sae(d)
    assert sae.source_format == "llamascopium"
    f_ref, x_ref = Llamascopium2(cfg, t).forward(x)
    f, x_hat = stitchkit_outputs(sae, x)
    torch.testing.assert_close(f, f_ref, **TOL)
    torch.testing.assert_close(x_hat, x_ref, **TOL)
    return sae, f_ref


@pytest.mark.parametrize("act", ["relu", "jumprelu", "topk"])
@pytest.mark.parametrize("norm", ["dataset-wise", "token-wise", "inference"])
@pytest.mark.parametrize("by_norm", [True, False])
def test_every_field_as_llamascopium_reads_it(tmp_path, act, norm, by_norm):
    cfg = config(act_fn=act, top_k=K, norm_activation=norm, sparsity_include_decoder_norm=by_norm)
    t = weights()
    if act == "topk" and by_norm:
        t["W_D"] = t["W_D"] / t["W_D"].norm(dim=1, keepdim=True)  # the one topk form that loads
    if act != "jumprelu":
        del t["activation_function.log_jumprelu_threshold"]
    sae, f_ref = check(write(tmp_path, cfg, t), cfg, t, batch(D_IN))
    assert sae.activation == act and not sae.apply_b_dec_to_input
    assert sae.input_norm == ("unit_norm" if norm == "token-wise" else "none")
    assert sae.hook_name == HOOK
    assert 0 < int((f_ref != 0).sum()) < f_ref.numel()  # the gate both keeps and drops


def test_defaults_are_llamascopium_defaults(tmp_path):
    # only the required fields: relu, dataset-wise, gated by the decoder norm
    t = weights()
    del t["activation_function.log_jumprelu_threshold"]
    cfg = config()
    sae, _ = check(write(tmp_path, cfg, t), cfg, t, batch(D_IN))
    assert sae.activation == "relu" and sae.input_norm == "none"


def test_the_decoder_norm_moves_the_jumprelu_gate(tmp_path):
    cfg = config(act_fn="jumprelu", norm_activation="inference")
    t = weights(seed=7)
    x = batch(D_IN, n=64, seed=11)
    sae, f_ref = check(write(tmp_path, cfg, t), cfg, t, x)
    without = Llamascopium2({**cfg, "sparsity_include_decoder_norm": False}, t).encode(x)
    assert not torch.equal(without != 0, f_ref != 0)


def test_no_decoder_bias(tmp_path):
    cfg = config(use_decoder_bias=False, act_fn="jumprelu")
    t = weights(bias=False)
    sae, _ = check(write(tmp_path, cfg, t), cfg, t, batch(D_IN))
    assert not bool(sae.b_dec.any())


def test_torch_checkpoint(tmp_path):
    cfg = config(norm_activation="token-wise")
    t = weights()
    del t["activation_function.log_jumprelu_threshold"]
    d = tmp_path / "pt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    torch.save({"sae": t, "version": "2.0.0b34"}, d / "sae_weights.pt")
    check(d, cfg, t, batch(D_IN))


REFUSED = [
    (dict(sae_type="crosscoder"), {}, UnsupportedError, "sae_type 'crosscoder'"),
    (dict(use_glu_encoder=True), {}, UnsupportedError, "use_glu_encoder"),
    (dict(act_fn="batchtopk"), {}, UnsupportedError, "act_fn 'batchtopk'"),
    (dict(act_fn="layertopk"), {}, UnsupportedError, "act_fn 'layertopk'"),
    (dict(norm_activation="batch-wise"), {}, UnsupportedError, "norm_activation 'batch-wise'"),
    (dict(act_fn="topk", top_k=K), {}, UnsupportedError, "sparsity_include_decoder_norm true"),
    (dict(sparsity_include_decoder_norm="yes"), {}, SAEFormatError, "sparsity_include_decoder_norm"),
    (dict(use_decoder_bias=False), {}, SAEFormatError, "use_decoder_bias is false"),
    (dict(), {"norm": 0.0}, SAEFormatError, "dataset_average_activation_norm"),
    (dict(), {"norm": float("nan")}, SAEFormatError, "dataset_average_activation_norm"),
    (dict(hook_point_out="blocks.3.hook_mlp_out"), {}, UnsupportedError, "a transcoder"),
    (dict(hook_point_in=None), {}, SAEFormatError, "hook_point_in"),
    (dict(expansion_factor=0), {}, SAEFormatError, "expansion_factor"),
    (dict(act_fn="jumprelu"), {"zero_feature": 5}, UnsupportedError, "feature 5 has a zero"),
    (dict(act_fn="jumprelu"), {"drop": "activation_function.log_jumprelu_threshold"}, SAEFormatError,
     "log_jumprelu_threshold"),
    (dict(), {"shape": "W_E"}, SAEFormatError, "tensor 'W_E' has shape"),
]  # fmt: skip


@pytest.mark.parametrize("fields,change,error,match", REFUSED, ids=[r[3] for r in REFUSED])
def test_refused_naming_the_field(tmp_path, fields, change, error, match):
    t = weights(norm=change.get("norm", 6.0))
    if "zero_feature" in change:
        t["W_D"][change["zero_feature"]] = 0
    if "drop" in change:
        del t[change["drop"]]
    if "shape" in change:
        t[change["shape"]] = t[change["shape"]].t()
    cfg = config(**fields)
    if fields.get("act_fn") != "jumprelu" and "drop" not in change:
        t.pop("activation_function.log_jumprelu_threshold")
    d = write(tmp_path, cfg, t)
    with pytest.raises(error, match=match) as caught:
        load_sae(d)
    assert str(d) in str(caught.value)


def test_a_threshold_without_jumprelu_is_refused(tmp_path):
    d = write(tmp_path, config(), weights())
    with pytest.raises(SAEFormatError, match="log_jumprelu_threshold"):
        load_sae(d)
