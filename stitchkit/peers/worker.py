"""Runs inside a peer library's own environment (sae-lens, eai-sparsify, dictionary-learning,
llamascopium), by path, never imported by stitchkit: it needs only that library, torch,
safetensors and numpy.

    python worker.py write LIB OUT          LIB's own code writes SAEs of every architecture it has
                                            (random weights) under OUT, a batch OUT/x.safetensors,
                                            each SAE's own outputs on it (OUT/<name>.ref.safetensors:
                                            f = encode(x), x_hat = forward(x)), and OUT/manifest.json
    python worker.py load LIB SAE X OUT [JSON]
                                            LIB's own loader reads SAE (JSON: loader options) and
                                            writes its f and x_hat on the batch X to OUT

stitchkit.peers compares those with stitchkit's reading of the same files.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

D_IN, D_SAE, N, K = 16, 48, 64, 5


def _randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not p.is_floating_point():
                continue
            v = torch.randn(p.shape, generator=gen, dtype=torch.float32) * (0.3 if p.dim() > 1 else 0.2)
            if "threshold" in name:
                v = v.abs() * 0.5
            if "r_mag" in name:
                v = v * 0.5
            p.copy_(v.to(p.dtype))


def _outputs(encode, forward, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {"f": encode(x).float().contiguous(), "x_hat": forward(x).float().contiguous()}


# -- SAELens --------------------------------------------------------------------------------------


def _saelens_load(path: str, opts: dict):
    from sae_lens import SAE

    if opts.get("loader") == "gemma_2":
        from sae_lens.loading.pretrained_sae_loaders import gemma_2_sae_huggingface_loader as loader
    elif opts.get("loader") == "llama_scope":
        from sae_lens.loading.pretrained_sae_loaders import llama_scope_sae_huggingface_loader as loader
    else:
        loader = None
    if loader is None:
        sae = SAE.load_from_disk(path, dtype=opts.get("dtype"))
    else:  # a pretrained loader, reading a hub cache laid out under HF_HUB_CACHE (offline)
        from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting

        cfg, state, _ = loader(
            repo_id=opts["repo_id"],
            folder_name=opts["folder"],
            device="cpu",
            cfg_overrides=opts.get("cfg_overrides"),
        )
        cfg = handle_config_defaulting(cfg)
        sae = SAE.from_dict(cfg)
        sae.load_state_dict(state)
    if opts.get("norm_scaling_factor"):
        sae.fold_activation_norm_scaling_factor(opts["norm_scaling_factor"])
    return sae.eval()


def _saelens_write(out: Path, x: torch.Tensor, gen: torch.Generator) -> list[dict]:
    import sae_lens as sl
    from sae_lens import SAE, TrainingSAE

    def cfg(cls, **kw):
        kw.setdefault("metadata", sl.saes.sae.SAEMetadata(hook_name="blocks.0.hook_resid_pre"))
        return cls(d_in=D_IN, d_sae=D_SAE, **kw).to_dict()

    S = sl.StandardSAEConfig
    rows = [
        ("standard", SAE, cfg(S), {}),
        ("standard-no-bdec", SAE, cfg(S, apply_b_dec_to_input=False), {}),
        ("standard-bf16", SAE, cfg(S, dtype="bfloat16"), {}),
        ("standard-fp16", SAE, cfg(S, dtype="float16"), {}),
        ("standard-layer-norm", SAE, cfg(S, normalize_activations="layer_norm"), {}),
        ("standard-unit-norm", SAE, cfg(S, normalize_activations="constant_norm_rescale"), {}),
        (
            "standard-scaled",
            SAE,
            cfg(S, normalize_activations="expected_average_only_in"),
            {"norm_scaling_factor": 2.5},
        ),
        ("topk", SAE, cfg(sl.TopKSAEConfig, k=K), {}),
        ("topk-rescaled", SAE, cfg(sl.TopKSAEConfig, k=K, rescale_acts_by_decoder_norm=True), {}),
        (  # SAELens folds the input scale before the decoder norms: the features shrink by c
            "topk-rescaled-scaled",
            SAE,
            cfg(
                sl.TopKSAEConfig,
                k=K,
                rescale_acts_by_decoder_norm=True,
                normalize_activations="expected_average_only_in",
            ),
            {"norm_scaling_factor": 2.5},
        ),
        ("jumprelu", SAE, cfg(sl.JumpReLUSAEConfig), {}),
        ("gated", SAE, cfg(sl.GatedSAEConfig), {}),
        ("batchtopk", TrainingSAE, cfg(sl.BatchTopKTrainingSAEConfig, k=K), {}),
        (
            "matryoshka-batchtopk",
            TrainingSAE,
            cfg(sl.MatryoshkaBatchTopKTrainingSAEConfig, k=K, matryoshka_widths=[16, 32, D_SAE]),
            {},
        ),
    ]
    manifest = []
    for name, base, c, opts in rows:
        sae = base.from_dict(c)
        _randomize(sae, gen)
        if name == "batchtopk" or name.startswith("matryoshka"):
            sae.topk_threshold = torch.tensor(0.3)
            sae.save_inference_model(out / name)
        else:
            sae.save_model(out / name)
        manifest.append({"name": name, "path": name, "load": opts, "oracle": opts})
    # the transcoder, which stitchkit refuses
    t = SAE.from_dict(cfg(sl.TranscoderConfig, d_out=D_IN, apply_b_dec_to_input=False))
    t.save_model(out / "transcoder")
    manifest.append({"name": "transcoder", "path": "transcoder", "expect_error": "UnsupportedError"})
    # Gemma Scope and Llama Scope files, read by SAELens' own loaders from a local hub cache
    cache = out / "hub"
    manifest += _scope_files(cache, gen)
    return manifest


def _hub_folder(cache: Path, repo_id: str) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    sha = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _scope_files(cache: Path, gen: torch.Generator) -> list[dict]:
    import numpy as np

    rows = []
    g_repo, g_folder = "google/gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_10"
    d = _hub_folder(cache, g_repo) / g_folder
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=gen) * 0.3,
        "W_dec": torch.randn(D_SAE, D_IN, generator=gen) * 0.3,
        "b_enc": torch.randn(D_SAE, generator=gen) * 0.2,
        "b_dec": torch.randn(D_IN, generator=gen) * 0.2,
        "threshold": torch.rand(D_SAE, generator=gen) * 0.3,
    }
    np.savez(d / "params.npz", **{k: v.numpy() for k, v in arrays.items()})
    overrides = {"d_in": D_IN, "d_sae": D_SAE}
    rows.append(
        {
            "name": "gemma-scope",
            "path": f"hf://{g_repo}/{g_folder}",
            "load": {},
            "oracle": {
                "loader": "gemma_2",
                "repo_id": g_repo,
                "folder": g_folder,
                "cfg_overrides": overrides,
            },
        }
    )
    l_repo, l_folder = "fnlp/Llama3_1-8B-Base-LXR-8x", "Llama3_1-8B-Base-L3R-8x"
    d = _hub_folder(cache, l_repo) / l_folder
    (d / "checkpoints").mkdir(parents=True, exist_ok=True)
    avg = D_IN**0.5  # c = 1: SAELens' features are lm_saes' times c (it scales b_enc, lm_saes not)
    (d / "hyperparams.json").write_text(
        json.dumps(
            {
                "d_model": D_IN,
                "d_sae": D_SAE,
                "act_fn": "jumprelu",
                "jump_relu_threshold": 0.1,
                "hook_point_in": "blocks.3.hook_resid_post",
                "hook_point_out": "blocks.3.hook_resid_post",
                "norm_activation": "dataset-wise",
                "dataset_average_activation_norm": {"in": avg, "out": avg},
                "sparsity_include_decoder_norm": True,
                "apply_decoder_bias_to_pre_encoder": False,
                "use_decoder_bias": True,
            }
        )
    )
    # Unit decoder columns and c = 1: the one case where SAELens' reader agrees with
    # the writer's (lm_saes rescales by the decoder norms, SAELens does not). This row is a
    # cross-check of SAELens' route, not Llama Scope's oracle: that is lm_saes' own load and
    # forward (stitchkit.sae.formats.llama_scope, tests/sae/formats/test_llama_scope.py).
    dec = torch.randn(D_IN, D_SAE, generator=gen)
    save_file(
        {
            "encoder.weight": torch.randn(D_SAE, D_IN, generator=gen) * 0.3,
            "encoder.bias": torch.randn(D_SAE, generator=gen) * 0.2,
            "decoder.weight": dec / dec.norm(dim=0),
            "decoder.bias": torch.randn(D_IN, generator=gen) * 0.2,
        },
        str(d / "checkpoints" / "final.safetensors"),
    )
    rows.append(
        {
            "name": "llama-scope",
            "path": f"hf://{l_repo}/{l_folder}",
            "load": {},
            "oracle": {
                "loader": "llama_scope",
                "repo_id": l_repo,
                "folder": l_folder,
                "cfg_overrides": {"dtype": "float32"},
                "norm_scaling_factor": D_IN**0.5 / avg,
            },
        }
    )
    return rows


# -- sparsify -----------------------------------------------------------------------------------


def _sparsify_load(path: str, opts: dict):
    from sparsify import SparseCoder

    return SparseCoder.load_from_disk(path).eval()


def _sparsify_functions(sae):
    def encode(x):
        out = sae.encode(x.to(sae.dtype))
        f = torch.zeros(x.shape[0], sae.num_latents, dtype=out.top_acts.dtype)
        return f.scatter(-1, out.top_indices, out.top_acts)

    def forward(x):
        out = sae.encode(x.to(sae.dtype))
        return sae.decode(out.top_acts, out.top_indices)

    return encode, forward


def _sparsify_write(out: Path, x: torch.Tensor, gen: torch.Generator) -> list[dict]:
    from sparsify import SparseCoder, SparseCoderConfig

    manifest = []
    ckpt = out / "sparsify-ckpt"
    for name, kw in (("layers.0", {}), ("layers.1", {"k": 3})):
        sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=kw.get("k", K)))
        _randomize(sae, gen)
        sae.save_to_disk(ckpt / name)
        manifest.append(
            {
                "name": f"sparsify-{name}",
                "path": "sparsify-ckpt",
                "load": {"hookpoint": name},
                "oracle_path": f"sparsify-ckpt/{name}",
            }
        )
    t = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K, transcode=True))
    t.save_to_disk(out / "sparsify-transcoder")
    manifest.append(
        {"name": "sparsify-transcoder", "path": "sparsify-transcoder", "expect_error": "UnsupportedError"}
    )
    return manifest


# -- dictionary_learning --------------------------------------------------------------------------


def _dl_classes():
    from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    return {
        "AutoEncoder": (AutoEncoder, lambda: AutoEncoder(D_IN, D_SAE)),
        "AutoEncoderTopK": (AutoEncoderTopK, lambda: AutoEncoderTopK(D_IN, D_SAE, K)),
        "BatchTopKSAE": (BatchTopKSAE, lambda: BatchTopKSAE(D_IN, D_SAE, K)),
        "MatryoshkaBatchTopKSAE": (
            MatryoshkaBatchTopKSAE,
            lambda: MatryoshkaBatchTopKSAE(D_IN, D_SAE, K, [16, 32]),
        ),
        "JumpReluAutoEncoder": (JumpReluAutoEncoder, lambda: JumpReluAutoEncoder(D_IN, D_SAE)),
        "GatedAutoEncoder": (GatedAutoEncoder, lambda: GatedAutoEncoder(D_IN, D_SAE)),
    }


def _dl_load(path: str, opts: dict):
    cls_name = json.loads((Path(path).parent / "config.json").read_text())["trainer"]["dict_class"]
    return _dl_classes()[cls_name][0].from_pretrained(path).eval()


def _dl_functions(ae):
    return ae.encode, lambda x: ae.decode(ae.encode(x))


def _dl_write(out: Path, x: torch.Tensor, gen: torch.Generator) -> list[dict]:
    manifest = []
    for cls_name, (_, make) in _dl_classes().items():
        ae = make()
        _randomize(ae, gen)
        if hasattr(ae, "threshold") and not isinstance(ae.threshold, torch.nn.Parameter):
            ae.threshold = torch.tensor(0.3)  # a trained batch-top-k threshold buffer
        d = out / f"dl-{cls_name}"
        d.mkdir(parents=True, exist_ok=True)
        torch.save(ae.state_dict(), d / "ae.pt")
        trainer = {
            "dict_class": cls_name,
            "activation_dim": D_IN,
            "dict_size": D_SAE,
            "k": K,
            "lm_name": "toy",
            "layer": 0,
            "submodule_name": "resid_post_layer_0",
        }
        (d / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"ctx_len": 8}}))
        manifest.append(
            {
                "name": f"dl-{cls_name}",
                "path": f"dl-{cls_name}",
                "load": {},
                "oracle_path": f"dl-{cls_name}/ae.pt",
            }
        )
    return manifest


# -- llamascopium (lm_saes 2.x) ---------------------------------------------------------------------

LLSP_HOOK = "blocks.0.hook_resid_pre"


def _llsp_load(path: str, opts: dict):
    from llamascopium.models.sparse_dictionary import SparseDictionary

    return SparseDictionary.from_pretrained(path).eval()


def _llsp_functions(sae):
    """llamascopium's own inference: normalize_activations on the input, encode (f, in the
    normalised space, as the library returns it), decode, then the output's scale undone."""
    hook_in, hook_out = sae.cfg.hook_point_in, sae.cfg.hook_point_out

    def scaled(x):
        batch, scale = sae.normalize_activations({hook_in: x.float()}, return_scale_factor=True)
        return batch[hook_in], scale

    def encode(x):
        return sae.encode(scaled(x)[0])

    def forward(x):
        xn, scale = scaled(x)
        return sae.decode(sae.encode(xn)) / scale[hook_out]

    return encode, forward


