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

import torch
import yaml

sys.path.insert(0, os.path.dirname(__file__))
import site_inputs  # noqa: E402
from sae_pipeline.config import read_params  # noqa: E402
from sae_pipeline.evaluate import firing_rate, splice  # noqa: E402
from sae_pipeline.fit import fit_sae  # noqa: E402
from sae_pipeline.runtime import setup_torch  # noqa: E402


def spliced(sae, inp, split, ctx, y):
    """evaluate.splice on one split, as the rows of this report (Δacc in pp; flips = changed predictions)."""
    m = splice(sae, inp.acts, inp.site, getattr(inp.acts, split), ctx, y)
    return {"dacc_pp": round(100 * (m["base_acc"] - m["recon_acc"]), 3), "flips": round(m["flip_frac"] * len(y)),
            "breaks": m["breaks"], "fixes": m["fixes"], "kl": round(m["kl"], 5), "fvu": round(m["fvu"], 5),
            "l0": round(m["l0"], 3)}


def run(inp, seed: int) -> dict:
    t0 = time.perf_counter()
    y = {s: torch.from_numpy(inp.data[f"y_{s}"]) for s in ("val", "test")}
    res = fit_sae(inp.sae_cfg, inp.acts, inp.site, inp.x, y["test"], seed)  # what the train_sae stage runs
    sae, lam = res.sae, res.calibration["lambda"]
    rate = firing_rate(sae, inp.acts.train)
    ctx = {s: inp.site.collect(inp.x[s])[1] for s in ("val", "test")}
    return {"seed": seed, "lambda": round(lam, 5), "val": spliced(sae, inp, "val", ctx["val"], y["val"]),
            "test": spliced(sae, inp, "test", ctx["test"], y["test"]),
            "dead_frac": round((rate == 0).float().mean().item(), 4),
            "dense_frac": round((rate > 0.1).float().mean().item(), 4),
            "seconds": round(time.perf_counter() - t0, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--site", default="mlp-hidden")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[],
                   help="sae.KEY=VALUE over params.yaml, at this site too where the site overrides KEY")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    params = read_params("params.yaml")
    for kv in args.set:
        k, v = kv.split("=", 1)
        params["sae"][k] = yaml.safe_load(v)
        # a site's own `sae:` (params.yaml, e.g. the ViT's tau) would otherwise win over the value asked for
        params["sites"][args.site].get("sae", {}).pop(k, None)
    setup_torch("cpu")
    inp = site_inputs.load(args.site, params)
    rows = []
    for seed in args.seeds:
        rows.append(run(inp, seed))
        print(json.dumps(rows[-1]), flush=True)
    mean = lambda split, key: round(statistics.mean(r[split][key] for r in rows), 4)  # noqa: E731
    summary = {"site": args.site, "set": args.set, "seeds": args.seeds, "rows": rows,
               "mean": {s: {k: mean(s, k) for k in ("dacc_pp", "flips", "breaks", "fixes", "kl", "fvu", "l0")} for s in ("val", "test")},
               "mean_dead_frac": round(statistics.mean(r["dead_frac"] for r in rows), 4),
               "mean_dense_frac": round(statistics.mean(r["dense_frac"] for r in rows), 4)}
    print("MEAN", args.site, args.set, json.dumps(summary["mean"]), "dead", summary["mean_dead_frac"], "dense",
          summary["mean_dense_frac"])
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
