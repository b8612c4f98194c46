"""Per-feature evidence for a tuned SAE on the test split, and hypotheses built only from that evidence.

Everything goes through ``SAE.encode``/``SAE.decode`` and the base model's own layers, so the numbers here are the
numbers of the spliced model that ``metrics/summary.json`` measures.
"""
from __future__ import annotations

import numpy as np
import torch

from .activations import Acts
from .base import MLP, preprocess
from .config import AnalysisConfig
from .runtime import generator
from .sae import SAE

N_DENSITY_BINS = 20


def select_features(f: torch.Tensor, n: int) -> list[int]:
    """The n most frequently firing features, dead ones skipped; ties broken by index."""
    rate = (f > 0).float().mean(0)
    order = sorted(range(len(rate)), key=lambda i: (-rate[i].item(), i))
    return [i for i in order if rate[i] > 0][:n]


def direct_logit_attribution(sae: SAE, acts: Acts, model: MLP) -> torch.Tensor:
    """[d_sae, 10]: the logit change per unit of each feature, W_dec mapped to hidden space, then through fc2."""
    return (sae.W_dec * acts.scale) @ model.fc2.weight.T


def input_gradients(sae: SAE, acts: Acts, model: MLP, pixels: torch.Tensor, feats: list[int],
                    tops: list[list[int]], card: dict) -> np.ndarray:
    """[n_feat, 28, 28]: d pre_i / d pixel, through fc1, the nonlinearity, the normaliser and the encoder,
    averaged over each feature's top examples. Pixels are in [0, 255] units of the raw image."""
    rows = torch.tensor([j for t in tops for j in t])
    owner = torch.tensor([i for i, t in zip(feats, tops) for _ in t])
    x = preprocess(pixels[rows], card["input_mean"], card["input_std"]).requires_grad_(True)
    pre = sae.pre_acts(acts.to_z(model.hidden(x)))
    pre.gather(1, owner[:, None]).sum().backward()
    grad = x.grad / (255.0 * card["input_std"])  # chain rule through x = (pixels/255 - mean)/std
    out, start = [], 0
    for t in tops:
        out.append(grad[start:start + len(t)].mean(0).reshape(28, 28).numpy())
        start += len(t)
    return np.stack(out)


def intervene(sae: SAE, acts: Acts, model: MLP, z: torch.Tensor, f: torch.Tensor, i: int, value: float,
              n: int, gen: torch.Generator) -> dict:
    """Add ``value`` * W_dec[i] to the reconstruction of a fixed sample of inputs where feature i is off and
    measure the mean Δlogit per class, through the real spliced forward pass."""
    off = torch.nonzero(f[:, i] == 0).flatten()
    sample = off[torch.randperm(len(off), generator=gen)[:n]]
    z_hat = sae.decode(f[sample])
    before = model.fc2(acts.to_hidden(z_hat))
    after = model.fc2(acts.to_hidden(z_hat + value * sae.W_dec[i]))
    dlogit = (after - before).mean(0)
    dlogp = (after.log_softmax(-1) - before.log_softmax(-1)).mean(0)
    top = int(dlogit.argmax())
    flipped = ((after.argmax(-1) == top) & (before.argmax(-1) != top)).float().mean()
    return {"n_inputs": len(sample), "delta_logit": dlogit, "delta_logprob": dlogp, "top_class": top,
            "pred_flip_to_top_class": float(flipped)}


def ablate(sae: SAE, acts: Acts, model: MLP, f: torch.Tensor, y: torch.Tensor, i: int, mode: int) -> dict:
    """Zero feature i where it fires; Δaccuracy of the spliced model (over all test inputs and over the inputs
    where it fires) and the mean Δlogit of the mode class where it fires."""
    on = torch.nonzero(f[:, i] > 0).flatten()
    z_hat = sae.decode(f[on])
    before = model.fc2(acts.to_hidden(z_hat))
    after = model.fc2(acts.to_hidden(z_hat - f[on, i:i + 1] * sae.W_dec[i]))
    right_before = (before.argmax(-1) == y[on]).float().sum()
    right_after = (after.argmax(-1) == y[on]).float().sum()
    return {"delta_acc": float((right_after - right_before) / len(y)),
            "delta_acc_where_active": float((right_after - right_before) / max(len(on), 1)),
            "delta_mode_logit": float((after[:, mode] - before[:, mode]).mean())}


def hypothesis(rate: float, mode: int, purity: float, lift: float, top_class: int, dlogit_top: float,
               agree: bool, high_purity: float) -> tuple[str, str]:
    """A sentence and a grade from the evidence alone. high: a pure feature whose causal effect boosts its own
    label, and both causal measurements agree; medium: mostly one label or a label-consistent effect; low: else."""
    head = f"fires on {rate:.1%} of test inputs, {purity:.0%} of them {mode}s (lift x{lift:.1f})"
    effect = f"adding it raises the logit of {top_class} by {dlogit_top:+.2f}"
    if purity >= high_purity and top_class == mode and agree and dlogit_top > 0:
        return f"{head}; {effect} -> likely a '{mode}' detector", "high"
    if purity >= 0.5 and (top_class == mode or purity >= high_purity):
        rest = "its causal effect points to the same class" if top_class == mode else \
            f"but its causal effect points to {top_class}, not {mode}"
        return f"{head}; {effect}; {rest} -> possibly a '{mode}'-related feature", "medium"
    if purity >= 0.5:
        return f"{head}; {effect}; label and causal effect disagree -> no single-label hypothesis", "low"
    return f"{head}; {effect} -> no single-label hypothesis: it spreads over several labels", "low"


