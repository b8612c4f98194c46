import dataclasses

import pytest
import torch

from sae_pipeline.config import SAEConfig
from sae_pipeline.sae import SAE, jumprelu, step
from sae_pipeline.sae_train import (Phase, Readout, calibrate_and_train, clip_grad_norm, evaluate_split,
                                    init_threshold, jumprelu_grads, nested_mse, run_phase, starting_point, train,
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


def _readout(d_in, g, n_classes=5):
    fc2 = torch.nn.Linear(d_in, n_classes).double()
    with torch.no_grad():
        fc2.weight.normal_(0, 1.0, generator=g)
        fc2.bias.normal_(0, 1.0, generator=g)
    shift = torch.randn(d_in, generator=g, dtype=torch.float64)
    scale = torch.rand(d_in, generator=g, dtype=torch.float64) + 0.5
    return fc2, shift, scale


def test_readout_is_fc2_of_unnormalised_input_and_kl_grad_matches_autograd():
    g = torch.Generator().manual_seed(7)
    fc2, shift, scale = _readout(16, g)
    ro = Readout.from_linear(fc2, shift, scale)
    x, x_hat = torch.randn(32, 16, generator=g, dtype=torch.float64), torch.randn(32, 16, generator=g, dtype=torch.float64)
    assert torch.allclose(ro.logits(x), fc2(x * scale + shift).detach())
    ref = torch.nn.functional.kl_div(fc2(x_hat * scale + shift).log_softmax(-1), fc2(x * scale + shift).log_softmax(-1),
                                     log_target=True, reduction="batchmean")
    assert torch.allclose(ro.kl(x, x_hat), ref.detach()) and ro.kl(x, x).abs() < 1e-12
    x_hat.requires_grad_(True)
    (2.5 * ro.kl(x, x_hat)).backward()
    assert torch.allclose(ro.kl_grad(x, x_hat.detach(), 2.5), x_hat.grad)


@pytest.mark.parametrize("kl_coef,preact", [(0.0, 0.0), (3.0, 0.0), (0.0, 2.0), (3.0, 2.0)])
def test_fused_jumprelu_step_gradients_equal_autograd(kl_coef, preact):
    """The training step's hand-written chain rule (jumprelu_grads) against autograd through ``jumprelu`` and
    ``step`` on the same loss (with and without the KL term and the pre-activation loss on "dead" latents, with
    free decoder norms), for every parameter, in float64."""
    g = torch.Generator().manual_seed(4)
    sae = SAE(16, 48, "jumprelu", bandwidth=0.5, generator=g).double()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5, generator=g)
        sae.threshold.uniform_(0.1, 1.0, generator=g)
        sae.W_dec.mul_(torch.rand(48, 1, generator=g, dtype=torch.float64) + 0.5)  # free norms
    x = torch.randn(64, 16, generator=g, dtype=torch.float64)
    lam = 0.3
    dead = torch.rand(48, generator=g) < 0.5
    kl = (Readout.from_linear(*_readout(16, g)), kl_coef, None) if kl_coef else None
    # the reference loss, written out with autograd
    pre = sae.pre_acts(x)
    f, h = sae.activate_l0(pre)
    x_hat = sae.decode(f)
    loss = (x_hat - x).pow(2).sum(-1).mean() + lam * h.sum(-1).mean()
    if kl:
        loss = loss + kl_coef * kl[0].kl(x, x_hat)
    if preact:
        gap = (sae.threshold - pre).relu() * dead
        loss = loss + preact * (gap * sae.W_dec.norm(dim=1)).sum(-1).mean()
    loss.backward()
    ref = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = None
    f, x_hat = jumprelu_grads(sae, x, lam, kl, (preact, dead) if preact else None)
    assert torch.equal(x_hat, sae(x).detach()) and torch.equal(f, sae.encode(x).detach())
    for n, p in sae.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-12), n
        assert p.grad.stride() == p.stride(), n  # the fused Adam kernel needs the parameter's layout
        assert p.grad.abs().sum() > 0, n  # every parameter, θ included, gets a non-trivial gradient here


