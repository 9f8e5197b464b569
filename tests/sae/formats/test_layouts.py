"""Every layout of stitchkit.sae.formats, laid out by hand as its library writes it, read by
load_sae and compared with that library's documented forward in float64 (tests/sae/formats/oracle).
The libraries themselves are the oracle in scripts/check_peers.py."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from stitchkit import SAEFormatError, UnsupportedError, load_sae
from tests.sae.formats.oracle import batch, layer_norm, rand, stitchkit_outputs, topk

D_IN, D_SAE, K = 12, 30, 4
TOL = dict(rtol=1e-5, atol=1e-5)


def close(sae, x, f_ref, x_ref):
    f, x_hat = stitchkit_outputs(sae, x)
    torch.testing.assert_close(f, f_ref, **TOL)
    torch.testing.assert_close(x_hat, x_ref, **TOL)


@pytest.mark.parametrize("k", [K, 1])
def test_sparsify_hookpoint_folder_and_checkpoint(tmp_path, k):
    g = torch.Generator().manual_seed(0)
    enc_w, enc_b, W_dec, b_dec = (
        rand(D_SAE, D_IN, gen=g),
        rand(D_SAE, gen=g),
        rand(D_SAE, D_IN, gen=g),
        rand(D_IN, gen=g),
    )
    hp = tmp_path / "ckpt" / "layers.3"
    hp.mkdir(parents=True)
    (hp / "cfg.json").write_text(
        json.dumps(
            {
                "activation": "topk",
                "expansion_factor": 32,
                "normalize_decoder": True,
                "num_latents": D_SAE,
                "k": k,
                "multi_topk": False,
                "skip_connection": False,
                "transcode": False,
                "d_in": D_IN,
            }
        )
    )
    save_file(
        {"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": W_dec, "b_dec": b_dec},
        str(hp / "sae.safetensors"),
    )
    x = batch(D_IN)
    pre = torch.relu((x - b_dec.double()) @ enc_w.double().T + enc_b.double())  # sparsify: TopK(ReLU(linear))
    f = topk(pre, k)
    for sae in (load_sae(hp), load_sae(tmp_path / "ckpt", hookpoint="layers.3")):
        assert sae.activation == "topk" and sae.k == k and sae.hook_name == "layers.3"
        close(sae, x, f, f @ W_dec.double() + b_dec.double())
    with pytest.raises(
        SAEFormatError, match=r"sparsify checkpoint with one SAE per hookpoint \['layers.3'\]"
    ):
        load_sae(tmp_path / "ckpt")
    cfg = json.loads((hp / "cfg.json").read_text())
    for field, msg in (
        ("transcode", "transcoder"),
        ("skip_connection", "skip path"),
        ("activation", "groupmax"),
    ):
        cfg2 = dict(cfg, **{field: "groupmax" if field == "activation" else True})
        (hp / "cfg.json").write_text(json.dumps(cfg2))
        with pytest.raises(UnsupportedError, match=msg):
            load_sae(hp)


def _dl_dir(tmp_path, cls, sd):
    d = tmp_path / cls
    d.mkdir()
    torch.save(sd, d / "ae.pt")
    (d / "config.json").write_text(
        json.dumps(
            {
                "trainer": {
                    "dict_class": cls,
                    "activation_dim": D_IN,
                    "dict_size": D_SAE,
                    "submodule_name": "resid_3",
                }
            }
        )
    )
    return d


def test_dictionary_learning_every_class(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = batch(D_IN)
    enc_w, enc_b, dec_w, b = (
        rand(D_SAE, D_IN, gen=g),
        rand(D_SAE, gen=g),
        rand(D_IN, D_SAE, gen=g),
        rand(D_IN, gen=g),
    )
    E, eb, Dd, bb = enc_w.double(), enc_b.double(), dec_w.double(), b.double()

    # AutoEncoder: relu; from_pretrained normalises decoder columns and rescales the encoder
    d = _dl_dir(
        tmp_path,
        "AutoEncoder",
        {"bias": b, "encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w},
    )
    n = Dd.norm(dim=0)
    f = torch.relu((x - bb) @ E.T + eb) * n
    close(load_sae(d), x, f, f @ (Dd / n).T + bb)
    # AutoEncoderTopK: topk of relu; BatchTopKSAE: relu * (relu > threshold)
    sd = {
        "k": torch.tensor(K, dtype=torch.int),
        "threshold": torch.tensor(0.4),
        "encoder.weight": enc_w,
        "encoder.bias": enc_b,
        "decoder.weight": dec_w,
        "b_dec": b,
    }
    post = torch.relu((x - bb) @ E.T + eb)
    f = topk(post, K)
    close(load_sae(_dl_dir(tmp_path, "AutoEncoderTopK", sd)), x, f, f @ Dd.T + bb)
    f = post * (post > 0.4)
    bt = load_sae(_dl_dir(tmp_path, "BatchTopKSAE", sd))
    assert bt.activation == "batchtopk" and bt.k == K
    close(bt, x, f, f @ Dd.T + bb)
    # Matryoshka: W_enc/W_dec as parameters, the same thresholded encode
    sd = {
        "k": torch.tensor(K, dtype=torch.int),
        "threshold": torch.tensor(0.4),
        "group_sizes": torch.tensor([10, 20]),
        "W_enc": enc_w.T.contiguous(),
        "b_enc": enc_b,
        "W_dec": dec_w.T.contiguous(),
        "b_dec": b,
    }
    close(load_sae(_dl_dir(tmp_path, "MatryoshkaBatchTopKSAE", sd)), x, f, f @ Dd.T + bb)
    # JumpReLU: no b_dec at the input
    th = rand(D_SAE, gen=g).abs()
    sd = {
        "W_enc": enc_w.T.contiguous(),
        "b_enc": enc_b,
        "W_dec": dec_w.T.contiguous(),
        "b_dec": b,
        "threshold": th,
    }
    pre = x @ E.T + eb
    f = torch.relu(pre * (pre > th.double()))
    jr = load_sae(_dl_dir(tmp_path, "JumpReluAutoEncoder", sd))
    assert not jr.apply_b_dec_to_input
    close(jr, x, f, f @ Dd.T + bb)
    # Gated: gate and magnitude paths
    gb, mb, rm = rand(D_SAE, gen=g), rand(D_SAE, gen=g), rand(D_SAE, gen=g)
    sd = {
        "decoder_bias": b,
        "encoder.weight": enc_w,
        "r_mag": rm,
        "gate_bias": gb,
        "mag_bias": mb,
        "decoder.weight": dec_w,
    }
    x_enc = (x - bb) @ E.T
    f = (x_enc + gb.double() > 0) * torch.relu(rm.double().exp() * x_enc + mb.double())
    close(load_sae(_dl_dir(tmp_path, "GatedAutoEncoder", sd)), x, f, f @ Dd.T + bb)


def test_dictionary_learning_needs_a_class_and_never_runs_code(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    sd = {
        "k": torch.tensor(K),
        "threshold": torch.tensor(0.1),
        "encoder.weight": torch.zeros(3, 2),
        "encoder.bias": torch.zeros(3),
        "decoder.weight": torch.zeros(2, 3),
        "b_dec": torch.zeros(2),
    }
    torch.save(sd, d / "ae.pt")
    with pytest.raises(SAEFormatError, match="cannot tell the dictionary class"):
        load_sae(d)

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"encoder.weight": Boom()}, d / "ae.pt")
    with pytest.raises(SAEFormatError, match="never loads"):
        load_sae(d)


def test_gemma_scope_params_npz(tmp_path):
    g = torch.Generator().manual_seed(2)
    p = {
        "W_enc": rand(D_IN, D_SAE, gen=g),
        "W_dec": rand(D_SAE, D_IN, gen=g),
        "b_enc": rand(D_SAE, gen=g),
        "b_dec": rand(D_IN, gen=g),
        "threshold": rand(D_SAE, gen=g).abs(),
    }
    d = tmp_path / "layer_3" / "width_16k" / "average_l0_10"
    d.mkdir(parents=True)
    np.savez(d / "params.npz", **{k: v.numpy() for k, v in p.items()})
    x = batch(D_IN)
    pre = x @ p["W_enc"].double() + p["b_enc"].double()  # no b_dec at the input
    f = torch.relu(pre) * (pre > p["threshold"].double())
    for src in (d, d / "params.npz"):
        sae = load_sae(src, hook_name="blocks.3.hook_resid_post")
        assert sae.name == "layer_3/width_16k/average_l0_10" and sae.hook_name == "blocks.3.hook_resid_post"
        close(sae, x, f, f @ p["W_dec"].double() + p["b_dec"].double())
    np.savez(d / "params.npz", **{k: v.numpy() for k, v in p.items() if k != "threshold"})
    with pytest.raises(SAEFormatError, match=r"params.npz: tensor 'threshold' is missing"):
        load_sae(d)


@pytest.mark.parametrize("scale", [1.0, 1e-3])  # small: the layer norm's eps is then visible
@pytest.mark.parametrize("act", ["ReLU", "TopK"])
def test_openai_state_dict(tmp_path, act, scale):
    g = torch.Generator().manual_seed(4)
    sd = {
        "pre_bias": rand(D_IN, gen=g),
        "latent_bias": rand(D_SAE, gen=g),
        "encoder.weight": rand(D_SAE, D_IN, gen=g),
        "decoder.weight": rand(D_IN, D_SAE, gen=g),
        "stats_last_nonzero": torch.zeros(D_SAE, dtype=torch.long),
        "activation": act,
    }
    if act == "TopK":
        sd["activation_state_dict"] = {"k": K, "postact_fn": "ReLU"}
    torch.save(sd, tmp_path / "layer_8.pt")
    x = batch(D_IN) * scale
    # latents = activation(encoder(x - pre_bias) + latent_bias); recons = decoder(latents) + pre_bias,
    # TopK autoencoders layer-normalise the input (model.py: normalize = activation == "TopK")
    xn, mu, std = layer_norm(x) if act == "TopK" else (x, 0.0, 1.0)
    pre = (xn - sd["pre_bias"].double()) @ sd["encoder.weight"].double().T + sd["latent_bias"].double()
    f = topk(pre, K) if act == "TopK" else torch.relu(pre)
    rec = (f @ sd["decoder.weight"].double().T + sd["pre_bias"].double()) * std + mu
    sae = load_sae(tmp_path / "layer_8.pt")
    assert sae.input_norm == ("layer_norm" if act == "TopK" else "none")
    close(sae, x, f, rec)
    with pytest.raises(SAEFormatError, match="tensor 'pre_bias' is missing"):
        torch.save({k: v for k, v in sd.items() if k != "pre_bias"}, tmp_path / "bad.pt")
        load_sae(tmp_path / "bad.pt")


def test_a_stated_input_norm_is_refused_by_measurements_until_normalised(tmp_path):
    import stitchkit as sk
    from stitchkit.sae.model import normalize_input

    sae = sk.SAE(D_IN, D_SAE, input_norm="layer_norm")
    x = batch(D_IN).float()
    with pytest.raises(UnsupportedError, match="input_norm='layer_norm'"):
        sk.evaluate(sae, x)
    xn, _, _ = normalize_input(x, "layer_norm")
    assert sk.evaluate(sae.in_normalized_space(), xn).mse >= 0
    back = load_sae(sk.save_sae(sae, tmp_path / "ln"))
    assert back.input_norm == "layer_norm"
    assert json.loads((tmp_path / "ln" / "cfg.json").read_text())["normalize_activations"] == "layer_norm"


def test_gemma_scope_scaling_factor_other_than_one_is_refused(tmp_path):
    g = torch.Generator().manual_seed(2)
    p = {k: rand(*s, gen=g).abs() for k, s in
         (("W_enc", (D_IN, D_SAE)), ("W_dec", (D_SAE, D_IN)), ("b_enc", (D_SAE,)), ("b_dec", (D_IN,)),
          ("threshold", (D_SAE,)))}  # fmt: skip
    arrays = {k: v.numpy() for k, v in p.items()}
    np.savez(tmp_path / "params.npz", **arrays, scaling_factor=np.ones(D_SAE))
    assert load_sae(tmp_path / "params.npz").d_sae == D_SAE  # all ones: the features are unscaled
    np.savez(tmp_path / "params.npz", **arrays, scaling_factor=np.full(D_SAE, 2.0))
    with pytest.raises(UnsupportedError, match="'scaling_factor' is not all ones"):
        load_sae(tmp_path / "params.npz")


def test_dictionary_learning_transcoder_is_refused(tmp_path):
    g = torch.Generator().manual_seed(1)
    sd = {"encoder.weight": rand(D_SAE, D_IN, gen=g), "encoder.bias": rand(D_SAE, gen=g),
          "decoder.weight": rand(D_IN, D_SAE, gen=g), "bias": rand(D_IN, gen=g)}  # fmt: skip
    d = _dl_dir(tmp_path, "AutoEncoder", sd)
    cfg = json.loads((d / "config.json").read_text())
    for io, loads in (("out", True), ("in_and_out", False)):
        (d / "config.json").write_text(json.dumps({**cfg, "buffer": {"io": io, "ctx_len": 8}}))
        if loads:
            assert load_sae(d).d_sae == D_SAE
        else:
            with pytest.raises(UnsupportedError, match="buffer.io is 'in_and_out': a transcoder"):
                load_sae(d)
