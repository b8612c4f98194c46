"""Seed-to-seed comparison of SAE recipes on the pipeline's own activations, without DVC.

    python bench/seeds.py --seeds 0 1 2 --set arch=topk --set kl_coef=0 ...

Runs the same library calls as the stages (starting_point -> calibrate -> train -> tune_threshold) for each seed
on data/activations/acts.npz and reports val and test Δacc (spliced into the base model), FVU, L0 and dead
fraction, plus two less noisy measures of the splice: the number of changed predictions (flips) and
KL(base || spliced) of the logits. Δacc differences under ~0.1 pp are within seed noise (10 test images), so
recipes are compared on means over seeds, and chosen on **val**, not test.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from sae_pipeline import base  # noqa: E402
from sae_pipeline.activations import load_acts  # noqa: E402
from sae_pipeline.config import SAEConfig, load_section, read_params  # noqa: E402
from sae_pipeline.evaluate import firing_rate, splice  # noqa: E402
from sae_pipeline.fit import fit_sae  # noqa: E402
from sae_pipeline.runtime import setup_torch  # noqa: E402


def spliced(sae, acts, model, z, y):
    """evaluate.splice on one split, as the rows of this report (Δacc in pp; flips = changed predictions)."""
    m = splice(sae, acts, model, z, y)
    return {"dacc_pp": round(100 * (m["base_acc"] - m["recon_acc"]), 3), "flips": round(m["flip_frac"] * len(y)),
            "breaks": m["breaks"], "fixes": m["fixes"], "kl": round(m["kl"], 5), "fvu": round(m["fvu"], 5),
            "l0": round(m["l0"], 3)}


def run(cfg: SAEConfig, seed: int, acts, model, y_val, y_test) -> dict:
    t0 = time.perf_counter()
    res = fit_sae(cfg, acts, model, y_test, seed)  # what the train_sae stage runs
    sae, lam = res.sae, res.calibration["lambda"]
    rate = firing_rate(sae, acts.train)
    return {"seed": seed, "lambda": round(lam, 5), "val": spliced(sae, acts, model, acts.val, y_val),
            "test": spliced(sae, acts, model, acts.test, y_test),
            "dead_frac": round((rate == 0).float().mean().item(), 4),
            "dense_frac": round((rate > 0.1).float().mean().item(), 4),
            "seconds": round(time.perf_counter() - t0, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], help="sae.KEY=VALUE over params.yaml")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    params = read_params("params.yaml")
    for kv in args.set:
        k, v = kv.split("=", 1)
        params["sae"][k] = yaml.safe_load(v)
    cfg = load_section(params, "sae")
    setup_torch("cpu")
    acts = load_acts(np.load("data/activations/acts.npz"), load_section(params, "activations"))
    model = base.load_model(torch.load("data/models/base.pt", weights_only=True), base.load_card("data/models/base.json"))
    data = np.load("data/prepared/mnist.npz")
    y_val, y_test = torch.from_numpy(data["y_val"]), torch.from_numpy(data["y_test"])
    rows = []
    for seed in args.seeds:
        rows.append(run(cfg, seed, acts, model, y_val, y_test))
        print(json.dumps(rows[-1]), flush=True)
    mean = lambda split, key: round(statistics.mean(r[split][key] for r in rows), 4)  # noqa: E731
    summary = {"set": args.set, "seeds": args.seeds, "rows": rows,
               "mean": {s: {k: mean(s, k) for k in ("dacc_pp", "flips", "breaks", "fixes", "kl", "fvu", "l0")} for s in ("val", "test")},
               "mean_dead_frac": round(statistics.mean(r["dead_frac"] for r in rows), 4),
               "mean_dense_frac": round(statistics.mean(r["dense_frac"] for r in rows), 4)}
    print("MEAN", args.set, json.dumps(summary["mean"]), "dead", summary["mean_dead_frac"], "dense",
          summary["mean_dense_frac"])
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
