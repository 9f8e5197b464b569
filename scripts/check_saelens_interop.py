"""Manual interop check against a real SAELens install (not part of CI: SAELens pulls in
transformer-lens and friends). Run with stitchkit importable and sae-lens installed:

    PYTHONPATH=. python scripts/check_saelens_interop.py

stitchkit -> SAELens: each architecture saved by save_sae is loaded with SAELens' SAE.load_from_disk
and must reconstruct the same inputs. SAELens -> stitchkit: an SAE saved by SAELens' save_model is
loaded with load_sae and must reconstruct the same inputs.
"""

import sys
import tempfile
from pathlib import Path

import sae_lens
import torch

import stitchkit as sk


def check(name: str, a: torch.Tensor, b: torch.Tensor) -> bool:
    ok = torch.allclose(a, b, atol=1e-5)
    print(f"{name}: {'ok' if ok else 'MISMATCH'} (max diff {(a - b).abs().max().item():.2e})")
    return ok


def main() -> int:
    print("sae_lens", sae_lens.__version__)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for act in ("relu", "topk", "jumprelu", "batchtopk"):
            sae = sk.SAE(
                16,
                40,
                act,
                k=5 if act in ("topk", "batchtopk") else None,
                generator=g,
                hook_name="blocks.0.hook_resid_pre",
            )
            with torch.no_grad():
                sae.b_enc.normal_(generator=g)
                sae.b_dec.normal_(generator=g)
                if sae.threshold is not None:
                    sae.threshold.fill_(0.2)
            path = sk.save_sae(sae, Path(tmp) / act)
            theirs = sae_lens.SAE.load_from_disk(str(path), device="cpu")
            ok &= check(f"stitchkit -> SAELens [{act}]", theirs(x), sae(x))

        theirs = sae_lens.SAE.load_from_disk(str(Path(tmp) / "jumprelu"), device="cpu")
        theirs.save_model(str(Path(tmp) / "from_saelens"))
        ours = sk.load_sae(Path(tmp) / "from_saelens")
        ok &= check("SAELens -> stitchkit [jumprelu]", ours(x), theirs(x))
        theirs = sae_lens.SAE.load_from_disk(str(Path(tmp) / "relu"), device="cpu")
        theirs.save_model(str(Path(tmp) / "from_saelens_relu"))
        ours = sk.load_sae(Path(tmp) / "from_saelens_relu")
        ok &= check("SAELens -> stitchkit [standard]", ours(x), theirs(x))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