def _llsp_write(out: Path, x: torch.Tensor, gen: torch.Generator) -> list[dict]:
    from llamascopium.models.sae import SAEConfig, SparseAutoEncoder

    manifest = []
    cases = {  # name: SAEConfig fields, and whether stitchkit must refuse it
        "relu-dataset-declnorm": {},
        "relu-nodecbias-inference": {"use_decoder_bias": False, "norm_activation": "inference"},
        "jumprelu-dataset-declnorm": {"act_fn": "jumprelu"},
        "jumprelu-tokenwise-declnorm": {"act_fn": "jumprelu", "norm_activation": "token-wise"},
        "jumprelu-inference-nodeclnorm": {
            "act_fn": "jumprelu",
            "norm_activation": "inference",
            "sparsity_include_decoder_norm": False,
        },
        "topk-dataset-nodeclnorm": {"act_fn": "topk", "top_k": K, "sparsity_include_decoder_norm": False},
        "topk-tokenwise-unitdec": {"act_fn": "topk", "top_k": K, "norm_activation": "token-wise"},
        "topk-dataset-declnorm": ({"act_fn": "topk", "top_k": K}, "UnsupportedError"),
        "batchtopk-dataset": ({"act_fn": "batchtopk", "top_k": K}, "UnsupportedError"),
        "relu-batchwise": ({"norm_activation": "batch-wise"}, "UnsupportedError"),
        "relu-glu": ({"use_glu_encoder": True}, "UnsupportedError"),
        "relu-transcoder": ({"hook_point_out": "blocks.0.hook_mlp_out"}, "UnsupportedError"),
    }
    for name, case in cases.items():
        fields, expect = case if isinstance(case, tuple) else (case, None)
        cfg = SAEConfig(
            **{"hook_point_in": LLSP_HOOK, "hook_point_out": LLSP_HOOK, "d_model": D_IN, **fields},
            expansion_factor=D_SAE / D_IN,
        )
        sae = SparseAutoEncoder(cfg)
        _randomize(sae, gen)
        if name.endswith("unitdec"):
            sae.transform_to_unit_decoder_norm()
        # A dataset norm that is not sqrt(d_model) (and another for a transcoder's output).
        sae.set_dataset_average_activation_norm({cfg.hook_point_out: 3.0, cfg.hook_point_in: 6.5})
        d = out / f"llsp-{name}"
        sae.save_pretrained(d)
        cfg.save_hyperparameters(d)
        row = {"name": f"llsp-{name}", "path": d.name, "load": {}}
        if expect:
            row["expect_error"] = expect
        manifest.append(row)
    return manifest


