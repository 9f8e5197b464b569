"""Broken files in every layout: a missing, truncated, mis-shaped, non-floating-point or NaN
tensor, a config field of any value, fail with a StitchkitError naming the file, or load an SAE
that runs. Derandomised so CI is deterministic."""

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from stitchkit import StitchkitError, load_sae

D_IN, D_SAE = 5, 7


def _t(*shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)))


LAYOUTS = {
    "sparsify": (
        {"activation": "topk", "num_latents": D_SAE, "k": 2, "d_in": D_IN},
        {"encoder.weight": (D_SAE, D_IN), "encoder.bias": (D_SAE,), "W_dec": (D_SAE, D_IN), "b_dec": (D_IN,)},
    ),
    "dictionary_learning": (
        {"trainer": {"dict_class": "BatchTopKSAE", "k": 2}},
        {
            "encoder.weight": (D_SAE, D_IN),
            "encoder.bias": (D_SAE,),
            "decoder.weight": (D_IN, D_SAE),
            "b_dec": (D_IN,),
            "threshold": (),
            "k": "int",
        },
    ),
    "gemma": (
        None,
        {
            "W_enc": (D_IN, D_SAE),
            "W_dec": (D_SAE, D_IN),
            "b_enc": (D_SAE,),
            "b_dec": (D_IN,),
            "threshold": (D_SAE,),
        },
    ),
    "llama": (
        {
            "d_model": D_IN,
            "d_sae": D_SAE,
            "act_fn": "jumprelu",
            "jump_relu_threshold": 0.1,
            "hook_point_in": "h",
            "norm_activation": "dataset-wise",
            "dataset_average_activation_norm": {"in": 3.0, "out": 3.0},
        },
        {
            "encoder.weight": (D_SAE, D_IN),
            "encoder.bias": (D_SAE,),
            "decoder.weight": (D_IN, D_SAE),
            "decoder.bias": (D_IN,),
        },
    ),
    "llamascopium": (
        {
            "sae_type": "sae",
            "d_model": D_IN,
            "expansion_factor": D_SAE / D_IN,
            "act_fn": "jumprelu",
            "hook_point_in": "h",
            "hook_point_out": "h",
        },
        {
            "W_E": (D_IN, D_SAE),
            "b_E": (D_SAE,),
            "W_D": (D_SAE, D_IN),
            "b_D": (D_IN,),
            "activation_function.log_jumprelu_threshold": (D_SAE,),
            "dataset_average_activation_norm.h": (),
        },
    ),
    "openai": (
        None,
        {
            "pre_bias": (D_IN,),
            "latent_bias": (D_SAE,),
            "encoder.weight": (D_SAE, D_IN),
            "decoder.weight": (D_IN, D_SAE),
        },
    ),
}


def write(root, layout, cfg, tensors):
    if layout == "sparsify":
        d = root / "hp"
        d.mkdir()
        (d / "cfg.json").write_text(json.dumps(cfg))
        save_file(tensors, str(d / "sae.safetensors"))
        return d, d / "sae.safetensors"
    if layout == "dictionary_learning":
        d = root / "dl"
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        torch.save(tensors, d / "ae.pt")
        return d, d / "ae.pt"
    if layout == "gemma":
        np.savez(root / "params.npz", **{k: v.numpy() for k, v in tensors.items()})
        return root, root / "params.npz"
    if layout == "llama":
        (root / "checkpoints").mkdir()
        (root / "hyperparams.json").write_text(json.dumps(cfg))
        save_file(tensors, str(root / "checkpoints" / "final.safetensors"))
        return root, root / "checkpoints" / "final.safetensors"
    if layout == "llamascopium":
        (root / "config.json").write_text(json.dumps(cfg))
        save_file(tensors, str(root / "sae_weights.safetensors"))
        return root, root / "sae_weights.safetensors"
    torch.save({**tensors, "activation": "ReLU"}, root / "sae.pt")
    return root / "sae.pt", root / "sae.pt"


def valid(layout):
    cfg, shapes = LAYOUTS[layout]
    tensors = {
        k: (
            torch.tensor(2, dtype=torch.int32)
            if s == "int"
            else _t(*s).abs() + 2.0
            if k.startswith("dataset_average")
            else _t(*s).abs() * 0.3
            if k == "threshold"
            else _t(*s)
        )
        for k, s in shapes.items()
    }
    return (json.loads(json.dumps(cfg)) if cfg else None), tensors


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_loads_when_intact(tmp_path, layout):
    cfg, tensors = valid(layout)
    src, _ = write(tmp_path, layout, cfg, tensors)
    sae = load_sae(src)
    assert (sae.d_in, sae.d_sae) == (D_IN, D_SAE)


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 9),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.lists(st.integers(0, 3), max_size=2),
)
_mutation = st.sampled_from(["drop", "reshape", "int", "nan", "scalar"])


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    layout=st.sampled_from(sorted(LAYOUTS)),
    which=st.integers(0, 10),
    mutation=_mutation,
    field_value=_values,
    cut=st.integers(0, 3000),
    what=st.sampled_from(["tensor", "field", "truncate"]),
)
def test_broken_files_fail_only_with_stitchkit_errors(
    tmp_path_factory, layout, which, mutation, field_value, cut, what
):
    root = tmp_path_factory.mktemp("fz")
    cfg, tensors = valid(layout)
    if what == "tensor":
        key = sorted(tensors)[which % len(tensors)]
        t = tensors[key]
        if mutation == "drop":
            del tensors[key]
        elif mutation == "reshape":
            tensors[key] = torch.zeros(t.numel() + 1)
        elif mutation == "int":
            tensors[key] = t.to(torch.int64)
        elif mutation == "nan":
            tensors[key] = torch.full_like(t.float(), float("nan"))
        else:
            tensors[key] = torch.tensor(1.0)
    elif what == "field" and cfg:
        target = cfg["trainer"] if "trainer" in cfg else cfg
        key = sorted(target)[which % len(target)]
        target[key] = field_value
    src, weights = write(root, layout, cfg, tensors)
    if what == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: cut % max(len(data), 1)])
    try:
        sae = load_sae(src)
    except StitchkitError as e:
        assert str(root) in str(e) or "SAE" in str(e)
        return
    sae.encode(torch.randn(2, sae.d_in))
