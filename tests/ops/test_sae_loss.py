"""The fused relu + L1 training loss (stitchkit.ops.sae_loss) against autograd on naive.py."""

import pytest
import torch

from tests.helpers import DEVICE, sae_tensors


@pytest.mark.parametrize("apply", [True, False])
@pytest.mark.parametrize("n,d_in,d_sae", [(1, 3, 5), (37, 19, 53), (64, 16, 130)])
def test_training_loss_gradients_match_autograd(n, d_in, d_sae, apply):
    from stitchkit.ops.sae_loss.naive import relu_sae_loss_reference
    from stitchkit.ops.sae_loss.triton import relu_sae_loss

    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(n)).to(DEVICE)
    params = [t.clone().requires_grad_(True) for t in sae_tensors(d_in, d_sae, seed=d_sae, bias=-0.2)[:4]]
    ref_params = [t.detach().clone().requires_grad_(True) for t in params]
    mse, l1, l0 = relu_sae_loss(x, *params, 0.3, apply)
    rmse, rl1, rl0 = relu_sae_loss_reference(x, *ref_params, 0.3, apply)
    torch.testing.assert_close(mse, rmse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l1, rl1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l0, rl0)
    assert not l0.requires_grad
    (mse + l1).backward()
    (rmse + rl1).backward()
    for name, p, r in zip(["W_enc", "b_enc", "W_dec", "b_dec"], params, ref_params):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-4, atol=1e-5, msg=name)
