"""Reconstruction and splice metrics as small pure functions on tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    return ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def cosine_sim(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over rows of cos(x, x_hat)."""
    return F.cosine_similarity(x, x_hat, dim=-1).mean().item()


def l0(f: torch.Tensor) -> float:
    """Mean number of non-zero latents per row."""
    return (f != 0).float().sum(-1).mean().item()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(-1) == y).float().mean().item()


def kl_div_logits(base_logits: torch.Tensor, new_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(softmax(base) || softmax(new)) per example, in nats, as a differentiable tensor."""
    return F.kl_div(new_logits.log_softmax(-1), base_logits.log_softmax(-1), log_target=True,
                    reduction="batchmean")


def kl_logits(base_logits: torch.Tensor, new_logits: torch.Tensor) -> float:
    """``kl_div_logits`` as a number, for reports."""
    return kl_div_logits(base_logits, new_logits).item()


def recovered(acc_recon: float, acc_base: float, acc_ablated: float) -> float:
    """(acc_recon - acc_ablated) / (acc_base - acc_ablated): 1 = as good as the base model, 0 = mean ablation."""
    return (acc_recon - acc_ablated) / max(acc_base - acc_ablated, 1e-12)
