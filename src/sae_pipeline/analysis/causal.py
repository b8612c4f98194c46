"""Causal effects of every latent on the base model's logits, through the real spliced forward pass.

The spliced model is ``logits = rest(decode(f), ctx)`` (``Site.rest``: the rest of the model from the site, with
the SAE working on raw site activations, the exported weights). Three measures, all on the test split, all
vectorised over latents (no Python loop over 512 latents):

- direct logit attribution: the logit change per unit of latent i, ``W_dec[i] @ J.T`` with ``J`` the Jacobian of
  the logits with respect to the site, averaged over the test inputs. Where the rest of the model is one linear
  layer, ``J`` is its weight (exact); elsewhere it is the first-order estimate;
- intervention: add ``v_i · W_dec[i]`` (v_i = the latent's mean activation when it fires) to the reconstruction
  of a fixed random sample of inputs where it is off, and run the rest of the model; mean Δlogit and Δlog-prob
  per class, and the share of those inputs whose prediction flips to the most boosted class. With a linear rest
  the mean Δlogit is v_i times the DLA (computed that way: the same numbers without the forward passes);
- ablation: zero latent i where it fires; Δ spliced accuracy (over all test inputs and over those where it fires)
  and the mean Δlogit of the latent's mode class.
"""
from __future__ import annotations

import torch

from ..sae import SAE
from ..zoo import CHUNK, Site


class Spliced:
    """The SAE's reconstruction spliced into the model on the test split, and its logits under edits that add
    ``coef * W_dec[owner]`` to the reconstruction of given rows."""

    def __init__(self, sae: SAE, site: Site, f: torch.Tensor, ctx: torch.Tensor | None):
        self.sae, self.site, self.ctx = sae, site, ctx
        self.recon = sae.decode(f)
        self.logits = site.logits(self.recon, ctx)
        self.linear = site.readout()

    def jacobian(self, n: int = 512) -> torch.Tensor:
        """[C, d]: d logits / d site activation, averaged over the first ``n`` test inputs."""
        if self.linear is not None:
            return self.linear.weight
        h = self.recon[:n].clone().requires_grad_(True)
        ctx = None if self.ctx is None else self.ctx[:n]
        with torch.enable_grad():
            out = self.site.rest(h, ctx)
            rows = [torch.autograd.grad(out[:, c].sum(), h, retain_graph=c < out.shape[1] - 1)[0].mean(0)
                    for c in range(out.shape[1])]
        return torch.stack(rows)

    def dla(self) -> torch.Tensor:
        """[U, C]: the logit change per unit of each latent (its decoder row through the Jacobian)."""
        return self.sae.W_dec @ self.jacobian().T

    def edited(self, rows: torch.Tensor, owner: torch.Tensor, coef: torch.Tensor, dla: torch.Tensor
               ) -> torch.Tensor:
        """Logits of ``rows`` with ``coef * W_dec[owner]`` added to their reconstruction (one edit per row)."""
        before = self.logits[rows]
        if self.linear is not None:
            return before + coef[:, None] * dla[owner]
        out = []
        for i in range(0, len(rows), CHUNK):
            r, o, c = rows[i:i + CHUNK], owner[i:i + CHUNK], coef[i:i + CHUNK]
            h = self.recon[r] + c[:, None] * self.sae.W_dec[o]
            out.append(self.site.rest(h, None if self.ctx is None else self.ctx[r]))
        return torch.cat(out) if out else before


def _per_latent_mean(values: torch.Tensor, owner: torch.Tensor, n_latents: int) -> torch.Tensor:
    """Mean of the rows of ``values`` grouped by ``owner`` (a latent id per row); 0 for latents without rows."""
    sums = torch.zeros(n_latents, *values.shape[1:], dtype=values.dtype).index_add_(0, owner, values)
    counts = torch.bincount(owner, minlength=n_latents).clamp_min(1)
    return sums / counts.view(-1, *([1] * (values.dim() - 1)))


@torch.no_grad()
def intervention(sp: Spliced, f: torch.Tensor, dla: torch.Tensor, n_inputs: int, gen: torch.Generator) -> dict:
    """Add each latent at its mean active value to ``n_inputs`` random inputs where it is off."""
    n, u = f.shape
    fires = f > 0
    value = f.sum(0) / fires.sum(0).clamp_min(1)  # [U] mean activation when firing
    perm = torch.randperm(n, generator=gen)
    off = ~fires[perm]  # [N, U], rows in the random order
    take = off & (off.cumsum(0) <= n_inputs)  # the first n_inputs off-rows of each latent in that order
    rows, owner = take.nonzero(as_tuple=True)
    before = sp.logits[perm[rows]]
    after = sp.edited(perm[rows], owner, value[owner], dla)
    dlogit = _per_latent_mean(after - before, owner, u)
    dlogp = _per_latent_mean(after.log_softmax(-1) - before.log_softmax(-1), owner, u)
    top = dlogit.argmax(1)
    flipped = (after.argmax(-1) == top[owner]) & (before.argmax(-1) != top[owner])
    return {"value": value, "n_inputs": take.sum(0), "delta_logit": dlogit, "delta_logprob": dlogp,
            "top_class": top, "flip_to_top": _per_latent_mean(flipped.double(), owner, u)}


@torch.no_grad()
def ablation(sp: Spliced, f: torch.Tensor, dla: torch.Tensor, y: torch.Tensor, mode: torch.Tensor) -> dict:
    """Zero each latent where it fires: Δ correct predictions and the mode class's mean Δlogit."""
    n, u = f.shape
    rows, owner = (f > 0).nonzero(as_tuple=True)
    before = sp.logits[rows]
    after = sp.edited(rows, owner, -f[rows, owner], dla)
    gained = (after.argmax(-1) == y[rows]).double() - (before.argmax(-1) == y[rows]).double()
    delta_right = torch.zeros(u, dtype=torch.float64).index_add_(0, owner, gained)
    fires = torch.bincount(owner, minlength=u)
    dmode = (after - before).gather(1, mode[owner, None])[:, 0]
    return {"delta_acc": delta_right / n, "delta_acc_where_active": delta_right / fires.clamp_min(1),
            "delta_mode_logit": _per_latent_mean(dmode.double(), owner, u)}
