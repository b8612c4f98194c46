"""Causal effects of every latent on the base model's logits, through the real spliced forward pass.

The spliced model is ``logits = fc2(decode(f))`` with the SAE working on raw hidden activations (the exported
weights). Three measures, all on the test split, all vectorised over latents (no Python loop over 512 latents):

- direct logit attribution: ``W_dec[i] @ fc2.weight.T``, the logit change per unit of latent i;
- intervention: add ``v_i · W_dec[i]`` (v_i = the latent's mean activation when it fires) to the reconstruction
  of a fixed random sample of inputs where it is off; mean Δlogit and Δlog-prob per class, and the share of those
  inputs whose prediction flips to the most boosted class. fc2 is linear, so the mean Δlogit is v_i times the DLA
  up to float error; the Δlog-prob and the flips are not linear;
- ablation: zero latent i where it fires; Δ spliced accuracy (over all test inputs and over those where it fires)
  and the mean Δlogit of the latent's mode class.
"""
from __future__ import annotations

import torch

from ..base import MLP
from ..sae import SAE


@torch.no_grad()
def direct_logit_attribution(sae: SAE, model: MLP) -> torch.Tensor:
    """[U, C]: the logit change per unit of each latent (its decoder row through fc2)."""
    return sae.W_dec @ model.fc2.weight.T


@torch.no_grad()
def spliced_logits(sae: SAE, model: MLP, f: torch.Tensor) -> torch.Tensor:
    return model.fc2(sae.decode(f))


def _per_latent_mean(values: torch.Tensor, owner: torch.Tensor, n_latents: int) -> torch.Tensor:
    """Mean of the rows of ``values`` grouped by ``owner`` (a latent id per row); 0 for latents without rows."""
    sums = torch.zeros(n_latents, *values.shape[1:], dtype=values.dtype).index_add_(0, owner, values)
    counts = torch.bincount(owner, minlength=n_latents).clamp_min(1)
    return sums / counts.view(-1, *([1] * (values.dim() - 1)))


@torch.no_grad()
def intervention(logits: torch.Tensor, f: torch.Tensor, dla: torch.Tensor, n_inputs: int,
                 gen: torch.Generator) -> dict:
    """Add each latent at its mean active value to ``n_inputs`` random inputs where it is off."""
    n, u = f.shape
    fires = f > 0
    value = f.sum(0) / fires.sum(0).clamp_min(1)  # [U] mean activation when firing
    perm = torch.randperm(n, generator=gen)
    off = ~fires[perm]  # [N, U], rows in the random order
    take = off & (off.cumsum(0) <= n_inputs)  # the first n_inputs off-rows of each latent in that order
    rows, owner = take.nonzero(as_tuple=True)
    before = logits[perm[rows]]
    after = before + value[owner, None] * dla[owner]
    dlogit = _per_latent_mean(after - before, owner, u)
    dlogp = _per_latent_mean(after.log_softmax(-1) - before.log_softmax(-1), owner, u)
    top = dlogit.argmax(1)
    flipped = (after.argmax(-1) == top[owner]) & (before.argmax(-1) != top[owner])
    return {"value": value, "n_inputs": take.sum(0), "delta_logit": dlogit, "delta_logprob": dlogp,
            "top_class": top, "flip_to_top": _per_latent_mean(flipped.double(), owner, u)}


@torch.no_grad()
def ablation(logits: torch.Tensor, f: torch.Tensor, dla: torch.Tensor, y: torch.Tensor, mode: torch.Tensor) -> dict:
    """Zero each latent where it fires: Δ correct predictions and the mode class's mean Δlogit."""
    n, u = f.shape
    rows, owner = (f > 0).nonzero(as_tuple=True)
    before = logits[rows]
    after = before - f[rows, owner, None] * dla[owner]
    gained = (after.argmax(-1) == y[rows]).double() - (before.argmax(-1) == y[rows]).double()
    delta_right = torch.zeros(u, dtype=torch.float64).index_add_(0, owner, gained)
    fires = torch.bincount(owner, minlength=u)
    dmode = (after - before).gather(1, mode[owner, None])[:, 0]
    return {"delta_acc": delta_right / n, "delta_acc_where_active": delta_right / fires.clamp_min(1),
            "delta_mode_logit": _per_latent_mean(dmode.double(), owner, u)}
