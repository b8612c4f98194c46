"""Interpretability metrics of a unit family (the SAE or a baseline), for ``metrics/interpretability.json``.

All on the **test** split; the probes select and fit on train. Definitions (the README repeats them):

- counted units: units that fire on at least ``min_count`` test inputs; purity = share of a unit's firings on
  its most common digit. ``purity_mean``/``purity_median`` over counted units; ``n_high_purity`` = counted units
  with purity >= ``high``; ``classes_covered`` = distinct digits that are the mode of a high-purity unit;
  ``inputs_covered`` = share of test inputs on which at least one high-purity unit fires.
- ``top100_purity_mean``: for each counted unit, the purity of its (up to) 100 highest activations, averaged.
- ``probe``: sparse probing balanced accuracy and F1 at each k (``probing.sparse_probing``).
"""
from __future__ import annotations

import torch

from .probing import KS, sparse_probing
from .stats import LabelStats, purity_summary

TOP_N = 100


def top_purity(acts: torch.Tensor, fires: torch.Tensor, y: torch.Tensor, top_n: int = TOP_N) -> torch.Tensor:
    """[U]: purity of each unit's (up to) ``top_n`` highest-activation firing inputs (0 for a unit that never
    fires)."""
    masked = torch.where(fires, acts, torch.finfo(acts.dtype).min)
    vals, idx = masked.topk(min(top_n, len(acts)), dim=0)  # [n, U]
    valid = fires.gather(0, idx)
    counts = torch.zeros(acts.shape[1], 10, dtype=torch.float64)
    counts.scatter_add_(1, y[idx].T, valid.T.double())
    return counts.max(1).values / valid.sum(0).clamp_min(1)


def family_metrics(acts: dict[str, torch.Tensor], fires: dict[str, torch.Tensor], y: dict[str, torch.Tensor],
                   min_count: int, high: float, ks=KS, probe: bool = True) -> dict:
    st = LabelStats.of(fires["test"], y["test"])
    out = purity_summary(st, min_count, high)
    counted = st.n >= min_count
    pure = counted & (st.purity >= high)
    out["n_classes_covered"] = len(out["classes_covered"])
    out["inputs_covered"] = round(float(fires["test"][:, pure].any(1).double().mean()), 6)
    tp = top_purity(acts["test"], fires["test"], y["test"])[counted]
    out["top100_purity_mean"] = round(float(tp.mean()), 6) if len(tp) else None
    out["firing_rate_mean"] = round(float(st.rate.mean()), 6)
    if probe:
        out["probe"] = sparse_probing(acts["train"], y["train"], acts["test"], y["test"], ks)
    return out
