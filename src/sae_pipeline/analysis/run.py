"""The analyze and baselines stages' work: every latent, its evidence and hypothesis, and the baseline families.

``analyze_sae`` returns everything the analyze stage writes: the per-latent table (``data/analysis/latents.*``),
the research script's 50-feature report, ``metrics/analysis.json`` (selection, hypothesis calibration) and the
SAE-dependent families of ``metrics/interpretability.json`` (the SAE and its rate-matched random dictionary).
``baseline_families`` computes the families that do not depend on the SAE (neurons, PCA, the dense probe) once
per base model, in the baselines stage.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import preprocess
from ..config import AnalysisConfig
from ..runtime import generator
from ..sae import SAE
from ..zoo import Site
from . import causal, examples, hypotheses, select
from .absorption import absorption_metrics
from .families import family_metrics
from .probing import probe
from .stats import LabelStats, per_class_best
from .units import SPLITS, neuron_units, pca_units, random_units, sae_units

PROBE_KEY = "dense_probe_directions"  # baselines.json's dense probes, per digit, in the site's coordinates
DENSE_RATE = 0.1  # a latent firing on more than 10% of inputs is "dense" (as metrics/summary.json's dense_frac)
N_NEAREST = 5
N_DENSITY_BINS = 20


@dataclass
class AnalysisResult:
    latents: list[dict]  # one record per latent, every latent (dead ones flagged)
    selected: list[int]  # the feature_report's latents, in order
    report: list[dict]  # feature_report.json's "features"
    metrics: dict  # metrics/analysis.json
    families: dict  # metrics/interpretability.json's SAE-dependent families
    heatmaps: torch.Tensor  # [U, 28, 28] input gradients
    mean_images: torch.Tensor  # [U, 28, 28]
    per_class: list[list[dict]]  # per digit, its best latents: {"l": id, "p": test precision, "r": test recall}


def _r(v, nd: int = 6):
    return round(float(v), nd)


def nearest_by_decoder(sae: SAE, live: torch.Tensor, k: int = N_NEAREST) -> list[list[tuple[int, float]]]:
    """Per latent, the k live latents whose decoder directions (in h-space) have the highest cosine with it."""
    w = sae.W_dec.detach()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = w @ w.T
    cos.fill_diagonal_(-2.0)
    cos[:, ~live] = -2.0
    vals, idx = cos.topk(min(k, max(int(live.sum()) - 1, 1)), dim=1)
    return [[(int(i), _r(v, 4)) for i, v in zip(idx[u], vals[u]) if v > -2] for u in range(len(w))]


def density_hists(f: torch.Tensor) -> list[dict]:
    out = []
    for u in range(f.shape[1]):
        vals = f[:, u][f[:, u] > 0]
        if len(vals):
            counts, edges = torch.histogram(vals, bins=N_DENSITY_BINS)
            out.append({"bin_edges": [_r(e, 5) for e in edges], "counts": counts.int().tolist()})
        else:
            out.append({"bin_edges": [], "counts": []})
    return out


@torch.no_grad()
def analyze_sae(sae: SAE, site: Site, card: dict, h: dict[str, torch.Tensor], y: dict[str, torch.Tensor],
                pixels: torch.Tensor, cfg: AnalysisConfig, seed: int, probe_dirs: dict | None = None
                ) -> AnalysisResult:
    """``sae`` works on the raw site activations ``h`` (the SAELens export); ``pixels``/``y["test"]`` are test.
    ``probe_dirs``: the baselines' dense probes (``PROBE_KEY``), for the splitting/absorption measures."""
    sae_u = sae_units(sae, h)
    f = sae_u.acts["test"]
    st = {s: LabelStats.of(sae_u.fires[s], y[s]) for s in SPLITS}
    dead = st["train"].n == 0
    live = ~dead

    hyp = hypotheses.derive(st["train"], cfg.max_classes, cfg.min_count)
    held = hypotheses.score(hyp, st["test"], sae_u.fires["test"], y["test"])
    calib = hypotheses.calibration(hyp, held)

    ctx = site.collect(preprocess(pixels, card["input_mean"], card["input_std"]))[1]
    sp = causal.Spliced(sae, site, f, ctx)
    dla = sp.dla()
    iv = causal.intervention(sp, f, dla, cfg.n_intervention, generator(seed, 100))
    ab = causal.ablation(sp, f, dla, y["test"], st["test"].mode)

    tops = examples.top_examples(f, cfg.top_k)
    bands = examples.band_examples(f, generator(seed, 101))
    with torch.enable_grad():
        heat = examples.input_gradients(sae, site, pixels, card, tops)
    nearest = nearest_by_decoder(sae, live)
    hists = density_hists(f)

    te = st["test"]
    lo, hi = te.purity_interval()
    top3 = te.top_classes(3)
    n_fire = te.n
    mean_act = f.sum(0) / n_fire.clamp_min(1)
    max_act = f.max(0).values
    train_rate = st["train"].rate
    latents = []
    for u in range(sae.d_sae):
        grade = hyp["grade"][u]
        text = hypotheses.sentence(hyp["classes"][u], float(hyp["share"][u]), float(hyp["lower"][u]),
                                   float(hyp["upper"][u]), int(hyp["n"][u]), grade)
        top = int(iv["top_class"][u])
        if grade != hypotheses.NONE:
            text += (f"; on test {held['precision'][u]:.0%} precision, {held['recall'][u]:.0%} recall")
        if int(n_fire[u]):
            text += f"; adding it raises the logit of {top} most ({float(iv['delta_logit'][u, top]):+.2f})"
        cum = te.counts.gather(1, top3)[u].cumsum(0).double() / max(int(n_fire[u]), 1)
        latents.append({
            "latent": u,
            "dead": bool(dead[u]),
            "dense": bool(train_rate[u] > DENSE_RATE),
            "n_train": int(st["train"].n[u]),
            "firing_rate_train": _r(train_rate[u]),
            "n_test": int(n_fire[u]),
            "firing_rate": _r(te.rate[u]),
            "mean_activation": _r(mean_act[u]),
            "max_activation": _r(max_act[u]),
            "label_hist": te.counts[u].tolist(),
            "mode_label": int(te.mode[u]),
            "purity": _r(te.purity[u]),
            "purity_lo": _r(lo[u]),
            "purity_hi": _r(hi[u]),
            "lift": _r(te.lift[u]),
            "entropy_bits": _r(te.entropy[u]),
            "top_classes": top3[u].tolist(),
            "top_classes_cum_share": [_r(v) for v in cum],
            "hypothesis_classes": hyp["classes"][u],
            "grade": grade,
            "claimed_precision": hypotheses.CLAIM.get(grade, 0.0),
            "train_share": _r(hyp["share"][u]),
            "train_share_lo": _r(hyp["lower"][u]),
            "heldout_precision": _r(held["precision"][u]) if grade != hypotheses.NONE else None,
            "heldout_recall": _r(held["recall"][u]) if grade != hypotheses.NONE else None,
            "hypothesis": text,
            "dla": [_r(v) for v in dla[u]],
            "dla_top_class": int(dla[u].argmax()),
            "intervention_value": _r(iv["value"][u]),
            "intervention_n": int(iv["n_inputs"][u]),
            "delta_logit": [_r(v) for v in iv["delta_logit"][u]],
            "delta_logprob": [_r(v) for v in iv["delta_logprob"][u]],
            "intervention_top_class": top,
            "flip_to_top_class": _r(iv["flip_to_top"][u]),
            "ablation_delta_acc": _r(ab["delta_acc"][u]),
            "ablation_delta_acc_where_active": _r(ab["delta_acc_where_active"][u]),
            "ablation_delta_mode_logit": _r(ab["delta_mode_logit"][u]),
            "nearest": [{"latent": i, "cosine": c} for i, c in nearest[u]],
            "density_hist": hists[u],
            "top_examples": [{"test_index": j, "label": int(y["test"][j]), "activation": _r(f[j, u])}
                             for j in tops[u]],
            "band_examples": [{"band": b, "test_index": j, "label": int(y["test"][j]), "activation": _r(f[j, u])}
                              for b, j in bands[u]],
        })

    order = select.rank(cfg.select, st["train"], cfg.min_count)
    selected = order[:cfg.n_features]
    report = [feature_report_entry(latents[u]) for u in selected]
    comparison = select.compare_on_val(st["train"], st["val"], sae_u.fires["val"], cfg.n_features, cfg.min_count,
                                       cfg.high_purity)
    metrics = analysis_metrics(latents, selected, cfg, calib, comparison)

    rand = random_units(h, train_rate.float(), generator(seed, 102))
    families = {
        "sae": family_metrics(sae_u.acts, sae_u.fires, y, cfg.min_count, cfg.high_purity),
        "random": family_metrics(rand.acts, rand.fires, y, cfg.min_count, cfg.high_purity),
    }
    if probe_dirs is not None:
        families["sae"]["absorption"] = absorption_metrics(
            sae_u.acts, y, h["test"], sae.W_dec.detach(), torch.tensor(probe_dirs["weight"]),
            torch.tensor(probe_dirs["bias"]), cfg.min_count)
    return AnalysisResult(latents, selected, report, metrics, families, heat, examples.mean_images(pixels, tops),
                          per_class_best(st["train"], st["test"], cfg.min_count))


