"""Label statistics of units that fire: counts, purity with a confidence interval, lift, entropy, class sets.

A *unit* is anything that fires on some inputs: an SAE latent (f > 0), a neuron (h > 0 or h above a quantile),
a random direction with a threshold. Everything here takes a boolean ``fires`` matrix [N, U] and the labels, so
the SAE and its baselines are measured by one piece of code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Z95 = 1.959964  # two-sided 95% normal quantile


def label_counts(fires: torch.Tensor, y: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """[U, C]: how often each unit fires on inputs of each class. One matmul; exact in float32 below 2^24 rows."""
    onehot = torch.nn.functional.one_hot(y, n_classes).to(torch.float32)
    return (fires.to(torch.float32).T @ onehot).round_().to(torch.int64)


def wilson(k: torch.Tensor, n: torch.Tensor, z: float = Z95) -> tuple[torch.Tensor, torch.Tensor]:
    """Wilson score interval for a binomial proportion k/n (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it
    over the normal interval, which gives [1, 1] for 3 of 3). n = 0 gives [0, 1]."""
    k, n = k.to(torch.float64), n.to(torch.float64)
    safe = n.clamp_min(1)
    p = k / safe
    den = 1 + z * z / safe
    centre = (p + z * z / (2 * safe)) / den
    half = z * torch.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe)) / den
    lo, hi = (centre - half).clamp(0, 1), (centre + half).clamp(0, 1)
    return torch.where(n > 0, lo, 0.0), torch.where(n > 0, hi, 1.0)


def entropy_bits(counts: torch.Tensor) -> torch.Tensor:
    """[U]: Shannon entropy (bits) of each unit's label distribution; 0 = one class, log2(10) = uniform."""
    p = counts.to(torch.float64) / counts.sum(1, keepdim=True).clamp_min(1)
    return -(p * torch.log2(p.clamp_min(1e-300))).sum(1)


@dataclass
class LabelStats:
    """Per-unit label statistics on one split."""

    counts: torch.Tensor  # [U, C] firings per class
    n: torch.Tensor  # [U] firings
    n_inputs: int  # rows of the split
    base_rate: torch.Tensor  # [C] class shares of the split

    @classmethod
    def of(cls, fires: torch.Tensor, y: torch.Tensor, n_classes: int = 10) -> "LabelStats":
        counts = label_counts(fires, y, n_classes)
        base = torch.bincount(y, minlength=n_classes).to(torch.float64) / len(y)
        return cls(counts, counts.sum(1), len(y), base)

    @property
    def rate(self) -> torch.Tensor:
        return self.n.to(torch.float64) / self.n_inputs

    @property
    def mode(self) -> torch.Tensor:
        return self.counts.argmax(1)  # ties -> the smallest class id

    @property
    def purity(self) -> torch.Tensor:
        """Share of a unit's firings on its most common class (0 for a unit that never fires)."""
        return self.counts.max(1).values.to(torch.float64) / self.n.clamp_min(1)

    def purity_interval(self, z: float = Z95) -> tuple[torch.Tensor, torch.Tensor]:
        return wilson(self.counts.max(1).values, self.n, z)

    @property
    def lift(self) -> torch.Tensor:
        """purity / base rate of the mode class: how much more often than chance the unit picks that class."""
        return self.purity / self.base_rate[self.mode]

    @property
    def entropy(self) -> torch.Tensor:
        return entropy_bits(self.counts)

    def share_in(self, sets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(firings on classes in each unit's set, firings) for a boolean [U, C] class-set mask."""
        return (self.counts * sets).sum(1), self.n

    def top_classes(self, k: int) -> torch.Tensor:
        """[U, k]: the k classes holding most of each unit's firings, most first (ties -> smaller class id)."""
        # stable sort on -counts keeps the smaller class id first among ties
        return torch.sort(-self.counts, dim=1, stable=True).indices[:, :k]


def set_mask(classes: torch.Tensor, sizes: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """[U, C] boolean mask of the first ``sizes[u]`` entries of ``classes[u]`` (a [U, K] ranking)."""
    keep = torch.arange(classes.shape[1])[None, :] < sizes[:, None]
    mask = torch.zeros(classes.shape[0], n_classes, dtype=torch.bool)
    return mask.scatter_(1, classes, keep)


def purity_summary(st: LabelStats, min_count: int, high: float) -> dict:
    """Distribution of purity over units with at least ``min_count`` firings, and what the pure ones cover."""
    counted = st.n >= min_count
    pur = st.purity[counted]
    pure = counted & (st.purity >= high)
    return {
        "n_units": int(st.n.numel()),
        "n_counted": int(counted.sum()),
        "purity_mean": _r(pur.mean()) if len(pur) else None,
        "purity_median": _r(pur.quantile(0.5)) if len(pur) else None,  # the mean of the middle two, as numpy
        "n_high_purity": int(pure.sum()),
        "classes_covered": sorted({int(c) for c in st.mode[pure]}),
    }


def _r(v) -> float:
    v = float(v)
    return round(v, 6) if math.isfinite(v) else v


def per_class_best(train: LabelStats, test: LabelStats, min_count: int, k: int = 8) -> list[list[dict]]:
    """Per digit c, the k latents with the best train F1 of "fires => digit is c" (at least ``min_count`` train
    firings), with their test precision and recall of that rule."""
    def prf(st):
        hits = st.counts.double()
        prec = hits / st.n.clamp_min(1)[:, None]
        rec = hits / (st.base_rate * st.n_inputs)[None, :]
        return prec, rec
    p_tr, r_tr = prf(train)
    f1 = torch.where(train.n[:, None] >= min_count, 2 * p_tr * r_tr / (p_tr + r_tr).clamp_min(1e-12), -1.0)
    p_te, r_te = prf(test)
    out = []
    for c in range(train.counts.shape[1]):
        best = [int(u) for u in f1[:, c].argsort(descending=True, stable=True)[:k] if f1[u, c] >= 0]
        out.append([{"l": u, "p": round(float(p_te[u, c]), 4), "r": round(float(r_te[u, c]), 4)} for u in best])
    return out
