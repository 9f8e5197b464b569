"""Each library's forward as its own code documents it, in float64, written here independently of
stitchkit (the tests' oracle where the library itself is not installed in this environment; the
libraries themselves are checked by scripts/check_peers.py)."""

import torch


def topk(pre, k):
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def layer_norm(x, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    c = x - mu
    std = c.std(-1, keepdim=True)
    return c / (std + eps), mu, std  # model.py's LN; its decode maps back with std, not std + eps


def rand(*shape, gen, scale=0.3):
    return torch.randn(*shape, generator=gen) * scale


def batch(d_in, n=32, seed=5):
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 + 0.3


def stitchkit_outputs(sae, x):
    from stitchkit.peers import outputs

    o = outputs(sae, x.float())
    return o["f"].double(), o["x_hat"].double()


# lm_saes (OpenMOSS/Language-Model-SAEs) at commit 384b6e8c, the code that wrote Llama Scope's
# files: SAEConfig's defaults, SparseAutoEncoder.from_config (sae.py 519-571) and forward (encode
# 191-248, decode 250-272), re-written from its source in float64. lm-saes 0.1.0 is not on PyPI
# (only its 2.x successor, llamascopium), so this re-write is the oracle of the Llama Scope reader.
LM_SAES_DEFAULTS = dict(
    act_fn="relu",
    jump_relu_threshold=0.0,
    top_k=50,
    sparsity_include_decoder_norm=True,
    apply_decoder_bias_to_pre_encoder=True,
    use_decoder_bias=True,
    norm_activation="token-wise",
)


class LmSaes384b6e8c:
    """from_config(cfg, state_dict) then forward(x), as lm_saes ran them (float64 here)."""

    def __init__(self, cfg: dict, state: dict):
        cfg = {**LM_SAES_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
        self.d_model = cfg["d_model"]
        s = {k: v.double().clone() for k, v in state.items()}
        # the activation closure is built in __init__, from the config as saved
        self.act_fn, self.k, self.theta = cfg["act_fn"], cfg["top_k"], cfg["jump_relu_threshold"]
        self.sparsity_include_decoder_norm = cfg["sparsity_include_decoder_norm"]
        self.norm = cfg["norm_activation"]
        if self.norm == "dataset-wise":  # standardize_parameters_of_dataset_activation_scaling
            avg = cfg["dataset_average_activation_norm"]
            c_in, c_out = self.d_model**0.5 / avg["in"], self.d_model**0.5 / avg["out"]
            s["encoder.bias"] = s["encoder.bias"] / c_in
            s["decoder.bias"] = s["decoder.bias"] / c_out
            s["decoder.weight"] = s["decoder.weight"] * c_in / c_out
            self.norm = "inference"
        if self.sparsity_include_decoder_norm:  # transform_to_unit_decoder_norm
            n = torch.norm(s["decoder.weight"], p=2, dim=0)
            s["decoder.weight"] = s["decoder.weight"] / n
            s["encoder.weight"] = s["encoder.weight"] * n[:, None]
            s["encoder.bias"] = s["encoder.bias"] * n
        self.s = s
        self.pre_bias = cfg["use_decoder_bias"] and cfg["apply_decoder_bias_to_pre_encoder"]

    def norm_factor(self, x):  # compute_norm_factor(x, "in")
        if self.norm == "token-wise":
            return self.d_model**0.5 / x.norm(p=2, dim=-1, keepdim=True)
        return torch.ones_like(x[..., :1])

    def hidden_pre(self, x):
        x = x * self.norm_factor(x)
        if self.pre_bias:
            x = x - self.s["decoder.bias"]
        return x @ self.s["encoder.weight"].T + self.s["encoder.bias"]

    def encode(self, x):
        pre = self.hidden_pre(x)
        if self.act_fn == "relu":
            return pre.clamp(min=0.0)
        if self.act_fn == "jumprelu":
            return pre.where(pre > self.theta, 0)
        acts = pre.clamp(min=0.0)  # topk, ranked by acts times the (loaded) decoder norm
        rank = acts * self.s["decoder.weight"].norm(dim=0) if self.sparsity_include_decoder_norm else acts
        idx = rank.topk(self.k, dim=-1).indices
        return torch.zeros_like(acts).scatter(-1, idx, acts.gather(-1, idx))

    def forward(self, x):
        """(features, reconstruction in x's own scale: compute_loss divides by the input's norm
        factor, which the loaded dataset-wise model has folded in)."""
        f = self.encode(x)
        x_hat = f @ self.s["decoder.weight"].T + self.s.get("decoder.bias", 0)
        return f, x_hat / self.norm_factor(x)

    def topk_to_jumprelu_threshold(self, x):
        """post_process_topk_to_jumprelu_for_inference: the (tokens * top_k)-th largest rectified
        pre-activation over the batch, one scalar for every feature."""
        pre = self.hidden_pre(x).clamp(min=0).flatten()
        return float(pre.topk(k=x.shape[0] * self.k).values[-1])


# llamascopium 2.0.0b34 (lm_saes' successor on PyPI): SparseDictionaryConfig's defaults and
# SparseAutoEncoder's forward (models/sae.py encode, decode; sparse_dictionary.py
# compute_norm_factor, normalize_activations), re-written from its source in float64. The library
# itself is the oracle in scripts/check_peers.py; this one lets the format tests run without it.
LLAMASCOPIUM_DEFAULTS = dict(
    act_fn="relu",
    top_k=50,
    sparsity_include_decoder_norm=True,
    norm_activation="dataset-wise",
    use_decoder_bias=True,
)


class Llamascopium2:
    """from_pretrained(path) (no fold), then normalize_activations, encode, decode and the output
    divided by its scale factor, as llamascopium runs them (float64 here)."""

    def __init__(self, cfg: dict, state: dict):
        cfg = {**LLAMASCOPIUM_DEFAULTS, **cfg}
        self.d_model, self.act_fn, self.k = cfg["d_model"], cfg["act_fn"], cfg["top_k"]
        self.decoder_norm = cfg["sparsity_include_decoder_norm"]
        self.norm, self.hook = cfg["norm_activation"], cfg["hook_point_in"]
        self.s = {k: v.double().clone() for k, v in state.items()}

    def norm_factor(self, x):  # compute_norm_factor
        if self.norm == "token-wise":
            return self.d_model**0.5 / x.norm(p=2, dim=-1, keepdim=True)
        if self.norm == "dataset-wise":
            return self.d_model**0.5 / self.s[f"dataset_average_activation_norm.{self.hook}"]
        return torch.ones_like(x[..., :1])

    def encode(self, xn):
        h = xn @ self.s["W_E"] + self.s["b_E"]
        n = self.s["W_D"].norm(dim=-1) if self.decoder_norm else torch.ones_like(h[0])
        g = h * n
        if self.act_fn == "relu":
            a = g * (g > 0)
        elif self.act_fn == "jumprelu":
            a = g * (g > self.s["activation_function.log_jumprelu_threshold"].exp())
        else:  # topk: rectify, then the k largest
            a = topk(g * (g > 0), self.k)
        return a / n

    def forward(self, x):
        c = self.norm_factor(x)
        f = self.encode(x * c)
        x_hat = f @ self.s["W_D"] + self.s.get("b_D", 0)
        return f, x_hat / c


class BatchTopK:
    """bartbussmann/BatchTopK sae.py (b9aab1c; early commits where `early`), its forward re-written
    from the source in float64: the input layer-normalised where input_unit_norm (and mapped back
    with std), topk and batchtopk without b_enc, jumprelu without b_dec at the input, the decoder
    W_enc^T where an early config ties the weights. batchtopk keeps the top k * batch of the
    whole batch."""

    def __init__(self, cfg: dict, state: dict):
        self.cfg = cfg
        self.s = {k: v.double() for k, v in state.items()}

    def forward(self, x):
        cfg, s = self.cfg, self.s
        kind = cfg.get("sae_type", "topk")
        if cfg.get("input_unit_norm"):
            xn, mu, std = layer_norm(x)
        else:
            xn, mu, std = x, 0.0, 1.0
        W_dec = s["W_enc"].T if cfg.get("tied_weights") else s["W_dec"]
        early = "use_encoder_bias" in cfg
        with_bias = cfg.get("use_encoder_bias") if early else kind in ("vanilla", "jumprelu")
        b_enc = s["b_enc"] if with_bias else 0
        if kind == "jumprelu":
            p = torch.relu(xn @ s["W_enc"] + b_enc)
            log = s.get("jumprelu.log_threshold", s.get("log_threshold"))
            f = p * (p > log.exp())
        else:
            a = torch.relu((xn - s["b_dec"]) @ s["W_enc"] + b_enc)
            if kind == "topk":
                f = topk(a, cfg["top_k"])
            elif kind == "batchtopk":
                flat = a.flatten()
                idx = flat.topk(cfg["top_k"] * x.shape[0]).indices
                f = torch.zeros_like(flat).scatter(0, idx, flat[idx]).reshape(a.shape)
            else:
                f = a
        return f, (f @ W_dec + s["b_dec"]) * std + mu