@torch.no_grad()
def _encode_all(sae: SAE, z: torch.Tensor) -> torch.Tensor:
    return torch.cat([sae.encode(z[i:i + 8192]) for i in range(0, len(z), 8192)])


def analyze(sae: SAE, acts: Acts, model: MLP, card: dict, pixels: torch.Tensor, y: torch.Tensor,
            cfg: AnalysisConfig, seed: int) -> tuple[list[dict], dict]:
    """(one evidence dict per selected feature, extra arrays for the galleries: heatmaps, mean images)."""
    f = _encode_all(sae, acts.test)
    feats = select_features(f, cfg.n_features)
    base_rate = torch.bincount(y, minlength=10).float() / len(y)
    with torch.no_grad():
        dla = direct_logit_attribution(sae, acts, model)
    reports, tops = [], []
    for i in feats:
        col = f[:, i]
        active = col > 0
        vals = col[active]
        k = min(cfg.top_k, int(active.sum()))
        top_idx = col.topk(k).indices
        tops.append(top_idx.tolist())
        hist = torch.bincount(y[active], minlength=10)
        mode = int(hist.argmax())
        purity = float(hist[mode] / hist.sum())
        lift = purity / float(base_rate[mode])
        with torch.no_grad():
            iv = intervene(sae, acts, model, acts.test, f, i, float(vals.mean()), cfg.n_intervention,
                           generator(seed, 100 + i))
            ab = ablate(sae, acts, model, f, y, i, mode)
        top = iv["top_class"]
        agree = bool(torch.sign(iv["delta_logit"][top]) == torch.sign(dla[i, top]))
        text, grade = hypothesis(float(active.float().mean()), mode, purity, lift, top,
                                 float(iv["delta_logit"][top]), agree, cfg.high_purity)
        counts, edges = torch.histogram(vals.cpu(), bins=N_DENSITY_BINS)
        reports.append({
            "feature": i,
            "firing_rate": round(float(active.float().mean()), 6),
            "n_active": int(active.sum()),
            "mean_activation": round(float(vals.mean()), 6),
            "max_activation": round(float(vals.max()), 6),
            "density_hist": {"bin_edges": [round(e, 5) for e in edges.tolist()], "counts": counts.int().tolist()},
            "top_examples": [{"test_index": int(j), "label": int(y[j]), "activation": round(float(col[j]), 6)}
                             for j in top_idx],
            "label_hist": hist.tolist(),
            "mode_label": mode,
            "purity": round(purity, 6),
            "lift": round(lift, 6),
            "intervention": {
                "value_added": round(float(vals.mean()), 6),
                "n_inputs": iv["n_inputs"],
                "delta_logit": [round(v, 6) for v in iv["delta_logit"].tolist()],
                "delta_logprob": [round(v, 6) for v in iv["delta_logprob"].tolist()],
                "top_class": top,
                "pred_flip_to_top_class": round(iv["pred_flip_to_top_class"], 6),
            },
            "direct_logit_attribution": [round(v, 6) for v in dla[i].tolist()],
            "dla_top_class": int(dla[i].argmax()),
            "causal_signs_agree": agree,
            "ablation": {k2: round(v, 6) for k2, v in ab.items()},
            "hypothesis": text,
            "confidence": grade,
        })
    heat = input_gradients(sae, acts, model, pixels, feats, tops, card)
    mean_img = np.stack([pixels[t].float().mean(0).numpy() for t in tops])
    return reports, {"heatmaps": heat, "mean_images": mean_img, "tops": tops}


def aggregate(reports: list[dict], cfg: AnalysisConfig) -> dict:
    """metrics/analysis.json: how much of the evidence supports clean, label-level hypotheses."""
    n = max(len(reports), 1)
    covered = {r["mode_label"] for r in reports if r["purity"] >= cfg.high_purity}
    return {
        "n_features": len(reports),
        "mean_purity": round(sum(r["purity"] for r in reports) / n, 6),
        "share_high_confidence": round(sum(r["confidence"] == "high" for r in reports) / n, 6),
        "share_medium_confidence": round(sum(r["confidence"] == "medium" for r in reports) / n, 6),
        "share_causal_agree": round(sum(r["causal_signs_agree"] for r in reports) / n, 6),
        "share_top_class_is_mode": round(sum(r["intervention"]["top_class"] == r["mode_label"]
                                             for r in reports) / n, 6),
        "label_coverage": len(covered),
        "labels_covered": sorted(covered),
    }
