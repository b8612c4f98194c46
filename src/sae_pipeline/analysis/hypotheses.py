"""Label hypotheses for every latent, derived on one split and scored on another.

A hypothesis says "when this latent fires, the digit is in S", for the smallest set S of at most ``max_classes``
digits (the ones holding most of the latent's firings) that earns the best grade. The grade comes from the 95%
Wilson **lower bound** of the share of firings in S on the derivation split (train), never the point estimate,
so that 3 firings out of 3 do not make a "pure" latent:

    high: lower bound >= 0.9    medium: >= 0.7    low: >= 0.5    none: no set of <= max_classes digits reaches 0.5

A grade is a claim about precision: "fires => digit in S" holds at least that often. It is then scored on a held
-out split (test): precision (share of the latent's firings whose digit is in S) and recall (share of the inputs
with a digit in S on which it fires). ``calibration`` reports each grade's held-out precision next to its claim;
a grade whose pooled held-out precision is below its claim would be a bug.
"""
from __future__ import annotations

import torch

from .stats import LabelStats, set_mask, wilson

GRADES = (("high", 0.9), ("medium", 0.7), ("low", 0.5))
NONE = "none"
CLAIM = dict(GRADES)


def grade_of(lower: torch.Tensor) -> list[str]:
    out = []
    for v in lower.tolist():
        out.append(next((g for g, t in GRADES if v >= t), NONE))
    return out


def _rank(grade: str) -> int:
    return {g: i for i, (g, _) in enumerate(GRADES)}.get(grade, len(GRADES))


def derive(st: LabelStats, max_classes: int, min_count: int) -> dict:
    """For each unit: class set (sorted list), set size, lower/upper bound and point share on ``st``, grade.

    A unit with fewer than ``min_count`` firings gets no hypothesis (grade none, empty set).
    """
    ranking = st.top_classes(max_classes)  # [U, K]
    n = st.n
    best_size = torch.ones(len(n), dtype=torch.long)
    best_grade = [NONE] * len(n)
    lows = []
    for size in range(1, max_classes + 1):
        k = st.counts.gather(1, ranking[:, :size]).sum(1)
        lo, _ = wilson(k, n)
        lows.append(lo)
        for u, g in enumerate(grade_of(lo)):
            if _rank(g) < _rank(best_grade[u]):  # strictly better grade: a larger set must buy a higher grade
                best_grade[u], best_size[u] = g, size
    enough = (n >= min_count).tolist()
    best_grade = [g if ok else NONE for g, ok in zip(best_grade, enough)]
    mask = set_mask(ranking, best_size)
    in_set, _ = st.share_in(mask)
    lo, hi = wilson(in_set, n)
    classes = [sorted(ranking[u, :best_size[u]].tolist()) if g != NONE else [] for u, g in enumerate(best_grade)]
    return {"classes": classes, "mask": mask & torch.tensor([g != NONE for g in best_grade])[:, None],
            "grade": best_grade, "share": in_set.double() / n.clamp_min(1), "lower": lo, "upper": hi,
            "n": n}


def score(hyp: dict, st: LabelStats, fires: torch.Tensor, y: torch.Tensor) -> dict:
    """Held-out precision and recall of each hypothesis on another split (``st``, ``fires`` and ``y`` of it)."""
    in_set, n = st.share_in(hyp["mask"])
    precision = in_set.double() / n.clamp_min(1)
    member = hyp["mask"][:, y].T  # [N, U]: is input's digit in unit's set
    support = member.sum(0)
    hits = (fires & member).sum(0)
    recall = hits.double() / support.clamp_min(1)
    return {"precision": precision, "recall": recall, "in_set": in_set, "n": n}


def calibration(hyp: dict, held: dict) -> dict:
    """Per grade: how many latents, what the grade claims, and the held-out precision it got."""
    out = {}
    for g, claim in GRADES:
        idx = [u for u, gg in enumerate(hyp["grade"]) if gg == g and int(held["n"][u]) > 0]
        if not idx:
            out[g] = {"n_latents": 0, "claimed_precision": claim}
            continue
        i = torch.tensor(idx)
        prec = held["precision"][i]
        _, upper = wilson(held["in_set"][i], held["n"][i])
        pooled = float(held["in_set"][i].sum() / held["n"][i].sum())
        out[g] = {
            "n_latents": len(idx),
            "claimed_precision": claim,
            "heldout_precision_pooled": round(pooled, 6),
            "heldout_precision_median": round(float(prec.quantile(0.5)), 6),
            "share_at_or_above_claim": round(float((prec >= claim).double().mean()), 6),
            # a latent's test share can dip below the claim by chance; its test interval should still reach it
            "share_consistent_with_claim": round(float((upper >= claim).double().mean()), 6),
            "heldout_recall_mean": round(float(held["recall"][i].mean()), 6),
            "holds": pooled >= claim,
        }
    return out


def sentence(classes: list[int], share: float, lower: float, upper: float, n: int, grade: str) -> str:
    """'fires on 4s and 9s: 94% of its 1,234 train firings (95% CI 93-95%)'."""
    if grade == NONE or not classes:
        return (f"no hypothesis: no set of up to 3 digits holds half of its {n:,} train firings "
                "with 95% confidence" if n else "never fires on train")
    names = [f"{c}s" for c in classes]
    digits = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return (f"fires on {digits}: {share:.0%} of its {n:,} train firings "
            f"(95% CI {lower:.0%}-{upper:.0%})")
