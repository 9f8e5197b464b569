"""Splicing an SAE into its model: the downstream effect of replacing the site's activations with
the SAE's reconstruction (pooled-output cosine; next-token CE loss for a causal LM)."""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError, ShapeError
from ..sae.model import SAE


@torch.no_grad()
def splice_similarity(
    source, sae: SAE, texts: list[str], *, output_hook: str | None = None
) -> dict[str, float]:
    """Downstream effect of splicing `sae` into `source`'s model at its hook (x -> SAE(x) there).

    Every model: the attention-masked mean of the last block's output (`output_hook`, default
    blocks.{n_layers-1}.hook_resid_post), which is how sentence-transformers pools an embedding
    model (the embedded default); returns the mean and minimum cosine between each text's pooled
    output with and without the splice, and the mean cosine with the site zero-ablated.
    A causal LM (source.is_causal_lm) also gets next-token CE loss: clean, spliced, zero-ablated,
    and ce_recovered = (L_zero - L_spliced) / (L_zero - L_clean) (1 = the SAE loses nothing).
    source: a stitchkit.data.LensSource.
    """
    if sae.d_in != source.d_in:
        raise ShapeError(
            f"splice_similarity: SAE {sae.name!r} has d_in={sae.d_in}, the model's site has {source.d_in}"
        )
    if sae.hook_name and sae.hook_name != source.hook_name:
        raise InvalidArgumentError(
            f"splice_similarity: SAE {sae.name!r} reads hook {sae.hook_name!r}, "
            f"the source is at {source.hook_name!r}"
        )
    model = source.model
    out_hook = output_hook or f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    dev = next(model.parameters()).device
    sae = sae.to(dev)
    causal = source.is_causal_lm

    def run(ids, mask, replace):
        got = {}

        def grab(x, hook):
            got["x"] = x
            return x

        hooks = [(out_hook, grab)]
        if replace is not None:
            hooks.insert(0, (source.hook_name, lambda x, hook: replace(x).to(x.dtype)))
        rt = dict(return_type="loss", loss_per_token=True) if causal else dict(return_type=None)
        loss = model.run_with_hooks(ids, fwd_hooks=hooks, attention_mask=mask, **rt)
        m = mask[..., None].to(got["x"].dtype)
        pooled = (got["x"] * m).sum(1) / m.sum(1)
        if not causal:
            return pooled, None
        valid = mask[:, 1:].to(loss.dtype)
        return pooled, ((loss * valid).sum().item(), valid.sum().item())

    cos, zero, ce = [], [], {"clean": [0.0, 0.0], "spliced": [0.0, 0.0], "zero": [0.0, 0.0]}
    for s in range(0, len(texts), source.batch_size):
        ids, mask = source.tokenize(texts[s : s + source.batch_size])
        outs = {
            "clean": run(ids, mask, None),
            "spliced": run(ids, mask, lambda x: sae(x.to(sae.dtype))),
            "zero": run(ids, mask, torch.zeros_like),
        }
        cos.append(torch.nn.functional.cosine_similarity(outs["clean"][0], outs["spliced"][0], dim=1).cpu())
        zero.append(torch.nn.functional.cosine_similarity(outs["clean"][0], outs["zero"][0], dim=1).cpu())
        if causal:
            for key, (_, (total, count)) in outs.items():
                ce[key][0] += total
                ce[key][1] += count
    if not cos:
        raise InvalidArgumentError("splice_similarity: no texts given")
    c, z = torch.cat(cos), torch.cat(zero)
    res = dict(
        mean_cos=float(c.mean()), min_cos=float(c.min()), zero_ablation_cos=float(z.mean()), n_texts=len(c)
    )
    if causal:
        loss = {k: t / max(n, 1) for k, (t, n) in ce.items()}
        gap = loss["zero"] - loss["clean"]
        res.update(
            ce_clean=loss["clean"],
            ce_spliced=loss["spliced"],
            ce_zero_ablated=loss["zero"],
            ce_recovered=(loss["zero"] - loss["spliced"]) / gap if gap else float("nan"),
        )
    return res
