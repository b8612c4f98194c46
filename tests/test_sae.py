import pytest
import torch

from sae_pipeline.config import SAEConfig
from sae_pipeline.sae import SAE, jumprelu, step
from sae_pipeline.sae_train import (autograd_grads, init_threshold, jumprelu_grads, starting_point, train,
                                    tune_threshold)


def _inputs(seed=0, n=64, d=16):
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(n, d, generator=g, dtype=torch.float64)
    theta = (torch.rand(d, generator=g, dtype=torch.float64) + 0.2)
    return pre, theta


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.5])
def test_jumprelu_gradients_match_paper_formulas(eps):
    pre, theta = _inputs()
    pre.requires_grad_(True)
    theta.requires_grad_(True)
    g = torch.randn_like(pre)
    (jumprelu(pre, theta, eps) * g).sum().backward()
    h = (pre > theta).double()
    k = (((pre - theta) / eps).abs() < 0.5).double()
    assert torch.allclose(pre.grad, g * h.detach())
    assert torch.allclose(theta.grad, (g * -(theta / eps) * k).sum(0).detach())
    assert theta.grad.abs().sum() > 0  # some pre-activations fall inside the kernel window


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.5])
def test_step_gradients_match_paper_formulas(eps):
    pre, theta = _inputs(1)
    pre.requires_grad_(True)
    theta.requires_grad_(True)
    g = torch.randn_like(pre)
    (step(pre, theta, eps) * g).sum().backward()
    k = (((pre - theta) / eps).abs() < 0.5).double()
    assert pre.grad is None or torch.equal(pre.grad, torch.zeros_like(pre))  # None: autograd's exact zero
    assert torch.allclose(theta.grad, (g * -(1 / eps) * k).sum(0).detach())


