"""Adam and the two learning-rate schedules the stages use, in plain tensor ops.

Why not ``torch.optim``: every ``torch.optim`` optimizer is wrapped by ``torch._disable_dynamo``, whose first call
imports ``torch._dynamo`` (1.7-2 s on this machine, in every stage process that trains). The update below is
Adam exactly (Kingma & Ba 2015, Algorithm 1); tests/test_optim.py checks it against ``torch.optim.Adam``.
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
        self.t = 0

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """One update; parameters without a gradient this step are skipped (as torch.optim does)."""
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            if self.weight_decay:
                p.mul_(1 - lr * self.weight_decay)  # decoupled, as AdamW (Loshchilov & Hutter 2019)
            m.lerp_(p.grad, 1 - self.b1)
            v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1 - self.b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr / c1)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def cosine_lr(step: int, total: int, warmup: int = 20) -> float:
    """Multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))


def one_cycle_lr(step: int, total: int, pct_start: float = 0.3, div: float = 25.0, final_div: float = 1e4) -> float:
    """Multiplier of the one-cycle policy (Smith 2018), cosine in both phases as torch's OneCycleLR:
    from 1/div up to 1 over the first ``pct_start`` of the steps, then down to 1/(div*final_div)."""
    up = max(1, int(pct_start * total) - 1)

    def cos(a: float, b: float, frac: float) -> float:
        return b + (a - b) * 0.5 * (1 + math.cos(math.pi * frac))

    if step <= up:
        return cos(1 / div, 1.0, step / up)
    return cos(1.0, 1 / (div * final_div), min(1.0, (step - up) / max(1, total - 1 - up)))
