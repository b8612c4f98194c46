"""Plain JumpReLU against Matryoshka options at one site, over seeds: fidelity and whole-detector measures side by
side, chosen on val, reported on test (the "whole detectors" table of docs/whole_detectors.md).

    python bench/whole_detectors.py --site mlp-hidden --seeds 0 1 2 --prefixes none 16,64,256 16,64,256/0.25 --out F

Each option is ``none`` (the plain SAE) or prefix sizes, optionally ``/w`` for ``sae.matryoshka_weight`` (each proper
prefix's loss weight against the whole dictionary's; 1 when left out); ``--arch topk`` runs them as TopK SAEs. Each
run is the train_sae stage's own ``fit_sae`` on the site's activations (params.yaml's sae section, with
``sae.matryoshka`` and its weight set), then on val and test: the spliced FVU/KL/Δacc, dead and dense shares, sparse
probing at k = 1/2/5/10 (``family_metrics``, the analyze stage's code) and splitting/absorption
(``absorption_metrics``, with the dense probe the baselines stage fits); neurons and PCA probed the same way for
reference.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import site_inputs  # noqa: E402
from sae_pipeline.analysis.absorption import absorption_metrics  # noqa: E402
from sae_pipeline.analysis.families import family_metrics  # noqa: E402
from sae_pipeline.analysis.probing import probe  # noqa: E402
from sae_pipeline.analysis.units import encode_chunks, neuron_units, pca_units  # noqa: E402
from sae_pipeline.config import ARCHS, read_params  # noqa: E402
from sae_pipeline.evaluate import firing_rate, splice  # noqa: E402
from sae_pipeline.export import folded_weights  # noqa: E402
from sae_pipeline.fit import fit_sae  # noqa: E402
from sae_pipeline.runtime import setup_torch  # noqa: E402
from sae_pipeline.sae import SAE  # noqa: E402

KS = ("1", "2", "5", "10")
ABS = ("best_latent_recall_mean", "latents_to_90_mean", "absorption_rate_mean", "absorption_fraction_mean")


def measures(units_acts, fires, y, split, dirs, w_dec, h, min_count, high):
    """Probes (and, for an SAE, splitting/absorption) with ``split`` as the held-out split."""
    acts = {"train": units_acts["train"], "test": units_acts[split]}
    fam = family_metrics(acts, {"train": fires["train"], "test": fires[split]}, {"train": y["train"], "test": y[split]},
                         min_count, high)
    out = {f"probe{k}": fam["probe"][k]["balanced_accuracy"] for k in KS}
    if w_dec is not None:
        ab = absorption_metrics(acts, {"train": y["train"], "test": y[split]}, h[split], w_dec, *dirs, min_count)
        out.update({k: ab[k] for k in ABS})
    return out


def sae_on_raw(sae, shift, scale) -> SAE:
    """The SAE as exported (the normaliser folded in): what the analyze stage measures. A TopK SAE stays TopK
    (its exported weights carry no threshold)."""
    raw = SAE(sae.d_in, sae.d_sae, "topk" if sae.activation == "topk" else "jumprelu", k=sae.k)
    raw.load_state_dict({**raw.state_dict(), **folded_weights(sae, shift, scale)})
    return raw.eval()


def parse_option(opt: str) -> tuple[list[int], float]:
    """``none`` -> ([], 1.0); ``16,64,256/0.25`` -> ([16, 64, 256], 0.25)."""
    sizes, _, weight = opt.partition("/")
    return ([] if sizes == "none" else [int(v) for v in sizes.split(",")]), float(weight or 1.0)


def option(opt: str) -> str:
    """argparse's check of one --prefixes option: a bad one is a one-line usage error, before anything loads."""
    try:
        parse_option(opt)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{opt!r}: expected none, or prefix sizes like 16,64,256 with an optional "
                                         "/weight (16,64,256/0.25)") from None
    return opt


def run(inp, params, opt, seed, h, y, dirs, arch: str = ""):
    """One SAE (``arch`` over params.yaml's when given) trained and measured on val and test."""
    t0 = time.perf_counter()
    prefixes, weight = parse_option(opt)
    cfg = inp.sae_cfg.__class__(**{**inp.sae_cfg.__dict__, "matryoshka": prefixes, "matryoshka_weight": weight,
                                   **({"arch": arch} if arch else {})})
    res = fit_sae(cfg, inp.acts, inp.site, inp.x, y["test"], seed)
    raw = sae_on_raw(res.sae, inp.acts.shift, inp.acts.scale)  # the exported SAE: works on raw activations
    f = {s: encode_chunks(raw, h[s]) for s in ("train", "val", "test")}
    row = {"option": opt, "prefixes": prefixes, "weight": weight, "seed": seed, "lambda": res.calibration["lambda"],
           "dead": res.summary["dead_frac"], "dense": res.summary["dense_frac"]}
    ctx = {s: inp.site.collect(inp.x[s])[1] for s in ("val", "test")}
    a = params["analysis"]
    for split in ("val", "test"):
        m = splice(res.sae, inp.acts, inp.site, getattr(inp.acts, split), ctx[split], y[split])
        row[split] = {"fvu": round(m["fvu"], 5), "kl": round(m["kl"], 5), "l0": round(m["l0"], 3),
                      "dacc_pp": round(100 * (m["base_acc"] - m["recon_acc"]), 3),
                      **measures(f, {s: v > 0 for s, v in f.items()}, y, split, dirs, raw.W_dec.detach(), h,
                                 a["min_count"], a["high_purity"])}
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--site", default="mlp-hidden")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--prefixes", nargs="+", type=option, default=["none", "16,64,256"],
                   help="one option each: none (plain), or comma-separated prefix sizes with an optional /weight")
    p.add_argument("--arch", default="", choices=("", *ARCHS), help="sae.arch for every run (default: params.yaml's)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    params = read_params("params.yaml")
    setup_torch("cpu")
    inp = site_inputs.load(args.site, params)
    h = {s: inp.acts.to_hidden(getattr(inp.acts, s)) for s in ("train", "val", "test")}
    y = {s: torch.from_numpy(inp.data[f"y_{s}"]) for s in ("train", "val", "test")}
    dense = probe(h["train"], y["train"], h["test"], y["test"], None)  # as the baselines stage fits it
    dirs = (dense["weight"].float(), dense["bias"].float())
    a = params["analysis"]
    ref = {}
    for name, units in (("neurons", neuron_units(h)[0]), ("pca", pca_units(h))):
        ref[name] = {split: measures(units.acts, units.fires, y, split, None, None, h, a["min_count"],
                                     a["high_purity"]) for split in ("val", "test")}
    rows = []
    for opt in args.prefixes:
        for seed in args.seeds:
            rows.append(run(inp, params, opt, seed, h, y, dirs, args.arch))
            print(json.dumps(rows[-1]), flush=True)
    mean = {}
    for opt in args.prefixes:
        mine = [r for r in rows if r["option"] == opt]
        mean[opt] = {split: {k: round(statistics.mean(r[split][k] for r in mine), 5) for k in mine[0][split]}
                     for split in ("val", "test")}
        mean[opt]["dead"] = round(statistics.mean(r["dead"] for r in mine), 5)
        mean[opt]["dense"] = round(statistics.mean(r["dense"] for r in mine), 5)
        print("MEAN", opt, json.dumps(mean[opt]))
    print("REF", json.dumps(ref))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"site": args.site, "arch": args.arch or params["sae"]["arch"], "seeds": args.seeds,
                       "rows": rows, "mean": mean, "baselines": ref}, fh, indent=1)


if __name__ == "__main__":
    main()
