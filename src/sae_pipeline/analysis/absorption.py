"""Feature splitting and absorption: does a digit have a latent that stands for all of it?

After Chanin et al. 2024 ("A is for absorption", arXiv 2409.14507) and SAEBench's absorption metric (Karvonen et
al. 2025), adapted to digits (the feature is "the image is digit c"; the README repeats the definitions):

- **best-latent recall**: the test recall of the single latent whose rule "fires => c" has the best train F1 (its
  test precision beside it);
- **latents to 90% recall**: the size of a greedy cover built on train: add the latent that adds the most new
  hits while the precision of "any of them fires => c" stays >= 0.9, until that rule's recall reaches 0.9 (a
  digit that never gets there counts as ``MAX_COVER``);
- **main latents** of c: SAEBench's k-sparse selection, greedily on train: add the latent that most raises the F1
  of "any of them fires => c", while that gain is at least ``SPLIT_GAIN`` (SAEBench's τ_fs), at most ``MAX_MAIN``;
- **absorption rate** of c: among the test images of c that a dense linear probe for c (fitted on train on the
  site's activations, one against the rest; ``probing.dense_directions``) gets right, the share on which no main
  latent fires while another latent does that is aligned with the probe (cosine of its decoder row with the probe
  direction >= ``ALIGN_MIN``) and carries at least ``SHARE_MIN`` of the positive probe projection of the
  reconstruction (the sum over firing latents of max(0, f_u · d_u·p)). The digit was seen — by the probe, and by
  a latent pointing its way — but its main latents were silent: the feature was absorbed into another latent;
- **absorption fraction** of c (SAEBench's partial absorption, after Demian Till): on the same images, the share
  of the positive probe projection of the reconstruction that latents other than the main ones carry, averaged.

Everything is on the raw site activations and the exported SAE, so another implementation can recompute it
(tests/test_independent.py does, with numpy and scikit-learn).
"""
from __future__ import annotations

import torch

from .stats import LabelStats, per_class_best

PRECISION = RECALL = 0.9  # the "90% recall at 90% precision" of latents-to-90
MAX_COVER = 50  # a cover that needs more (or never gets there) counts as this many
SPLIT_GAIN = 0.03  # SAEBench's feature-split threshold τ_fs on the F1 gain of one more main latent
MAX_MAIN = 10
ALIGN_MIN = 0.1  # cosine of an absorbing latent's decoder row with the probe direction
SHARE_MIN = 0.5  # its share of the positive probe projection


class _Union:
    """The union of chosen latents' firings on train rows, and what each latent would add to it: the counts are
    updated with the rows each pick newly covers (few), not recounted over all rows."""

    def __init__(self, fires: torch.Tensor, pos: torch.Tensor):
        self.fires, self.pos = fires, pos
        self.covered = torch.zeros(len(pos), dtype=torch.bool)
        self.new_tp, self.new_fp = pos.float() @ fires, (~pos).float() @ fires  # [U] if added now
        self.tp = self.fp = 0.0

    def add(self, u: int) -> None:
        self.tp, self.fp = self.tp + float(self.new_tp[u]), self.fp + float(self.new_fp[u])
        newly = (self.fires[:, u] > 0) & ~self.covered
        rows = self.fires[newly]
        hit = self.pos[newly]
        self.new_tp -= rows[hit].sum(0)
        self.new_fp -= rows[~hit].sum(0)
        self.covered |= newly


def main_latents(fires: torch.Tensor, pos: torch.Tensor, eligible: torch.Tensor) -> list[int]:
    """The digit's main latents (module doc): greedy F1 of the union, train rows. ``fires`` is float [N, U]."""
    un = _Union(fires, pos)
    n_pos, f1, chosen = float(pos.sum()), 0.0, []
    while len(chosen) < MAX_MAIN:
        cand = 2 * (un.tp + un.new_tp) / (n_pos + un.tp + un.new_tp + un.fp + un.new_fp)
        cand = torch.where(eligible, cand, -1.0)
        if chosen:
            cand[chosen] = -1.0
        u = int(cand.argmax())
        if float(cand[u]) - f1 < (SPLIT_GAIN if chosen else 1e-12):
            break
        chosen.append(u)
        f1 = float(cand[u])
        un.add(u)
    return chosen


