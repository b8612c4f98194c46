import torch

from sae_pipeline.optim import Adam, one_cycle_lr


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 5, generator=g, dtype=torch.float64)
    x, y = torch.randn(64, 8, generator=g, dtype=torch.float64), torch.randn(64, 5, generator=g, dtype=torch.float64)
    return w, x, y


def test_adam_matches_torch_adam_and_adamw():
    for wd in (0.0, 0.05):
        w, x, y = _problem()
        a, b = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
        ours = Adam([a], weight_decay=wd)
        ref = (torch.optim.AdamW if wd else torch.optim.Adam)([b], lr=1e-2, weight_decay=wd)
        for step in range(50):
            lr = 1e-2 * (1 - step / 60)
            for g in ref.param_groups:
                g["lr"] = lr
            for p in (a, b):
                ((x @ p - y) ** 2).mean().backward()
            ours.step(lr)
            ref.step()
            ours.zero_grad()
            ref.zero_grad()
        assert torch.allclose(a, b, atol=1e-10), (wd, (a - b).abs().max())
        assert not torch.allclose(a, w)


def test_one_cycle_matches_torch_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=100)
    for step in range(100):
        assert abs(opt.param_groups[0]["lr"] - one_cycle_lr(step, 100)) < 1e-9, step
        opt.step()
        sched.step()


def test_adam_handles_a_gradient_whose_layout_differs_from_its_parameter():
    """A column-major parameter (like the SAE's W_enc) with a row-major gradient: the update must land on the
    right elements (the fused kernel walks flat memory)."""
    w, x, y = _problem(1)
    a = w.t().contiguous().t().requires_grad_(True)  # same values, column-major
    b = w.clone().requires_grad_(True)
    assert a.stride() != b.stride()
    ours, ref = Adam([a]), torch.optim.Adam([b], lr=1e-2)
    for _ in range(5):
        ((x @ b - y) ** 2).mean().backward()
        a.grad = b.grad.clone()  # row-major
        ours.step(1e-2)
        ref.step()
        ref.zero_grad()
    assert torch.allclose(a, b, atol=1e-10)
