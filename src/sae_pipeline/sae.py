"""Sparse autoencoders over the base model's hidden activations.

JumpReLU follows Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse
Autoencoders" (GDM). The math lives in ``jumprelu`` and ``step`` below and nowhere else: training, threshold tuning,
metrics, analysis and export all go through ``SAE.encode``.
"""
from __future__ import annotations

import torch
from torch import nn


def _kernel(pre: torch.Tensor, threshold: torch.Tensor, eps: float) -> torch.Tensor:
    """Rectangle kernel K((pre - θ)/ε) with K(u) = 1[-1/2 < u < 1/2] (paper sec. 4, eq. 10), as a 0/1 tensor."""
    return ((pre - threshold).abs_() < eps / 2).to(pre.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        mask = pre > threshold
        ctx.save_for_backward(pre, threshold, mask)
        ctx.bandwidth = bandwidth
        return pre * mask

    @staticmethod
    def backward(ctx, grad):
        pre, threshold, mask = ctx.saved_tensors
        eps = ctx.bandwidth
        # d f / d pre = H(pre - θ): the jump itself has no gradient in pre (paper eq. 11, first part).
        grad_pre = grad * mask
        # d f / d θ = -(θ/ε) K((pre - θ)/ε): the straight-through pseudo-derivative (paper eq. 11). θ is constant
        # over the batch, so the factor comes out of the batch sum.
        grad_theta = (grad * _kernel(pre, threshold, eps)).sum_to_size(threshold.shape) * (-threshold / eps)
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        # d H / d pre = 0 and d H / d θ = -(1/ε) K((pre - θ)/ε) (paper eq. 12): the L0 penalty reaches θ only,
        # so sparsity is bought by raising thresholds, never by shrinking pre-activations.
        grad_theta = (grad * _kernel(pre, threshold, eps)).sum_to_size(threshold.shape) * (-1.0 / eps)
        return None, grad_theta, None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``pre * H(pre - threshold)``; threshold of shape [d_sae] broadcasts over the batch. STE gradients above."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``H(pre - threshold)`` (the L0 indicator), with the STE gradient for threshold."""
    return _Step.apply(pre, threshold, bandwidth)


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest pre-activations per row, ReLU'd (Gao et al. 2024, "Scaling and evaluating SAEs")."""
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))


class SAE(nn.Module):
    """``pre = x W_enc + b_enc``, ``f = act(pre)``, ``x_hat = f W_dec + b_dec``.

    ``activation`` is ``jumprelu`` (per-latent threshold), ``topk`` (k = target L0) or ``relu`` (the L1 baseline).
    A JumpReLU run may train its first epochs as ``topk`` (a warm start) and then switch; the weights are the same.
    """

    def __init__(self, d_in: int, d_sae: int, activation: str = "jumprelu", k: int = 20,
                 bandwidth: float = 0.1, theta_init: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        self.activation, self.k, self.bandwidth = activation, k, bandwidth
        # Tied init, unit-norm decoder rows (Conerly et al. 2024; Gao et al. 2024 sec. 2.4).
        w = torch.randn(d_sae, d_in, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())
        self.W_enc = nn.Parameter(w.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # theta itself is the parameter, not log theta: a log parametrisation barely moves under Adam (SAELens #718).
        self.threshold = nn.Parameter(torch.full((d_sae,), float(theta_init)))

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, d_in) -> (B, d_sae)
        return torch.addmm(self.b_enc, x, self.W_enc)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.activation == "jumprelu":
            return jumprelu(pre, self.threshold, self.bandwidth)
        if self.activation == "topk":
            return topk_relu(pre, self.k)
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, d_in) -> (B, d_sae)
        return self.activate(self.pre_acts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:  # (B, d_sae) -> (B, d_in)
        return torch.addmm(self.b_dec, f, self.W_dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def l0_indicator(self, pre: torch.Tensor) -> torch.Tensor:
        """JumpReLU's H(pre - theta), with the STE gradient for theta: the L0 term of the loss."""
        return step(pre, self.threshold, self.bandwidth)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit-norm decoder rows, so sparsity cannot be bought by shrinking f and growing W_dec."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def config(self) -> dict:
        return {"d_in": self.d_in, "d_sae": self.d_sae, "activation": self.activation, "k": self.k,
                "bandwidth": self.bandwidth}


def load_sae(state: dict) -> SAE:
    """Rebuild from ``{"config": ..., "state_dict": ...}`` as written by the train_sae and tune_theta stages."""
    cfg = state["config"]
    sae = SAE(cfg["d_in"], cfg["d_sae"], cfg["activation"], cfg["k"], cfg["bandwidth"])
    sae.load_state_dict(state["state_dict"])
    return sae.eval()
