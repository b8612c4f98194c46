"""Stage train_sae (one per site): the SAE on train_base's activations at the site, λ calibrated, θ tuned, its test summary and a SAELens
export (``fit.fit_sae``)."""
from sae_pipeline.forkserver import handoff

handoff()  # the rest runs in a fork of a process that has imported torch (sae_pipeline/forkserver.py)

import torch

from sae_pipeline import base
from sae_pipeline.activations import load_acts
from sae_pipeline.config import current_site_sae, load_all, read_params
from sae_pipeline.export import export
from sae_pipeline.fit import fit_sae
from sae_pipeline.io import load_npz, load_torch, save_csv, save_json, save_torch
from sae_pipeline.runtime import run_stage, setup_torch
from sae_pipeline.sae import sae_state


def main(args):
    cfg = load_all(read_params(args.params))
    sae_cfg = current_site_sae(cfg, args.site_params, args.site)
    device = setup_torch(cfg["run"].device)
    site_cfg = cfg["sites"][args.site]
    acts = load_acts(load_npz(args.acts), site_cfg.site, cfg["activations"])
    card = base.load_card(args.base_card)
    site = base.load_site(load_torch(args.base_model), card, site_cfg.site)
    data = load_npz(args.data)
    x = {s: base.preprocess(data[f"x_{s}"], card["input_mean"], card["input_std"]) for s in ("train", "test")}
    res = fit_sae(sae_cfg, acts, site, x, torch.from_numpy(data["y_test"]), cfg["run"].seed, device)
    summary = {"model": card["name"], "hook": site_cfg.site, "d_in": site.width, **res.summary}
    save_torch(args.sae, sae_state(res.sae))
    export(res.sae, acts.shift, acts.scale, args.export, summary, card["name"], site_cfg.site)
    save_json(args.calibration, res.calibration)
    save_csv(args.calibration_plot, res.calibration["probes"], ["probe", "lambda", "l0", "fvu", "epochs"])
    save_json(args.train_metrics, res.train_metrics)
    save_csv(args.curve, res.history, ["step", "phase", "loss", "mse", "l0", "fvu", "kl", "dead_frac", "lambda", "lr"])
    save_json(args.tuning, res.tuning)
    save_json(args.metrics, summary)
    s, c = summary, res.calibration
    print(f"{args.site}: lambda={c['lambda']:.4g} ({len(c['probes'])} probes, converged={c['converged']}); test "
          f"l0={s['achieved_actives_test']:.2f} fvu={s['fvu']:.4f} kl={s['kl_logits']:.4f} "
          f"delta_acc={s['delta_acc_jumprelu']:.4f}")


if __name__ == "__main__":
    run_stage(main, "site", "site-params", "acts", "base-model", "base-card", "data", "sae", "export", "calibration",
              "calibration-plot", "train-metrics", "curve", "tuning", "metrics")