def test_threshold_gradient_matches_finite_difference_of_smoothed_loss():
    """The STE gradient wrt θ is the exact gradient of the expected loss when H is smoothed by the rectangle
    kernel (paper sec. 4): E over pre of H(pre - θ) has d/dθ = -density at θ. Estimate both on many samples."""
    eps, theta = 0.1, torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    pre = torch.randn(400_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    step(pre, theta, eps).mean().backward()
    # smoothed step: H convolved with the rectangle kernel of width eps is a linear ramp across [θ-ε/2, θ+ε/2]
    def smoothed(t):
        return ((pre - t) / eps + 0.5).clamp(0, 1).mean()
    d = 1e-4
    fd = (smoothed(0.7 + d) - smoothed(0.7 - d)) / (2 * d)
    assert abs(theta.grad.item() - fd.item()) < 0.02 * abs(fd.item())
    # same for jumprelu: smoothed pre·H(pre-θ) = pre·ramp
    theta2 = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    jumprelu(pre, theta2, eps).mean().backward()
    def smoothed_j(t):
        return (pre * ((pre - t) / eps + 0.5).clamp(0, 1)).mean()
    fd2 = (smoothed_j(0.7 + d) - smoothed_j(0.7 - d)) / (2 * d)
    assert abs(theta2.grad.item() - fd2.item()) < 0.03 * abs(fd2.item())


def test_threshold_broadcasts_over_batch_and_is_theta_not_log_theta():
    pre = torch.tensor([[0.5, 1.5], [2.0, -1.0]])
    theta = torch.tensor([1.0, 1.0])
    assert torch.equal(jumprelu(pre, theta, 0.1), torch.tensor([[0.0, 1.5], [2.0, 0.0]]))
    assert torch.equal(step(pre, theta, 0.1), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    # H is strict (pre = θ gives 0), and both outputs are float 0/1 tensors of the input's dtype
    at = torch.tensor([[1.0, 0.999999]], dtype=torch.float64)
    assert torch.equal(step(at, torch.tensor([1.0, 0.999999], dtype=torch.float64), 0.1),
                       torch.zeros(1, 2, dtype=torch.float64))


@pytest.mark.parametrize("activation", ["jumprelu", "topk", "relu"])
def test_forward_is_decode_of_encode_and_shapes(activation):
    sae = SAE(16, 48, activation, k=5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(10, 16)
    f = sae.encode(x)
    assert f.shape == (10, 48) and sae(x).shape == (10, 16)
    assert torch.equal(sae(x), sae.decode(sae.encode(x)))
    assert (f >= 0).all()
    if activation == "topk":
        assert ((f > 0).sum(-1) <= 5).all()


def test_fused_jumprelu_step_gradients_equal_autograd():
    """The training step's hand-written chain rule (jumprelu_grads) against autograd through ``jumprelu`` and
    ``step`` on the same loss, for every parameter, in float64."""
    g = torch.Generator().manual_seed(4)
    sae = SAE(16, 48, "jumprelu", bandwidth=0.5, generator=g).double()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5, generator=g)
        sae.threshold.uniform_(0.1, 1.0, generator=g)
    x = torch.randn(64, 16, generator=g, dtype=torch.float64)
    lam = 0.3
    autograd_grads(sae, x, lam, 0.0, torch.zeros(48, dtype=torch.bool))
    ref = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = None
    f, x_hat = jumprelu_grads(sae, x, lam)
    assert torch.equal(x_hat, sae(x).detach()) and torch.equal(f, sae.encode(x).detach())
    for n, p in sae.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-12), n
        assert p.grad.stride() == p.stride(), n  # the fused Adam kernel needs the parameter's layout
        assert p.grad.abs().sum() > 0, n  # every parameter, θ included, gets a non-trivial gradient here


def _planted(n=6000, d=24, m=32, k=3, seed=0):
    """x = sum of k random unit atoms out of m, with positive magnitudes: a known sparse dictionary."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(m, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(n)])
    coef = torch.zeros(n, m).scatter_(1, idx, 1 + torch.rand(n, k, generator=g))
    return coef @ atoms, atoms


def test_theta_tuning_hits_target_on_synthetic_data():
    x, _ = _planted()
    sae = SAE(24, 64, "jumprelu", generator=torch.Generator().manual_seed(1), theta_init=0.01)
    res = tune_threshold(sae, x[:2000], target=5.0)
    assert abs(res["l0_val_after"] - 5.0) < 0.05
    assert res["l0_val_before"] > 10
    relu = SAE(24, 64, "relu", generator=torch.Generator().manual_seed(1))
    res = tune_threshold(relu, x[:2000], target=7.0)
    assert abs(res["l0_val_after"] - 7.0) < 0.05


def test_init_threshold_sets_expected_l0():
    x, _ = _planted()
    sae = SAE(24, 64, "jumprelu", generator=torch.Generator().manual_seed(1))
    init_threshold(sae, x, 6)
    assert abs((sae.encode(x) > 0).float().sum(-1).mean().item() - 6) < 0.1


def test_training_recovers_planted_dictionary():
    x, atoms = _planted(n=8000, d=32, m=24)
    cfg = SAEConfig(latents=64, target_actives=3, warmstart_epochs=15, epochs_final=3, batch_size=128, lr=3e-3,
                    dead_steps=100)
    sae, hist = train(cfg, starting_point(cfg, x, 0), x, lam=0.05, seed=0)
    tune_threshold(sae, x[:2000], 3.0)
    cos = (atoms @ sae.W_dec.detach().T)  # [m, d_sae], decoder rows are unit norm
    best = cos.max(1).values
    assert (best > 0.9).float().mean() >= 0.9, best
    assert hist[-1]["fvu"] < 0.1


def test_seed_reproduces_bit_for_bit_and_changes_with_seed():
    x, _ = _planted(n=1500)
    cfg = SAEConfig(latents=32, target_actives=3, warmstart_epochs=1, epochs_final=1, batch_size=128)
    a, _ = train(cfg, starting_point(cfg, x, 0), x, 0.05, seed=0)
    b, _ = train(cfg, starting_point(cfg, x, 0), x, 0.05, seed=0)
    c, _ = train(cfg, starting_point(cfg, x, 1), x, 0.05, seed=1)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.W_dec, c.W_dec)
