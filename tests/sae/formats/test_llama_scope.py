"""Llama Scope as the code that wrote it reads it: files laid out as lm_saes (384b6e8c) saves
them, read by load_sae, compared with lm_saes' own from_config + forward re-written in float64
(tests/sae/formats/oracle.LmSaes384b6e8c). The decoders here are not unit-norm, as the released
ones are not, so the load-time decoder-norm rescale changes every answer it touches."""

import json

import pytest
import torch
from safetensors.torch import save_file

from stitchkit import SAEFormatError, UnsupportedError, load_sae
from tests.sae.formats.oracle import LmSaes384b6e8c, batch, rand, stitchkit_outputs

D_IN, D_SAE, K = 12, 30, 4
TOL = dict(rtol=1e-5, atol=1e-5)


def weights(seed=3, bias=True):
    g = torch.Generator().manual_seed(seed)
    norms = 0.5 + 1.5 * torch.rand(D_SAE, generator=g)  # decoder norms 0.5..2, like the release's ~1.5
    dec = rand(D_IN, D_SAE, gen=g)
    t = {
        "encoder.weight": rand(D_SAE, D_IN, gen=g),
        "encoder.bias": rand(D_SAE, gen=g),
        "decoder.weight": dec / dec.norm(dim=0) * norms,
    }
    if bias:
        t["decoder.bias"] = rand(D_IN, gen=g)
    return t


def write(tmp_path, cfg, t, name="L3R-8x"):
    d = tmp_path / name
    (d / "checkpoints").mkdir(parents=True, exist_ok=True)
    base = {"d_model": D_IN, "d_sae": D_SAE, "hook_point_in": "blocks.3.hook_resid_post"}
    (d / "hyperparams.json").write_text(json.dumps({**base, **cfg}))
    save_file(t, str(d / "checkpoints" / "final.safetensors"))
    return d


def check(d, cfg, t, x):
    sae = load_sae(d)
    f_ref, x_ref = LmSaes384b6e8c({"d_model": D_IN, **cfg}, t).forward(x)
    f, x_hat = stitchkit_outputs(sae, x)
    torch.testing.assert_close(f, f_ref, **TOL)
    torch.testing.assert_close(x_hat, x_ref, **TOL)
    return sae, f_ref


DATASET = {"norm_activation": "dataset-wise", "dataset_average_activation_norm": {"in": 6.0, "out": 9.0}}


@pytest.mark.parametrize("act", ["relu", "jumprelu", "topk"])
@pytest.mark.parametrize("norm", ["dataset-wise", "token-wise", "inference"])
@pytest.mark.parametrize("pre_bias", [False, True])
def test_every_field_as_lm_saes_reads_it(tmp_path, act, norm, pre_bias):
    cfg = {
        "act_fn": act,
        "jump_relu_threshold": 0.15 if act == "jumprelu" else 0.0,
        "top_k": K,
        "apply_decoder_bias_to_pre_encoder": pre_bias,
        "sparsity_include_decoder_norm": True,
        **(DATASET if norm == "dataset-wise" else {"norm_activation": norm}),
    }
    t = weights()
    sae, f_ref = check(write(tmp_path, cfg, t), cfg, t, batch(D_IN))
    assert sae.activation == act and sae.apply_b_dec_to_input == pre_bias
    assert sae.input_norm == ("unit_norm" if norm == "token-wise" else "none")
    assert sae.hook_name == "blocks.3.hook_resid_post"
    assert 0 < int((f_ref != 0).sum()) < f_ref.numel()  # the gate both keeps and drops


def test_defaults_are_lm_saes_defaults(tmp_path):
    # a file that states only its sizes: relu, token-wise, b_dec at the input, decoder norms folded
    t = weights()
    sae, _ = check(write(tmp_path, {}, t), {}, t, batch(D_IN))
    assert sae.activation == "relu" and sae.input_norm == "unit_norm" and sae.apply_b_dec_to_input


def test_the_decoder_norm_rescale_comes_after_the_dataset_fold(tmp_path):
    """The release's route: a TopK SAE post-processed into a JumpReLU whose one threshold is the
    (tokens * k)-th largest pre-activation of a batch, in the rescaled units. Read as lm_saes reads
    it, it fires on about k features per token of that batch, as it was made to."""
    t = weights(seed=7)
    topk_cfg = {"act_fn": "topk", "top_k": K, "apply_decoder_bias_to_pre_encoder": False, **DATASET}
    x = batch(D_IN, n=64, seed=11)
    theta = LmSaes384b6e8c({"d_model": D_IN, **topk_cfg}, t).topk_to_jumprelu_threshold(x)
    cfg = {**topk_cfg, "act_fn": "jumprelu", "jump_relu_threshold": theta}
    sae, f_ref = check(write(tmp_path, cfg, t), cfg, t, x)
    l0 = (stitchkit_outputs(sae, x)[0] != 0).sum(-1).double().mean()
    assert l0 == (f_ref != 0).sum(-1).double().mean()
    assert K - 1 <= l0 <= K  # strict >: the (tokens * k)-th value itself is dropped
    # the rescale matters here: the same threshold on the un-rescaled pre-activations gates otherwise
    unscaled = LmSaes384b6e8c({"d_model": D_IN, **cfg, "sparsity_include_decoder_norm": False}, t)
    assert not torch.equal(unscaled.encode(x) != 0, f_ref != 0)