@pytest.mark.parametrize("prefixes,kl_coef,weight", [((8,), 0.0, 1.0), ((4, 20), 3.0, 1.0), ((4, 20), 3.0, 0.25),
                                                     ((), 0.0, 1.0)])
def test_matryoshka_step_gradients_equal_autograd_of_the_nested_loss(prefixes, kl_coef, weight):
    """The JumpReLU step with nested prefixes (block-wise suffix sums of the residual gradients) against autograd
    through ``nested_mse``, which writes the Matryoshka loss out prefix by prefix (checked here against the loss
    written out by hand, weights included); ``()`` is the plain SAE."""
    g = torch.Generator().manual_seed(5)
    sae = SAE(16, 48, "jumprelu", bandwidth=0.5, generator=g).double()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5, generator=g)
        sae.threshold.uniform_(0.1, 1.0, generator=g)
    x = torch.randn(64, 16, generator=g, dtype=torch.float64)
    kl = (Readout.from_linear(*_readout(16, g)), kl_coef, None) if kl_coef else None
    pre = sae.pre_acts(x)
    f, h = sae.activate_l0(pre)
    mse, x_hat = nested_mse(sae, f, x, prefixes, weight)
    edges = [*prefixes, 48]
    by_hand = [weight] * len(prefixes) + [1.0]  # each proper prefix's weight, then the whole dictionary's
    parts = [(f[:, :m] @ sae.W_dec[:m] + sae.b_dec - x).pow(2).sum(-1).mean() for m in edges]
    assert torch.allclose(mse, sum(w * p for w, p in zip(by_hand, parts)) / sum(by_hand))
    loss = mse + 0.3 * h.sum(-1).mean() + (kl_coef * kl[0].kl(x, x_hat) if kl else 0.0)
    loss.backward()
    ref = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = None
    _, x_hat2 = jumprelu_grads(sae, x, 0.3, kl, None, prefixes, weight)
    assert torch.allclose(x_hat2, sae(x).detach())  # the last prefix is the whole dictionary
    for n, p in sae.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-12), n
        assert p.grad.stride() == p.stride(), n
    if prefixes:  # the nested loss is not the plain one: the first block's decoder gets the prefixes' residuals
        plain = (sae.decode(f) - x).pow(2).sum(-1).mean()
        assert not torch.allclose(mse, plain)


def test_clip_grad_norm_scales_all_gradients_together():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(4, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 4.0, 0.0, 0.0])
    clip_grad_norm([a, b], 1.0)
    assert abs(float(torch.sqrt(a.grad.pow(2).sum() + b.grad.pow(2).sum())) - 1.0) < 1e-5
    assert torch.allclose(a.grad / b.grad[1], torch.tensor([0.75, 0.0, 0.0]))  # direction kept
    clip_grad_norm([a, b], 10.0)  # below the limit: untouched
    assert abs(float(a.grad[0]) - 0.6) < 1e-6


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


@pytest.mark.parametrize("recipe", ["scratch", "warmstart"])
def test_calibration_and_training_recover_planted_dictionary(recipe):
    """Both JumpReLU recipes, through calibrate (λ probes) and train, on a planted sparse dictionary: the probes
    land the L0 near the target, and the decoder recovers the atoms."""
    x, atoms = _planted(n=8000, d=32, m=24)
    x_val, _ = _planted(n=2000, d=32, m=24, seed=0)
    # 62 steps an epoch: the scratch recipe's L0 settles after ~1,200 steps (log θ moves ~lr a step), so 40 epochs
    cfg = SAEConfig(latents=48, target_actives=3, recipe=recipe, epochs=40, warmstart_epochs=37, batch_size=128,
                    lr=4e-3, dead_steps=100, kl_coef=0.0, lambda_init=0.05, calib_epochs=24, calib_tolerance=0.2)
    start = starting_point(cfg, x, 0)
    sae, hist, cal = calibrate_and_train(cfg, start, x, x_val, seed=0)
    assert 1 <= len(cal["probes"]) <= cfg.calib_probes and cal["lambda"] > 0
    assert abs(evaluate_split(sae, x_val)["l0"] - 3.0) < 1.0  # before θ tuning
    tune_threshold(sae, x[:2000], 3.0)
    w = sae.W_dec.detach()
    cos = atoms @ (w / w.norm(dim=1, keepdim=True)).T  # [m, d_sae]
    best = cos.max(1).values  # each atom's best-matching latent
    # every atom found (an untrained decoder's best cosines are ~0.5)
    assert best.min() > 0.85 and best.mean() > 0.9, best
    assert hist[-1]["fvu"] < 0.1


