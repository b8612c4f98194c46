"""The test-split summary of a tuned SAE spliced into its base model at its site:
``logits = rest(decode(encode(h)))`` through ``Site.rest``."""
from __future__ import annotations

import torch

from . import metrics as M
from .activations import Acts
from .sae import SAE
from .zoo import Site


@torch.no_grad()
def splice(sae: SAE, acts: Acts, site: Site, z: torch.Tensor, ctx: torch.Tensor | None, y: torch.Tensor) -> dict:
    """The SAE spliced into the base model on one split (``z`` normalised activations, ``ctx`` the site's
    context on the same rows, ``y`` labels).

    Δacc = base_acc - recon_acc is a net count: ``breaks`` (right -> wrong) minus ``fixes`` (base errors the
    splice happens to fix). ``flip_frac`` counts every changed prediction, the less noisy measure when two SAEs'
    Δacc differ by a few images.
    """
    f = sae.encode(z)
    z_hat = sae.decode(f)
    base_logits, recon_logits = site.logits(acts.to_hidden(z), ctx), site.logits(acts.to_hidden(z_hat), ctx)
    base_pred, recon_pred = base_logits.argmax(-1), recon_logits.argmax(-1)
    return {
        "base_acc": M.accuracy(base_logits, y), "recon_acc": M.accuracy(recon_logits, y),
        "l0": M.l0(f), "fvu": M.fvu(z, z_hat), "cosine_sim": M.cosine_sim(z, z_hat),
        "kl": M.kl_logits(base_logits, recon_logits),
        "flip_frac": (base_pred != recon_pred).float().mean().item(),
        "breaks": int(((base_pred == y) & (recon_pred != y)).sum()),
        "fixes": int(((base_pred != y) & (recon_pred == y)).sum()),
    }


@torch.no_grad()
def firing_rate(sae: SAE, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """[d_sae]: the share of rows of ``x`` on which each latent fires."""
    fires = torch.zeros(sae.d_sae, device=x.device)
    for i in range(0, len(x), chunk):
        fires += (sae.encode(x[i:i + chunk]) > 0).float().sum(0)
    return fires / len(x)


@torch.no_grad()
def summary(sae: SAE, acts: Acts, site: Site, ctx_test: torch.Tensor | None, y_test: torch.Tensor, lam: float,
            tau: float, arch: str, target: int, l0_val: float) -> dict:
    """Keeps the research script's keys (``*_jumprelu`` hold the numbers of whatever ``arch`` says)."""
    s = splice(sae, acts, site, acts.test, ctx_test, y_test)
    ablated_acc = M.accuracy(site.logits(acts.mean.expand(len(acts.test), -1), ctx_test), y_test)  # mean ablation
    rate = firing_rate(sae, acts.train)
    r = lambda v: round(float(v), 6)  # noqa: E731
    return {
        "baseline_acc": r(s["base_acc"]),
        "recon_acc_jumprelu": r(s["recon_acc"]),
        "delta_acc_jumprelu": r(s["base_acc"] - s["recon_acc"]),
        "achieved_actives_val": r(l0_val),
        "achieved_actives_test": r(s["l0"]),
        "target_actives": target,
        "fvu": r(s["fvu"]),
        "explained_variance": r(1 - s["fvu"]),
        "cosine_sim": r(s["cosine_sim"]),
        "acc_recovered": r(M.recovered(s["recon_acc"], s["base_acc"], ablated_acc)),
        "kl_logits": r(s["kl"]),
        "pred_flip_frac": r(s["flip_frac"]),
        "dead_frac": r((rate == 0).float().mean()),
        "dense_frac": r((rate > 0.1).float().mean()),
        "lambda": r(lam),
        "tau": tau,
        "arch": arch,
    }