def cover_to_90(fires: torch.Tensor, pos: torch.Tensor, eligible: torch.Tensor) -> list[int] | None:
    """The latents-to-90 cover (module doc) on train rows, or None when it cannot reach 90% recall."""
    un = _Union(fires, pos)
    n_pos, chosen = float(pos.sum()), []
    while un.tp < RECALL * n_pos and len(chosen) < MAX_COVER:
        tp, fp = un.tp + un.new_tp, un.fp + un.new_fp
        ok = eligible & (tp >= PRECISION * (tp + fp)) & (un.new_tp > 0)
        if chosen:
            ok[chosen] = False
        if not bool(ok.any()):
            return None
        u = int(torch.where(ok, un.new_tp, -1.0).argmax())
        chosen.append(u)
        un.add(u)
    return chosen if un.tp >= RECALL * n_pos else None


def _prf(fires: torch.Tensor, pos: torch.Tensor) -> tuple[float, float]:
    """Precision and recall of "any column of ``fires`` (bool [N, k]) fires => positive"."""
    any_ = fires.any(1)
    hits = float((any_ & pos).sum())
    return hits / max(float(any_.sum()), 1.0), hits / max(float(pos.sum()), 1.0)


@torch.no_grad()
def absorption_metrics(f: dict[str, torch.Tensor], y: dict[str, torch.Tensor], h_test: torch.Tensor,
                       w_dec: torch.Tensor, probe_w: torch.Tensor, probe_b: torch.Tensor, min_count: int,
                       n_classes: int = 10) -> dict:
    """Splitting and absorption of one dictionary. ``f``: latent activations on train and test ([N, U]),
    ``w_dec``: [U, d] decoder rows in the site's space, ``probe_w``/``probe_b``: [C, d]/[C] the dense probe in that
    space (logit = h·w + b). Returns the means over digits and a record per digit."""
    fires_tr = (f["train"] > 0).float()
    fires_te = f["test"] > 0
    eligible = fires_tr.sum(0) >= min_count
    d_hat = w_dec / w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    # the best single latent per digit: best train F1 of "fires => c", test precision and recall (the browser's
    # per-digit view ranks latents the same way)
    stats = {s: LabelStats.of(fr, y[s], n_classes) for s, fr in (("train", fires_tr > 0), ("test", fires_te))}
    bests = per_class_best(stats["train"], stats["test"], min_count, k=1)
    per_digit = []
    for c in range(n_classes):
        pos_tr, pos_te = y["train"] == c, y["test"] == c
        top = bests[c][0] if bests[c] else {"l": None, "p": 0.0, "r": 0.0}
        best, best_p, best_r = top["l"], top["p"], top["r"]
        cover = cover_to_90(fires_tr, pos_tr, eligible)
        cover_p, cover_r = _prf(fires_te[:, cover], pos_te) if cover else (None, None)
        main = main_latents(fires_tr, pos_tr, eligible)
        # absorption on the test images of c that the probe gets right
        p = probe_w[c]
        seen = pos_te & (h_test @ p + probe_b[c] > 0)
        contrib = f["test"][seen] * (w_dec @ p)  # [n, U] each latent's part of the probe projection
        aligned = (d_hat @ (p / p.norm())) >= ALIGN_MIN
        aligned[main] = False
        positive = contrib.clamp_min(0)
        total = positive.sum(1, keepdim=True)
        absorber = (contrib > 0) & aligned & (contrib >= SHARE_MIN * total)
        silent = ~fires_te[seen][:, main].any(1)
        n_seen = int(seen.sum())
        others = 1 - positive[:, main].sum(1) / total[:, 0].clamp_min(1e-12)
        per_digit.append({
            "digit": c,
            "best_latent": best, "best_latent_recall": round(best_r, 6), "best_latent_precision": round(best_p, 6),
            "latents_to_90": len(cover) if cover else None,
            "cover_recall": None if cover_r is None else round(cover_r, 6),
            "cover_precision": None if cover_p is None else round(cover_p, 6),
            "main_latents": main,
            "probe_right": n_seen,
            "main_silent_rate": round(float(silent.sum()) / max(n_seen, 1), 6),
            "absorption_rate": round(float((silent & absorber.any(1)).sum()) / max(n_seen, 1), 6),
            "absorption_fraction": round(float(others.mean()) if n_seen else 0.0, 6),
        })
    mean = lambda key: round(sum(r[key] for r in per_digit) / n_classes, 6)  # noqa: E731
    return {
        "best_latent_recall_mean": mean("best_latent_recall"),
        "latents_to_90_mean": round(sum(r["latents_to_90"] or MAX_COVER for r in per_digit) / n_classes, 4),
        "digits_reaching_90": sum(r["latents_to_90"] is not None for r in per_digit),
        "main_latents_mean": round(sum(len(r["main_latents"]) for r in per_digit) / n_classes, 4),
        "absorption_rate_mean": mean("absorption_rate"),
        "absorption_fraction_mean": mean("absorption_fraction"),
        "main_silent_rate_mean": mean("main_silent_rate"),
        "per_digit": per_digit,
    }