# -- the two commands ------------------------------------------------------------------------------


def _saelens_functions(sae):
    return (lambda v: sae.encode(v.to(sae.dtype))), (lambda v: sae(v.to(sae.dtype)))


# Per library: (write every architecture, load one SAE as the library does, its encode/forward).
LIBS = {
    "saelens": (_saelens_write, _saelens_load, _saelens_functions),
    "sparsify": (_sparsify_write, _sparsify_load, _sparsify_functions),
    "dictionary_learning": (_dl_write, _dl_load, _dl_functions),
    "llamascopium": (_llsp_write, _llsp_load, _llsp_functions),
}


def _model_outputs(lib: str, obj, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """f = encode(x) and x_hat = forward(x) of an SAE the library loaded."""
    return _outputs(*LIBS[lib][2](obj), x)


def _write_ref(lib: str, out: Path, row: dict, path: Path, x: torch.Tensor) -> None:
    """The library's outputs on x for the SAE at `path`, saved beside the manifest row."""
    obj = LIBS[lib][1](str(path), row.get("oracle", {}))
    row["ref"] = f"{row['name']}.ref.safetensors"
    save_file(_model_outputs(lib, obj, x), str(out / row["ref"]))


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "write":
        lib, out = argv[1], Path(argv[2])
        out.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(N, D_IN, generator=gen) * 2 + 0.5
        save_file({"x": x}, str(out / "x.safetensors"))
        os.environ["HF_HUB_CACHE"] = str(out / "hub")
        os.environ["HF_HUB_OFFLINE"] = "1"
        manifest = LIBS[lib][0](out, x, gen)
        for row in manifest:
            if not row.get("expect_error"):
                _write_ref(lib, out, row, out / row.get("oracle_path", row["path"]), x)
        import importlib.metadata as md

        dist = {
            "saelens": "sae-lens",
            "sparsify": "eai-sparsify",
            "dictionary_learning": "dictionary-learning",
            "llamascopium": "llamascopium",
        }[lib]
        meta = {"library": lib, "version": md.version(dist), "torch": torch.__version__, "saes": manifest}
        (out / "manifest.json").write_text(json.dumps(meta, indent=1))
        return 0
    if len(argv) >= 3 and argv[0] in ("refs", "from-module"):
        # refs: LIB's own loader reads every SAE of DIR/manifest.json (written by stitchkit) and
        # writes its outputs beside them. from-module: LIB loads each SAE it wrote under DIR,
        # stitchkit (on PYTHONPATH) converts the loaded object with SAE.from_module, and both
        # outputs are compared here; prints one line per SAE, exits 1 on a mismatch.
        lib, out = argv[1], Path(argv[2])
        manifest = json.loads((out / "manifest.json").read_text())
        x = load_file(str(out / "x.safetensors"))["x"]
        os.environ["HF_HUB_CACHE"], os.environ["HF_HUB_OFFLINE"] = str(out / "hub"), "1"
        bad = 0
        for row in manifest["saes"]:
            if row.get("expect_error"):
                continue
            if argv[0] == "refs":
                _write_ref(lib, out, row, out / row["path"], x)
                continue
            if row.get("oracle", {}).get("loader") or row["path"].startswith("hf://"):
                continue  # pretrained-loader rows have no module of their own to convert
            import stitchkit as sk
            from stitchkit.peers import compare

            obj = LIBS[lib][1](str(out / row.get("oracle_path", row["path"])), row.get("oracle", {}))
            ref = _model_outputs(lib, obj, x)
            sae = sk.SAE.from_module(obj)
            c = compare(sae, ref, x, library=lib, name=row["name"])
            bad += not c.ok
            print(c.line().replace(" vs ", " from_module vs "))
        if argv[0] == "refs":
            (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return 1 if bad else 0
    if len(argv) >= 4 and argv[0] == "load":
        lib, path, x_path, out = argv[1], argv[2], argv[3], argv[4]
        opts = json.loads(argv[5]) if len(argv) > 5 else {}
        x = load_file(x_path)["x"]
        save_file(_model_outputs(lib, LIBS[lib][1](path, opts), x), out)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
