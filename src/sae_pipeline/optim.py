"""Adam and the two learning-rate schedules the stages use.

Why not ``torch.optim``: every ``torch.optim`` optimizer is wrapped by ``torch._disable_dynamo``, whose first call
imports ``torch._dynamo`` (1.7-2 s on this machine, in every stage process that trains). ``Adam`` below calls the
same fused kernel that ``torch.optim.Adam(fused=True)`` uses (``torch._fused_adam_``, CPU and CUDA since torch 2.4):
one op per step for all parameters instead of seven per parameter, which matters at this model size (a step of
the SAE is ~2 ms). tests/test_optim.py checks it against ``torch.optim.Adam``/``AdamW``.
"""
from __future__ import annotations

import math

import torch


class Adam:
    def __init__(self, params, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.params = [p for p in params if p.requires_grad]
        self.b1, self.b2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = [torch.zeros((), device=p.device) for p in self.params]  # the kernel reads the step count from here

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """One update (Kingma & Ba 2015, Algorithm 1; weight decay decoupled as AdamW, Loshchilov & Hutter 2019).
        Parameters without a gradient this step are skipped, as torch.optim does."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        steps = [self.t[i] for i in live]
        grads = [self.params[i].grad for i in live]
        # The fused kernel walks parameter, gradient and moments as flat memory, so a gradient must share its
        # parameter's layout (autograd guarantees it; a hand-written gradient may not): copy it over if not.
        grads = [g if g.stride() == self.params[i].stride() else torch.empty_like(self.params[i]).copy_(g)
                 for i, g in zip(live, grads)]
        # The CPU kernel clones a non-contiguous tensor and copies it back every step (the SAE's column-major
        # encoder; docs/speed.md). A transposed matrix is contiguous seen transposed, and the update is elementwise:
        # hand the kernel that view of parameter, gradient and both moments (same memory, so same result).
        flip = [self.params[i].dim() == 2 and not self.params[i].is_contiguous() and
                self.params[i].t().is_contiguous() for i in live]
        view = lambda t, f: t.t() if f else t  # noqa: E731
        torch._foreach_add_(steps, 1)
        fused = torch._fused_adamw_ if self.weight_decay else torch._fused_adam_
        fused([view(self.params[i], f) for i, f in zip(live, flip)], [view(g, f) for g, f in zip(grads, flip)],
              [view(self.m[i], f) for i, f in zip(live, flip)], [view(self.v[i], f) for i, f in zip(live, flip)],
              [], steps, lr=lr, beta1=self.b1, beta2=self.b2,
              weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def cosine_lr(step: int, total: int, warmup: int = 20) -> float:
    """Multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))


def linear_tail_lr(step: int, total: int, tail: float = 0.2) -> float:
    """Multiplier: 1, then a linear decay to 0 over the last ``tail`` of the steps (SAELens's lr_decay_steps)."""
    start = total * (1 - tail)
    return 1.0 if step < start else max(0.0, (total - step) / max(total - start, 1))


def one_cycle_lr(step: int, total: int, pct_start: float = 0.3, div: float = 25.0, final_div: float = 1e4) -> float:
    """Multiplier of the one-cycle policy (Smith 2018), cosine in both phases as torch's OneCycleLR:
    from 1/div up to 1 over the first ``pct_start`` of the steps, then down to 1/(div*final_div)."""
    up = max(1, int(pct_start * total) - 1)

    def cos(a: float, b: float, frac: float) -> float:
        return b + (a - b) * 0.5 * (1 + math.cos(math.pi * frac))

    if step <= up:
        return cos(1 / div, 1.0, step / up)
    return cos(1.0, 1 / (div * final_div), min(1.0, (step - up) / max(1, total - 1 - up)))
