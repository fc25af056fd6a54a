"""PatchGAN critics: output shapes for both styles, and the WGAN-GP penalty's known value."""
import pytest
import torch

from facefactors.nn.critics import PatchCritic, gradient_penalty


def test_pix2pix_critic_scores_patches():
    out = PatchCritic(3, width=8, n_layers=3)(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 6, 6)


def test_deep_critic_fits_six_stages_into_128px():
    # The paper's critic (StarGAN's deeper PatchGAN): 6 stride-2 stages leave 2x2 patches at 128 px,
    # which the pix2pix tail (two 4x4 stride-1 convs) cannot take.
    out = PatchCritic(3, width=4, n_layers=6, style="deep")(torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 1, 2, 2)
    with pytest.raises(RuntimeError):
        PatchCritic(3, width=4, n_layers=6)(torch.randn(2, 3, 128, 128))
    with pytest.raises(ValueError, match="critic style"):
        PatchCritic(3, style="wide")


def test_gradient_penalty_of_a_linear_critic():
    # critic(x) = sum(w * x): the gradient is w everywhere, so the penalty is (||w|| - 1)^2 exactly.
    torch.manual_seed(0)
    w = torch.randn(1, 3, 4, 4)

    def critic(x):
        return (x * w).flatten(1).sum(1)

    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)
