"""Which latents ``feature_report.json`` (the research script's 50-feature contract) shows: ``analysis.select``.

Rankings use **train** statistics only; ``compare_on_val`` measures what each rule's selection looks like on the
validation split, which is how the default was chosen (numbers in ``metrics/analysis.json``):

- ``frequency``: the most frequently firing latents (the research script's rule). At L0 20 these are the dense
  latents, the least label-specific band.
- ``purity``: the highest 95% Wilson lower bound of the share of firings on the latent's mode digit. The lower
  bound, not the point purity, ranks a latent with 3 of 3 firings below one with 950 of 1,000.
- ``per_class``: the same ranking, taken round-robin over the digits (the best latent whose mode is 0, then 1, ...,
  then each digit's second best, ...) among latents that mostly fire on one digit (lower bound >= 0.5), so that
  every digit with such a latent is shown; then the rest by lower bound.
"""
from __future__ import annotations

import torch

from ..config import SELECT_RULES as RULES
from .stats import LabelStats

MOSTLY_ONE_DIGIT = 0.5  # per_class draws round-robin only from latents whose mode share has this lower bound


def rank(rule: str, st: LabelStats, min_count: int) -> list[int]:
    """Latent ids in the rule's order, every latent that fires at least ``min_count`` times on train."""
    ok = [u for u in range(len(st.n)) if int(st.n[u]) >= min_count]
    if rule == "frequency":
        return sorted(ok, key=lambda u: (-int(st.n[u]), u))
    lower = st.purity_interval()[0]
    by_lower = sorted(ok, key=lambda u: (-float(lower[u]), u))
    if rule == "purity":
        return by_lower
    if rule == "per_class":
        mostly = [u for u in by_lower if float(lower[u]) >= MOSTLY_ONE_DIGIT]
        queues = [[u for u in mostly if int(st.mode[u]) == c] for c in range(st.counts.shape[1])]
        order, depth = [], 0
        while len(order) < len(mostly):
            order += [q[depth] for q in queues if depth < len(q)]
            depth += 1
        return order + [u for u in by_lower if float(lower[u]) < MOSTLY_ONE_DIGIT]
    raise ValueError(f"unknown selection rule {rule!r}; allowed: {', '.join(RULES)}")


def compare_on_val(st_train: LabelStats, st_val: LabelStats, fires_val: torch.Tensor, n: int, min_count: int,
                   high: float) -> dict:
    """What each rule's ``n`` latents look like on val: purity, digits with a pure latent, inputs reached."""
    out = {}
    for rule in RULES:
        sel = torch.tensor(rank(rule, st_train, min_count)[:n], dtype=torch.long)
        if not len(sel):
            out[rule] = {"n_selected": 0}
            continue
        pur = st_val.purity[sel]
        pure = sel[(pur >= high) & (st_val.n[sel] >= 1)]
        out[rule] = {
            "n_selected": len(sel),
            "val_purity_mean": round(float(pur.mean()), 6),
            "val_purity_min": round(float(pur.min()), 6),
            "val_lift_mean": round(float(st_val.lift[sel].mean()), 6),
            "val_firing_rate_mean": round(float(st_val.rate[sel].mean()), 6),
            "val_n_high_purity": len(pure),
            "val_classes_covered": len({int(c) for c in st_val.mode[pure]}),
            "val_inputs_covered": round(float(fires_val[:, sel].any(1).double().mean()), 6),
        }
    return out
