"""Sparse autoencoders over the base model's hidden activations.

JumpReLU follows Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse
Autoencoders" (GDM). The math lives in ``jumprelu`` and ``step`` below and nowhere else: training, threshold tuning,
metrics, analysis and export all go through ``SAE.encode``.
"""
from __future__ import annotations

import torch
from torch import nn


# Both indicators below are written straight into a float tensor (``out=``): the 0/1 values are multiplied with
# floats right away, and on CPU a bool result plus a cast costs ~8x more than the comparison itself (measured:
# 155 us vs 9 us at [256, 512]), which at this model size is a visible share of a training step.
def _heaviside(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """H(pre - θ) = 1[pre > θ] as 0/1 floats (paper eq. 4: strict, so pre = θ gives 0)."""
    return torch.gt(pre, threshold, out=torch.empty_like(pre))


def _kernel(pre: torch.Tensor, threshold: torch.Tensor, eps: float) -> torch.Tensor:
    """Rectangle kernel K((pre - θ)/ε) with K(u) = 1[-1/2 < u < 1/2] (paper sec. 4, eq. 10), as 0/1 floats."""
    return torch.lt((pre - threshold).abs_(), eps / 2, out=torch.empty_like(pre))


def jumprelu_forward(pre: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f, H)`` with ``H = H(pre - θ)`` and ``f = pre·H`` (paper eq. 4). No gradients; see ``jumprelu_backward``."""
    h = _heaviside(pre, threshold)
    return pre * h, h


def jumprelu_backward(pre: torch.Tensor, threshold: torch.Tensor, h: torch.Tensor, eps: float,
                      grad_f: torch.Tensor | None, grad_h: torch.Tensor | float | None
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Pull ``grad_f`` (dL/df) and ``grad_h`` (dL/dH, a tensor or a constant) back to ``(dL/dpre, dL/dθ)``
    with the paper's pseudo-derivatives (sec. 4, eqs. 11-12), rectangle kernel of bandwidth ε.

    This is the one place the STE lives: the autograd Function below and the fused training step in
    ``sae_train`` both call it.
    """
    # d f / d pre = H(pre - θ): the jump itself has no gradient in pre; d H / d pre = 0, so sparsity is bought by
    # raising thresholds, never by shrinking pre-activations.
    grad_pre = grad_f * h if grad_f is not None else None
    if grad_f is None and grad_h is None:
        return grad_pre, None
    # d f / d θ = -(θ/ε) K((pre - θ)/ε) (eq. 11) and d H / d θ = -(1/ε) K((pre - θ)/ε) (eq. 12): together
    # -(1/ε) K times (θ·grad_f + grad_h), summed over the batch since θ is shared by all rows.
    if grad_f is None:
        inner = grad_h
    else:
        inner = grad_f * threshold
        if grad_h is not None:
            inner += grad_h
    grad_theta = (_kernel(pre, threshold, eps) * inner).sum_to_size(threshold.shape).mul_(-1.0 / eps)
    return grad_pre, grad_theta


class _JumpReLU(torch.autograd.Function):
    """Both outputs of ``jumprelu_forward`` under autograd. One Function for the two because the training loss
    uses both (reconstruction through f, L0 through H) and the kernel is then evaluated once, not once per output;
    ``jumprelu`` and ``step`` each take one output."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        f, h = jumprelu_forward(pre, threshold)
        ctx.save_for_backward(pre, threshold, h)
        ctx.bandwidth = bandwidth
        ctx.set_materialize_grads(False)  # an unused output gets None, not a tensor of zeros
        return f, h

    @staticmethod
    def backward(ctx, grad_f, grad_h):
        pre, threshold, h = ctx.saved_tensors
        grad_pre, grad_theta = jumprelu_backward(pre, threshold, h, ctx.bandwidth, grad_f, grad_h)
        return grad_pre, grad_theta, None


def jumprelu_and_step(pre: torch.Tensor, threshold: torch.Tensor,
                      bandwidth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pre·H(pre - θ), H(pre - θ))`` with the STE gradients of both; what training uses (loss = MSE + λ·ΣH)."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``pre * H(pre - threshold)``; threshold of shape [d_sae] broadcasts over the batch. STE gradients above."""
    return _JumpReLU.apply(pre, threshold, bandwidth)[0]


def step(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``H(pre - threshold)`` (the L0 indicator), with the STE gradient for threshold."""
    return _JumpReLU.apply(pre, threshold, bandwidth)[1]


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
        self.W_enc = nn.Parameter(w.t().clone())  # clone keeps the transposed (column-major) layout: x @ W_enc is
        # a little faster that way on CPU, and the fused training step computes its gradient in the same layout
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
        return self.activate_l0(pre)[0]

    def activate_l0(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(f, H)``: the latents and, for JumpReLU, the L0 indicator H(pre - θ) with its STE gradient for θ
        (the L0 term of the loss); None for the other activations."""
        if self.activation == "jumprelu":
            return jumprelu_and_step(pre, self.threshold, self.bandwidth)
        if self.activation == "topk":
            return topk_relu(pre, self.k), None
        return torch.relu(pre), None

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, d_in) -> (B, d_sae)
        return self.activate(self.pre_acts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:  # (B, d_sae) -> (B, d_in)
        return torch.addmm(self.b_dec, f, self.W_dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit-norm decoder rows, so sparsity cannot be bought by shrinking f and growing W_dec."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def config(self) -> dict:
        return {"d_in": self.d_in, "d_sae": self.d_sae, "activation": self.activation, "k": self.k,
                "bandwidth": self.bandwidth}


def sae_state(sae: SAE) -> dict:
    """``{"config": ..., "state_dict": ...}`` on the CPU: what the SAE stages save and ``load_sae`` reads."""
    return {"config": sae.config(), "state_dict": {k: v.cpu() for k, v in sae.state_dict().items()}}


def load_sae(state: dict) -> SAE:
    """Rebuild from ``sae_state``'s dict, as the train_sae stage writes it (``data/sae/sae.pt``)."""
    cfg = state["config"]
    sae = SAE(cfg["d_in"], cfg["d_sae"], cfg["activation"], cfg["k"], cfg["bandwidth"])
    sae.load_state_dict(state["state_dict"])
    return sae.eval()