def feature_report_entry(r: dict) -> dict:
    """The research script's per-feature record, extended with the interval, class set and held-out scores."""
    top = r["intervention_top_class"]
    return {
        "feature": r["latent"],
        "firing_rate": r["firing_rate"],
        "n_active": r["n_test"],
        "mean_activation": r["mean_activation"],
        "max_activation": r["max_activation"],
        "density_hist": r["density_hist"],
        "top_examples": r["top_examples"],
        "label_hist": r["label_hist"],
        "mode_label": r["mode_label"],
        "purity": r["purity"],
        "purity_ci95": [r["purity_lo"], r["purity_hi"]],
        "lift": r["lift"],
        "intervention": {
            "value_added": r["intervention_value"],
            "n_inputs": r["intervention_n"],
            "delta_logit": r["delta_logit"],
            "delta_logprob": r["delta_logprob"],
            "top_class": top,
            "pred_flip_to_top_class": r["flip_to_top_class"],
        },
        "direct_logit_attribution": r["dla"],
        "dla_top_class": r["dla_top_class"],
        # with a linear rest of the model these agree unless float error flips a near-zero sign (elsewhere the DLA
        # is first-order); kept for the research contract
        "causal_signs_agree": (r["delta_logit"][top] > 0) == (r["dla"][top] > 0),
        "ablation": {"delta_acc": r["ablation_delta_acc"],
                     "delta_acc_where_active": r["ablation_delta_acc_where_active"],
                     "delta_mode_logit": r["ablation_delta_mode_logit"]},
        "hypothesis_classes": r["hypothesis_classes"],
        "heldout_precision": r["heldout_precision"],
        "heldout_recall": r["heldout_recall"],
        "hypothesis": r["hypothesis"],
        "confidence": r["grade"],
    }


