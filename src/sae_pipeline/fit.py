"""The train_sae stage's work: an SAE from its starting point to its test summary, in one process.

Starting point (with ``sae.recipe=warmstart``, the TopK warm start), λ calibrated on the final run's own first
epochs, the final run, θ tuned on val, the spliced-model summary on test. One stage, not four: every one of
these steps reruns whenever any other does (their params overlap, each reads the last one's output), and each
stage process pays torch's import before it does anything (docs/speed.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .activations import Acts
from .config import SAEConfig
from .evaluate import summary
from .sae import SAE
from .sae_train import calibrate_and_train, evaluate_split, splice_for, starting_point, tune_threshold
from .zoo import Site


@dataclass
class SAEFit:
    sae: SAE  # tuned, on the CPU
    calibration: dict  # metrics/calibration.json: λ, whether a probe landed, the probes
    history: list[dict]  # the training curve (warm start included)
    train_metrics: dict  # metrics/train_sae.json: before θ tuning, val
    tuning: dict  # metrics/tune_theta.json
    summary: dict  # metrics/summary.json: the spliced model on test


def fit_sae(cfg: SAEConfig, acts: Acts, site: Site, x: dict[str, torch.Tensor], y_test: torch.Tensor, seed: int,
            device: torch.device = torch.device("cpu")) -> SAEFit:
    """Train on ``device`` (the activations moved there), then tune and measure on the CPU. ``x`` holds the
    preprocessed train and test images, from which the site's context (if it has one) is computed."""
    on = acts.to(device)
    needs_ctx = site.readout() is None and site.acts(x["test"][:1])[1] is not None
    ctx = {s: site.collect(x[s])[1] for s in ("train", "test")} if needs_ctx else {"train": None, "test": None}
    readout = splice_for(site, acts.shift, acts.scale, ctx["train"], z_train=acts.train).to(device)
    history: list[dict] = []
    start = starting_point(cfg, on.train, seed, history)
    sae, history, calibration = calibrate_and_train(cfg, start, on.train, on.val, seed, readout, history)
    val = evaluate_split(sae, on.val)
    train_metrics = {"lambda": calibration["lambda"], "steps": history[-1]["step"] if history else 0,
                     "final_loss": history[-1]["loss"] if history else None,
                     "l0_val": round(val["l0"], 4), "fvu_val": round(val["fvu"], 5)}
    sae = sae.cpu()
    site.model.cpu()
    tuning = tune_threshold(sae, acts.val, cfg.target_actives)
    result = summary(sae, acts, site, ctx["test"], y_test, calibration["lambda"], cfg.tau, cfg.arch, cfg.target_actives,
                     tuning["l0_val_after"])
    if cfg.matryoshka:  # the export says so too (its metadata carries the summary): a user can cut the prefixes
        result.update({"matryoshka": ",".join(map(str, cfg.matryoshka)), "matryoshka_weight": cfg.matryoshka_weight})
    calibration = {"arch": cfg.arch, "target_actives": cfg.target_actives, **calibration}
    return SAEFit(sae, calibration, history, train_metrics, tuning, result)