def test_seed_reproduces_bit_for_bit_and_changes_with_seed():
    """Same starting point and seed: the same bytes. The same starting point with another training seed (only the
    batch order differs) and another starting point each give another SAE."""
    x, _ = _planted(n=1500)
    cfg = SAEConfig(latents=32, target_actives=3, epochs=2, warmstart_epochs=1, batch_size=128, kl_coef=0.0)
    start = starting_point(cfg, x, 0)
    a = train(cfg, start, x, 0.05, seed=0)[0]
    b = train(cfg, start, x, 0.05, seed=0)[0]
    c = train(cfg, start, x, 0.05, seed=1)[0]
    d = train(cfg, starting_point(cfg, x, 1), x, 0.05, seed=0)[0]
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.W_dec, c.W_dec) and not torch.equal(a.W_dec, d.W_dec)
    assert torch.equal(start.W_dec, starting_point(cfg, x, 0).W_dec)  # train leaves its starting point alone


def test_a_probe_that_lands_is_the_final_run_itself():
    """The λ probe is the final run stopped at its gate: a gate that passes changes nothing (bit for bit), a gate
    that fails stops the run after exactly its steps, and calibrate_and_train then returns that very run."""
    x, _ = _planted(n=2560)
    x_val, _ = _planted(n=500, seed=5)
    cfg = SAEConfig(latents=32, target_actives=3, epochs=4, batch_size=128, kl_coef=0.0, calib_epochs=1.0)
    start = starting_point(cfg, x, 0)
    plain, hist_plain, done = train(cfg, start, x, 0.05, seed=0)
    seen = []
    gated, hist_gated, done_gated = train(cfg, start, x, 0.05, seed=0, gate=(20, lambda s: seen.append(1) or True))
    assert done and done_gated and seen == [1] and str(hist_plain) == str(hist_gated)  # str: nan == nan
    assert all(torch.equal(plain.state_dict()[k], gated.state_dict()[k]) for k in plain.state_dict())
    stopped, hist_stopped, done_stopped = train(cfg, start, x, 0.05, seed=0, gate=(26, lambda s: False))
    assert not done_stopped and hist_stopped[-1]["step"] == 26  # logged every 25 steps: step 26 is the last
    # whatever the probes found, the result is exactly the plain final run with the chosen λ
    for tolerance in (0.9, 0.01):  # the first probe lands / none lands (the best λ is trained to the end)
        wide = dataclasses.replace(cfg, calib_tolerance=tolerance, calib_probes=3)
        sae, hist, cal = calibrate_and_train(wide, start, x, x_val, seed=0)
        assert cal["probes"][0]["epochs"] == pytest.approx(1.0) and len(cal["probes"]) <= 3
        ref, ref_hist, _ = train(wide, start, x, cal["lambda"], seed=0)
        assert str(hist) == str(ref_hist)
        assert all(torch.equal(sae.state_dict()[k], ref.state_dict()[k]) for k in ref.state_dict())


