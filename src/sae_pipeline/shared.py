"""A shared dictionary across sites: one sparse code for every site, with an encoder and a decoder per site.

Two ways to read the code from the sites (``shared.mode``):

- ``universal`` (a universal SAE, Thasarathan et al. 2025): each step encodes from one site, in turn, and decodes
  every site from that code; so any site alone gives the code, and the cross-reconstruction "encode from site i,
  decode site j" is what it was trained for;
- ``crosscoder`` (Lindsey et al. 2024): the code reads every site at once (the sum of the sites' encoder
  pre-activations); encoding from one site alone is then out of its training distribution.

Both are TopK (Gao et al. 2024: exactly ``k`` latents a row), so there is no L1 penalty and none of the false
site-exclusive latents it makes in crosscoders (Minder et al. 2025, arXiv 2504.02922). Each site's activations are
standardised (``activations.*``), and the loss is the sum over sites of the mean squared error per unit, so a wide
site does not outweigh a narrow one.

What is measured (``measure``), on the shared test images: the cross-reconstruction matrix (FVU of site j decoded
from site i's code, and the KL of model j spliced with that reconstruction), each latent's firing entropy across the
sites it is encoded from, its co-firing IoU between two sites (does it fire on the same images whichever site
encodes them), and the shares of shared and site-exclusive latents by relative decoder norm (Lindsey et al. 2024):
a site "has" a latent when the latent's decoder row there, per unit of the site's width, is at least
``HAS_NORM`` of its largest over the sites (the decoder is what a latent writes into each site; with TopK nothing
pushes an unused row to zero but its uselessness). Firing alone cannot say this: TopK makes every site fire k
latents on every image, used or not. The null is the same dictionary trained on mismatched images: each site's
training rows in their own random order, so that no feature can be shared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import fvu, kl_logits
from .optim import Adam, one_cycle_lr

MODES = ("universal", "crosscoder")
HAS_NORM = 0.3  # a site has a latent when its decoder row norm per unit is >= this share of the largest
COFIRING_IOU = 0.5  # a latent "co-fires" when its mean IoU over site pairs is at least this


class SharedDictionary(nn.Module):
    """``W_enc[i]: [d_i, K]`` per site; one decoder ``W_dec: [K, sum d_i]`` and ``b_dec: [sum d_i]`` whose column
    block ``slices[i]`` is site i's (one decode writes every site); one ``b_enc: [K]``."""

    def __init__(self, widths: dict[str, int], latents: int, k: int, gen: torch.Generator):
        super().__init__()
        self.names, self.k = list(widths), k
        ends = torch.tensor(list(widths.values())).cumsum(0).tolist()
        self.slices = [slice(e - d, e) for e, d in zip(ends, widths.values())]
        # decoder rows of unit norm over all sites together, the encoders their transposes (Gao et al. 2024, A.1)
        w = torch.randn(latents, ends[-1], generator=gen)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.ParameterList([nn.Parameter(w[:, sl].T.clone()) for sl in self.slices])
        self.b_dec = nn.Parameter(torch.zeros(ends[-1]))
        self.b_enc = nn.Parameter(torch.zeros(latents))

    @property
    def latents(self) -> int:
        return len(self.b_enc)

    def encode_topk(self, xs: dict[str, torch.Tensor]) -> torch.return_types.topk:
        """The code from the sites in ``xs`` (one site, or several summed: the crosscoder's encoder), as the
        values and indices of its k largest (ReLU'd) pre-activations."""
        pre = self.b_enc
        for s, x in xs.items():
            i = self.names.index(s)
            pre = pre + (x - self.b_dec[self.slices[i]]) @ self.W_enc[i]
        return pre.relu().topk(self.k, dim=-1)

    def encode(self, xs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``encode_topk`` as a dense [N, K] code."""
        top = self.encode_topk(xs)
        return torch.zeros(len(top.values), self.latents, dtype=top.values.dtype).scatter_(-1, top.indices,
                                                                                           top.values)

    def decode(self, z: torch.Tensor, site: str) -> torch.Tensor:
        sl = self.slices[self.names.index(site)]
        return z @ self.W_dec[:, sl] + self.b_dec[sl]

    def decode_topk(self, top: torch.return_types.topk) -> torch.Tensor:
        """Every site at once, [N, sum d_i], from the k active latents alone: a weighted sum of k decoder rows per
        input (``embedding_bag``), k/K of the dense product's work, forward and backward (training's decode)."""
        return F.embedding_bag(top.indices, self.W_dec, per_sample_weights=top.values, mode="sum") + self.b_dec

    def relative_norms(self) -> torch.Tensor:
        """[S, K]: each latent's decoder row norm in each site per square root of the site's width (its share of
        the site's per-unit loss scales so), over its largest across the sites."""
        n = torch.stack([self.W_dec.detach()[:, sl].norm(dim=1) / math.sqrt(sl.stop - sl.start)
                         for sl in self.slices])
        return n / n.max(0).values.clamp_min(1e-300)


def _sources(mode: str, names: list[str], step: int) -> list[str]:
    return [names[step % len(names)]] if mode == "universal" else names


def train_shared(train: dict[str, torch.Tensor], latents: int, k: int, mode: str, epochs: int, batch_size: int,
                 lr: float, gen: torch.Generator, mismatched: bool = False) -> tuple[SharedDictionary, list[dict]]:
    """Train on the sites' standardised training activations (row n of every site from image n). With
    ``mismatched``, every site's rows but the first are put in their own random order first (the null)."""
    names = list(train)
    if mismatched:
        train = {s: (x if i == 0 else x[torch.randperm(len(x), generator=gen)]) for i, (s, x) in enumerate(train.items())}
    model = SharedDictionary({s: x.shape[1] for s, x in train.items()}, latents, k, gen)
    every = torch.cat(list(train.values()), 1)  # [N, sum d_i], the decoder's target for every site at once
    widths = torch.tensor([x.shape[1] for x in train.values()], dtype=every.dtype)
    opt = Adam(model.parameters())
    n = len(every)
    total, step, history = epochs * -(-n // batch_size), 0, []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            top = model.encode_topk({s: train[s][idx] for s in _sources(mode, names, step)})
            err = (model.decode_topk(top) - every[idx]).pow(2).sum(0)
            # each site's mean squared error per unit, summed over sites: a wide site does not outweigh a narrow one
            mse = torch.stack([err[sl].sum() for sl in model.slices]) / (widths * len(idx))
            loss = mse.sum()
            opt.zero_grad()
            loss.backward()
            opt.step(lr * one_cycle_lr(step, total))
            step += 1
            if step % 50 == 0 or step == total:
                history.append({"step": step, "loss": round(loss.item(), 6),
                                **{f"mse_{s}": round(float(v), 6) for s, v in zip(names, mse.detach())}})
    return model.eval().requires_grad_(False), history


@dataclass
class SiteEval:
    """What ``measure`` needs of one site on the test images: standardised activations, and the spliced model's
    logits as a function of them (``None``: FVU only, no KL)."""

    z: torch.Tensor
    logits: object = None  # callable: standardised activations [N, d] -> logits [N, 10]


def firing_stats(fires: dict[str, torch.Tensor]) -> dict:
    """Per-latent statistics of where a shared code fires: ``fires[s]`` is [N, K] bool, the latents firing on each
    test image when the code is read from site s. Entropy of the latent's firing rates across sites (normalised to
    [0, 1] by log of the site count) and the IoU of its firing sets for every site pair, with their mean."""
    names = list(fires)
    rates = torch.stack([fires[s].double().mean(0) for s in names])  # [S, K]
    live = rates.sum(0) > 0
    p = rates / rates.sum(0).clamp_min(1e-300)
    ent = -(p * p.clamp_min(1e-300).log()).sum(0) / math.log(len(names))
    ious = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            inter = (fires[names[a]] & fires[names[b]]).double().sum(0)
            union = (fires[names[a]] | fires[names[b]]).double().sum(0)
            ious.append(torch.where(union > 0, inter / union.clamp_min(1), torch.nan))
    iou = torch.stack(ious) if ious else torch.full((1, rates.shape[1]), torch.nan)
    return {"rates": rates, "live": live, "entropy": ent, "iou": iou,
            "iou_mean": torch.nanmean(iou, 0)}


def measure(model: SharedDictionary, sites: dict[str, SiteEval], mode: str) -> tuple[dict, list[dict]]:
    """Cross-reconstruction, firing entropy, co-firing and shared/exclusive shares on the test images; returns
    the metrics and one row per latent (the pandas-ready table)."""
    names = list(sites)
    with torch.no_grad():
        codes = {s: model.encode({s: sites[s].z}) for s in names}
        base = {s: sites[s].logits(sites[s].z) for s in names if sites[s].logits is not None}
        cross = {}
        for i in names:
            cross[i] = {}
            for j in names:
                rec = model.decode(codes[i], j)
                row = {"fvu": round(fvu(sites[j].z, rec), 6)}
                if j in base:
                    row["kl"] = round(kl_logits(base[j], sites[j].logits(rec)), 6)
                cross[i][j] = row
        if mode == "crosscoder":  # what it was trained for: the code from every site at once
            every = model.encode({s: sites[s].z for s in names})
            cross["all sites"] = {}
            for j in names:
                rec = model.decode(every, j)
                cross["all sites"][j] = {"fvu": round(fvu(sites[j].z, rec), 6)}
                if j in base:
                    cross["all sites"][j]["kl"] = round(kl_logits(base[j], sites[j].logits(rec)), 6)
    st = firing_stats({s: codes[s] > 0 for s in names})
    has = model.relative_norms() >= HAS_NORM  # [S, K]
    live, n_has = st["live"], has.sum(0)
    n_live = int(live.sum())
    share = lambda m: round(float((m & live).sum()) / max(n_live, 1), 6)  # noqa: E731
    off = [cross[i][j]["fvu"] for i in names for j in names if i != j]
    iou_pairs, k = {}, 0
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            iou_pairs[f"{names[a]}~{names[b]}"] = round(float(torch.nanmean(st["iou"][k][live])), 6)
            k += 1
    metrics = {
        "mode": mode, "latents": model.latents, "k": model.k, "n_live": n_live,
        "cross_reconstruction": cross,
        "cross_fvu_offdiag_mean": round(sum(off) / len(off), 6) if off else None,
        "firing_entropy_mean": round(float(st["entropy"][live].mean()), 6),
        "cofiring_iou_mean": round(float(torch.nanmean(st["iou_mean"][live])), 6),
        "cofiring_iou": iou_pairs,
        "share_shared_by_every_site": share(n_has == len(names)),
        "share_exclusive": share(n_has == 1),
        "exclusive_by_site": {s: share((n_has == 1) & has[i]) for i, s in enumerate(names)},
        "share_cofiring": share(st["iou_mean"] >= COFIRING_IOU),
    }
    rows = []
    for u in range(model.latents):
        rows.append({"latent": u, **{f"rate_{s}": round(float(st["rates"][i, u]), 6) for i, s in enumerate(names)},
                     "entropy": round(float(st["entropy"][u]), 6) if live[u] else None,
                     "iou_mean": None if st["iou_mean"][u].isnan() else round(float(st["iou_mean"][u]), 6),
                     "n_sites": int(n_has[u]), "sites": " ".join(s for i, s in enumerate(names) if has[i, u]),
                     "live": bool(live[u])})
    return metrics, rows


def entropy_hist(rows: list[dict], bins: int = 10) -> list[tuple[float, float]]:
    """(bin centre, share of live latents) of the latents' firing entropy across sites, for the Vega plot."""
    ent = torch.tensor([r["entropy"] for r in rows if r["live"] and r["entropy"] is not None], dtype=torch.float64)
    counts = torch.histc(ent.clamp(0, 1), bins=bins, min=0.0, max=1.0) if len(ent) else torch.zeros(bins)
    return [(round((b + 0.5) / bins, 4), round(float(c) / max(len(ent), 1), 6)) for b, c in enumerate(counts)]