def test_topk_with_a_threshold_still_runs_topk(tmp_path):
    # lm_saes relabels such a config jumprelu after building its topk activation: topk runs
    cfg = {"act_fn": "topk", "top_k": K, "jump_relu_threshold": 0.3, "norm_activation": "inference"}
    t = weights()
    sae, f_ref = check(write(tmp_path, cfg, t), cfg, t, batch(D_IN))
    assert sae.activation == "topk" and sae.k == K
    assert bool(((f_ref != 0).sum(-1) == K).all())


def test_no_decoder_bias(tmp_path):
    cfg = {"use_decoder_bias": False, "norm_activation": "token-wise", "act_fn": "jumprelu",
           "jump_relu_threshold": 0.1}  # fmt: skip
    t = weights(bias=False)
    sae, _ = check(write(tmp_path, cfg, t), cfg, t, batch(D_IN))
    assert not bool(sae.b_dec.any())


def test_topk_without_the_rescale_on_unit_decoders(tmp_path):
    cfg = {
        "act_fn": "topk",
        "top_k": K,
        "sparsity_include_decoder_norm": False,
        "norm_activation": "inference",
    }
    t = weights()
    t["decoder.weight"] = t["decoder.weight"] / t["decoder.weight"].norm(dim=0)
    check(write(tmp_path, cfg, t), cfg, t, batch(D_IN))


def test_size_from_the_expansion_factor(tmp_path):
    d = write(tmp_path, {"expansion_factor": D_SAE / D_IN}, weights())
    cfg = json.loads((d / "hyperparams.json").read_text())
    del cfg["d_sae"]
    (d / "hyperparams.json").write_text(json.dumps(cfg))
    assert load_sae(d).d_sae == D_SAE


def test_bf16_file_keeps_its_dtype(tmp_path):
    t = {k: v.bfloat16() for k, v in weights().items()}
    d = write(tmp_path, {"dtype": "torch.bfloat16", "norm_activation": "inference"}, t)
    assert load_sae(d).dtype == torch.bfloat16


REFUSED = [
    ({"use_glu_encoder": True}, {}, UnsupportedError, "use_glu_encoder"),
    ({"act_fn": "sigmoid"}, {}, UnsupportedError, "act_fn 'sigmoid'"),
    ({"norm_activation": "batch-wise"}, {}, UnsupportedError, "norm_activation 'batch-wise'"),
    ({"act_fn": "jumprelu", "jump_relu_threshold": -0.1}, {}, UnsupportedError, "jump_relu_threshold"),
    ({"act_fn": "jumprelu", "jump_relu_threshold": "0.1"}, {}, SAEFormatError, "jump_relu_threshold"),
    ({"act_fn": "topk", "sparsity_include_decoder_norm": False}, {}, UnsupportedError,
     "sparsity_include_decoder_norm false"),
    ({"sparsity_include_decoder_norm": "yes"}, {}, SAEFormatError, "sparsity_include_decoder_norm"),
    ({"use_decoder_bias": False, **DATASET}, {"drop_bias": True}, UnsupportedError, "use_decoder_bias false"),
    ({"use_decoder_bias": False}, {}, SAEFormatError, "use_decoder_bias is false"),
    ({"norm_activation": "dataset-wise"}, {}, SAEFormatError, "dataset_average_activation_norm.in"),
    ({**DATASET, "dataset_average_activation_norm": {"in": 6.0, "out": 0}}, {}, SAEFormatError,
     "dataset_average_activation_norm.out"),
    ({"hook_point_out": "blocks.3.hook_mlp_out"}, {}, UnsupportedError, "a transcoder"),
    ({}, {"zero_feature": 5}, UnsupportedError, "feature 5 has a zero or non-finite decoder column"),
]  # fmt: skip


@pytest.mark.parametrize("cfg,change,error,match", REFUSED, ids=[r[3] for r in REFUSED])
def test_refused_naming_the_field(tmp_path, cfg, change, error, match):
    t = weights(bias=not change.get("drop_bias"))
    if "zero_feature" in change:
        t["decoder.weight"][:, change["zero_feature"]] = 0
    d = write(tmp_path, cfg, t)
    with pytest.raises(error, match=match) as caught:
        load_sae(d)
    assert str(d) in str(caught.value)