@pytest.mark.parametrize("arch", ["jumprelu", "relu_l1", "topk"])
def test_a_run_shorter_than_its_probe_trains_with_the_kl_term(arch):
    """`dvc exp run -S sae.epochs=5` with calib_epochs 6 and the KL window in the last 3 epochs: the probe is the
    whole run, KL term included (this raised 'phase probe1 has kl_coef 10.0 but no readout' before)."""
    x, _ = _planted(n=1280)
    x_val, _ = _planted(n=300, seed=5)
    g = torch.Generator().manual_seed(3)
    fc2, shift, scale = _readout(24, g)
    ro = Readout.from_linear(fc2.float(), shift.float(), scale.float())
    cfg = SAEConfig(arch=arch, latents=32, target_actives=3, epochs=5, kl_epochs=3, calib_epochs=6.0,
                    batch_size=128, calib_probes=2)
    sae, hist, cal = calibrate_and_train(cfg, starting_point(cfg, x, 0), x, x_val, 0, ro)
    assert hist[-1]["step"] == 50 and len(cal["probes"]) <= 2
    assert all(r["epochs"] == pytest.approx(5.0) for r in cal["probes"])
    if arch == "topk":  # no sparsity term: in the window (steps 21..50) the logged loss is MSE + 10·KL
        assert all(abs(r["loss"] - r["mse"] - (10.0 * r["kl"] if r["step"] > 20 else 0.0)) < 1e-3 for r in hist)


def test_scratch_recipe_schedule_warms_lambda_up_and_decays_the_lr():
    x, _ = _planted(n=2560)
    cfg = SAEConfig(latents=32, target_actives=3, epochs=10, batch_size=128, kl_coef=0.0)
    _, hist, _ = train(cfg, starting_point(cfg, x, 0), x, 0.2, seed=0)
    steps = 200  # 20 a epoch
    lam = {r["step"]: r["lambda"] for r in hist}
    lr = {r["step"]: r["lr"] for r in hist}
    assert lam[1] == pytest.approx(0.2 / 20) and lam[26] == pytest.approx(0.2)  # 10% of 200 steps = 20
    # constant for 160 steps, then linear to 0 over the last 40 (logged every 25 steps: step 176 is s = 175)
    assert lr[1] == pytest.approx(cfg.lr) and lr[151] == pytest.approx(cfg.lr)
    assert lr[176] == pytest.approx(cfg.lr * 25 / 40)
    assert lr[steps] < 0.05 * cfg.lr


def test_kl_finetune_acts_only_in_its_window_and_lowers_the_spliced_kl():
    """A TopK phase of 4 epochs with the KL term in its last 2 (as final_phase sets for topk): before the window
    the logged loss is the plain MSE, inside it MSE + coef·KL; and the spliced KL ends lower than without it."""
    x, _ = _planted(n=3000)
    g = torch.Generator().manual_seed(3)
    fc2, shift, scale = _readout(24, g)
    ro = Readout.from_linear(fc2.float(), shift.float(), scale.float())
    cfg = SAEConfig(latents=64, target_actives=3, batch_size=100, aux_k_coef=0.0)
    kls = {}
    for coef in (0.0, 5.0):
        sae, hist = SAE(24, 64, "topk", k=3, generator=torch.Generator().manual_seed(1)), []
        run_phase(sae, x, Phase("topk", 4, kl_coef=coef, kl_epochs=2), cfg, torch.Generator().manual_seed(2), hist,
                  readout=ro)
        kls[coef] = ro.kl(x, sae(x)).item()
        for row in hist:
            in_window = coef > 0 and row["step"] > 60  # 30 steps an epoch, the window is steps 61..120
            want = row["mse"] + (coef * row["kl"] if in_window else 0.0)
            assert abs(row["loss"] - want) < 1e-3 * max(1.0, want), row
    assert kls[5.0] < 0.8 * kls[0.0], kls
    with pytest.raises(ValueError, match="no readout"):
        run_phase(SAE(24, 64, "topk", k=3), x, Phase("topk", 1, kl_coef=1.0), cfg, torch.Generator())