def analysis_metrics(latents: list[dict], selected: list[int], cfg: AnalysisConfig, calib: dict,
                     comparison: dict) -> dict:
    """metrics/analysis.json: the selected features on test, hypothesis grades and their held-out calibration."""
    live = [r for r in latents if not r["dead"]]
    sel = [latents[u] for u in selected]
    n = max(len(sel), 1)
    pure_sel = [r for r in sel if r["purity"] >= cfg.high_purity and r["n_test"] >= cfg.min_count]
    grades = {g: sum(r["grade"] == g for r in live) for g, _ in hypotheses.GRADES}
    grades[hypotheses.NONE] = sum(r["grade"] == hypotheses.NONE for r in live)
    return {
        "select": cfg.select,
        "n_features": len(sel),
        "n_latents": len(latents),
        "n_live": len(live),
        "n_dense": sum(r["dense"] for r in live),
        "selected_purity_mean": _r(sum(r["purity"] for r in sel) / n),
        "selected_firing_rate_mean": _r(sum(r["firing_rate"] for r in sel) / n),
        "selected_label_coverage": len({r["mode_label"] for r in pure_sel}),
        "selected_share_high_grade": _r(sum(r["grade"] == "high" for r in sel) / n),
        "hypotheses": {"n_by_grade": grades, "multi_class": sum(len(r["hypothesis_classes"]) > 1 for r in live),
                       "calibration_test": calib},
        "selection_on_val": comparison,
    }


def baseline_families(h: dict[str, torch.Tensor], y: dict[str, torch.Tensor], cfg: AnalysisConfig) -> dict:
    """The SAE-independent baselines: neurons (h > 0 and above their p90), PCA, and the dense probe on all of h."""
    pos, p90 = neuron_units(h)
    pca = pca_units(h)
    dense = probe(h["train"], y["train"], h["test"], y["test"], None)
    return {
        "neurons": family_metrics(pos.acts, pos.fires, y, cfg.min_count, cfg.high_purity),
        # same activations as "neurons", so the same probes: not refitted
        "neurons_p90": family_metrics(p90.acts, p90.fires, y, cfg.min_count, cfg.high_purity, probe=False),
        "pca": family_metrics(pca.acts, pca.fires, y, cfg.min_count, cfg.high_purity),
        "dense_probe": {"balanced_accuracy": dense["balanced_accuracy"], "f1": dense["f1"]},
        # not a metric: what analyze's absorption measure reads (``PROBE_KEY`` is left out of the metrics)
        PROBE_KEY: {"weight": dense["weight"].tolist(), "bias": dense["bias"].tolist()},
    }
