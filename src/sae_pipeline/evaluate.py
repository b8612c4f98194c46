"""The test-split summary of a tuned SAE spliced into the base model: ``logits = fc2(decode(encode(h)))``."""
from __future__ import annotations

import torch

from . import metrics as M
from .activations import Acts
from .base import MLP
from .sae import SAE


@torch.no_grad()
def summary(sae: SAE, acts: Acts, model: MLP, y_test: torch.Tensor, lam: float, tau: float, arch: str,
            target: int, l0_val: float) -> dict:
    """Keeps the research script's keys (``*_jumprelu`` hold the numbers of whatever ``arch`` says)."""
    h = acts.to_hidden(acts.test)
    f = sae.encode(acts.test)
    z_hat = sae.decode(f)
    base_logits = model.fc2(h)
    recon_logits = model.fc2(acts.to_hidden(z_hat))
    ablated_logits = model.fc2(acts.mean.expand_as(h))  # mean ablation
    base_acc, recon_acc = M.accuracy(base_logits, y_test), M.accuracy(recon_logits, y_test)
    ablated_acc = M.accuracy(ablated_logits, y_test)
    fires_train = torch.zeros(sae.d_sae, device=h.device)
    for i in range(0, len(acts.train), 8192):
        fires_train += (sae.encode(acts.train[i:i + 8192]) > 0).float().sum(0)
    rate = fires_train / len(acts.train)
    r = lambda v: round(float(v), 6)  # noqa: E731
    return {
        "baseline_acc": r(base_acc),
        "recon_acc_jumprelu": r(recon_acc),
        "delta_acc_jumprelu": r(base_acc - recon_acc),
        "achieved_actives_val": r(l0_val),
        "achieved_actives_test": r(M.l0(f)),
        "target_actives": target,
        "fvu": r(M.fvu(acts.test, z_hat)),
        "explained_variance": r(1 - M.fvu(acts.test, z_hat)),
        "cosine_sim": r(M.cosine_sim(acts.test, z_hat)),
        "acc_recovered": r(M.recovered(recon_acc, base_acc, ablated_acc)),
        "kl_logits": r(M.kl_logits(base_logits, recon_logits)),
        # Δacc is a net count (flips onto the label minus flips off it); this counts every changed prediction,
        # the less noisy measure when comparing two SAEs whose Δacc differ by a few images
        "pred_flip_frac": r((base_logits.argmax(-1) != recon_logits.argmax(-1)).float().mean()),
        "dead_frac": r((rate == 0).float().mean()),
        "dense_frac": r((rate > 0.1).float().mean()),
        "lambda": r(lam),
        "tau": tau,
        "arch": arch,
    }
