"""Where SAEs come from (stitchkit.sae.sources): paths, hf:// through a hub cache laid out by hand
(offline), saelens: registry names, and width patterns."""

import pytest
import torch

from stitchkit import SAE, InvalidArgumentError, SAEFormatError, StitchkitError, load_sae, save_sae
from stitchkit.sae.sources import expand_family, parse_hf
from tests.helpers import hub_folder, random_sae


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_expand_family_patterns():
    assert expand_family("a/b_{768..6144:x2}") == [f"a/b_{w}" for w in (768, 1536, 3072, 6144)]
    assert expand_family("x{1,3}y{5,6}") == ["x1y5", "x1y6", "x3y5", "x3y6"]
    assert expand_family("plain/path") == ["plain/path"]
    with pytest.raises(InvalidArgumentError, match="factor >= 2"):
        expand_family("a{4..8:x1}")


def test_parse_hf():
    assert parse_hf("hf://o/r/a/b") == ("o/r", None, "a/b")
    assert parse_hf("hf://o/r@v1.0/a") == ("o/r", "v1.0", "a")
    with pytest.raises(InvalidArgumentError, match="expected hf://OWNER/REPO"):
        parse_hf("hf://o")


def test_hf_folder_offline_from_a_laid_out_cache(offline_hub):
    repo = "jbloom/GPT2-Small-Feature-Splitting-Experiment-Layer-8"
    snap = hub_folder(offline_hub, repo)
    saes = {}
    for w in (16, 32, 64):
        s = random_sae("relu", d_in=8, d_sae=w, seed=w, hook_name="blocks.8.hook_resid_pre")
        save_sae(s, snap / f"blocks.8.hook_resid_pre_{w}")
        saes[w] = s
    family = [load_sae(src) for src in expand_family(f"hf://{repo}/blocks.8.hook_resid_pre_{{16..64:x2}}")]
    assert [s.d_sae for s in family] == [16, 32, 64]
    for s in family:
        torch.testing.assert_close(s.W_dec, saes[s.d_sae].W_dec, rtol=0, atol=0)
    with pytest.raises(SAEFormatError, match="no SAE files under 'blocks.8.hook_resid_pre_128' in the local"):
        load_sae(f"hf://{repo}/blocks.8.hook_resid_pre_128")
    with pytest.raises(SAEFormatError, match="not found in the local Hugging Face cache"):
        load_sae("hf://nobody/nothing/x")


def test_hf_revision_and_single_file(offline_hub, tmp_path):
    import numpy as np

    snap = hub_folder(offline_hub, "google/gemma-scope-2b-pt-res", revision="v2", sha="b" * 40)
    d = snap / "layer_3" / "width_16k" / "average_l0_10"
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    p = {
        "W_enc": torch.randn(6, 9, generator=g),
        "W_dec": torch.randn(9, 6, generator=g),
        "b_enc": torch.randn(9, generator=g),
        "b_dec": torch.randn(6, generator=g),
        "threshold": torch.rand(9, generator=g),
    }
    np.savez(d / "params.npz", **{k: v.numpy() for k, v in p.items()})
    a = load_sae("hf://google/gemma-scope-2b-pt-res@v2/layer_3/width_16k/average_l0_10")
    b = load_sae("hf://google/gemma-scope-2b-pt-res@v2/layer_3/width_16k/average_l0_10/params.npz")
    assert a.activation == b.activation == "jumprelu"
    torch.testing.assert_close(a.threshold, p["threshold"], rtol=0, atol=0)
    with pytest.raises(SAEFormatError, match="not found"):
        load_sae("hf://google/gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_10")  # no "main" ref


def test_saelens_registry_names(offline_hub, tmp_path, monkeypatch):
    repo = "jbloom/GPT2-Small-Feature-Splitting-Experiment-Layer-8"
    snap = hub_folder(offline_hub, repo)
    s = random_sae("relu", d_in=8, d_sae=16, seed=1)
    save_sae(s, snap / "blocks.8.hook_resid_pre_16")
    registry = tmp_path / "pretrained_saes.yaml"
    registry.write_text(
        "gpt2-small-res-jb-feature-splitting:\n"
        "  conversion_func: null\n"
        f"  repo_id: {repo}\n"
        "  saes:\n"
        "  - id: blocks.8.hook_resid_pre_16\n"
        "    path: blocks.8.hook_resid_pre_16\n"
        "other:\n  conversion_func: goodfire\n  repo_id: a/b\n  saes: []\n"
    )
    monkeypatch.setenv("STITCHKIT_SAELENS_REGISTRY", str(registry))
    got = load_sae("saelens:gpt2-small-res-jb-feature-splitting/blocks.8.hook_resid_pre_16")
    torch.testing.assert_close(got.W_enc, s.W_enc, rtol=0, atol=0)
    with pytest.raises(SAEFormatError, match="has no SAE 'nope'"):
        load_sae("saelens:gpt2-small-res-jb-feature-splitting/nope")
    with pytest.raises(SAEFormatError, match="release 'missing' is not in"):
        load_sae("saelens:missing/x")
    with pytest.raises(SAEFormatError, match="'goodfire' loader"):
        load_sae("saelens:other/x")
    monkeypatch.delenv("STITCHKIT_SAELENS_REGISTRY")
    import importlib.util

    if importlib.util.find_spec("sae_lens") is None:
        with pytest.raises(StitchkitError, match="pip install sae-lens"):
            load_sae("saelens:gpt2-small-res-jb-feature-splitting/blocks.8.hook_resid_pre_16")


def test_from_module_refuses_an_unknown_object():
    from stitchkit import UnsupportedError

    with pytest.raises(UnsupportedError, match="not a SAELens SAE"):
        SAE.from_module(torch.nn.Linear(2, 3))
